//! Appraising `tpm` evidence from a guest: the quote is signed by an activated AK for
//! our nonce, both event logs replay to the quoted PCRs, and the PCRs a reference names
//! hold the values `cvm measure --platform qemu` predicted. Each failed check says
//! which PCR and, where the logs allow, which event differs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cvm_attest::HashAlg;
use cvm_attest::tcg::FirmwareLog;
use cvm_attest::tpm::TpmEvidence;
use cvm_attest::tpm::verifier::{TrustedAk, verify_quote};
use cvm_image::measure::qemu::{PredictedEvent, QemuReference};
use cvm_image::measure::runtime::RUNTIME_PCR;
use cvm_proto::agent::AttestationEvidence;

use crate::verify::Check;

fn check(name: impl Into<String>, result: Result<String, String>) -> Check {
    let (ok, detail) = match result {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Check {
        name: name.into(),
        ok,
        detail,
    }
}

/// Appraise `ev`, produced for `nonce` by the AK `ak`, against `reference` if given.
pub fn appraise(
    ev: &AttestationEvidence,
    nonce: &[u8],
    ak: &TrustedAk,
    reference: Option<&QemuReference>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    if ev.tee != "tpm" {
        checks.push(check(
            "evidence",
            Err(format!("expected tpm evidence, got {}", ev.tee)),
        ));
        return checks;
    }
    let quote: TpmEvidence = match serde_json::from_value(ev.evidence.clone()) {
        Ok(q) => q,
        Err(e) => {
            checks.push(check(
                "evidence",
                Err(format!("tpm evidence is malformed: {e}")),
            ));
            return checks;
        }
    };
    let pcrs = match verify_quote(&quote, nonce, std::slice::from_ref(&ak.der)) {
        Ok(q) => {
            checks.push(check(
                "quote",
                Ok("signed by the activated AK over sha256 PCR 0-23, with our nonce".into()),
            ));
            q.pcrs
        }
        Err(e) => {
            checks.push(check("quote", Err(e.to_string())));
            return checks;
        }
    };

    let firmware = match ev.firmware_log.as_deref().map(|b64| {
        STANDARD
            .decode(b64)
            .map_err(|_| "firmware_log is not base64".to_owned())
            .and_then(|bytes| FirmwareLog::parse(&bytes).map_err(|e| e.to_string()))
    }) {
        None => {
            checks.push(check(
                "firmware log",
                Err("the guest sent no firmware event log".into()),
            ));
            None
        }
        Some(Err(e)) => {
            checks.push(check("firmware log", Err(e)));
            None
        }
        Some(Ok(log)) => {
            let r = log
                .verify_replay(&pcrs)
                .map(|()| {
                    format!(
                        "{} events replay to PCRs {:?}",
                        log.events.len(),
                        log.pcrs()
                    )
                })
                .map_err(|e| e.to_string());
            let ok = r.is_ok();
            checks.push(check("firmware log replays to the quote", r));
            ok.then_some(log)
        }
    };

    let runtime_pcr = RUNTIME_PCR as usize;
    checks.push(check(
        format!("runtime log replays to PCR {RUNTIME_PCR}"),
        ev.runtime_log
            .verify_replay(HashAlg::Sha256, &pcrs[runtime_pcr])
            .map(|()| format!("{} events", ev.runtime_log.records.len()))
            .map_err(|e| e.to_string()),
    ));

    let Some(reference) = reference else {
        return checks;
    };
    for (&pcr, expected) in &reference.pcrs {
        let i = pcr as usize;
        let Some(actual) = pcrs.get(i).map(hex::encode) else {
            checks.push(check(format!("PCR {pcr}"), Err("not a PCR".into())));
            continue;
        };
        let name = format!("PCR {pcr} = reference");
        if pcr == RUNTIME_PCR {
            // Later runtime events (workloads) extend PCR 15 after boot: the boot events
            // must be the log's first ones, and the log must replay to the quote.
            checks.push(check(name, runtime_prefix(ev, &reference.runtime_events)));
            continue;
        }
        if *expected == actual {
            checks.push(check(name, Ok(actual)));
            continue;
        }
        let mut detail = format!("PCR {pcr} mismatch: expected {expected}, got {actual}");
        if let Some(log) = &firmware {
            let logged: Vec<String> = log
                .events_of(pcr)
                .map(|e| e.sha256.map(hex::encode).unwrap_or_default())
                .collect();
            let predicted: Vec<&PredictedEvent> =
                reference.events.iter().filter(|e| e.pcr == pcr).collect();
            detail.push_str(&first_difference(&logged, &predicted));
        }
        checks.push(check(name, Err(detail)));
    }
    checks
}

fn runtime_prefix(
    ev: &AttestationEvidence,
    predicted: &[PredictedEvent],
) -> Result<String, String> {
    let logged: Vec<String> = ev
        .runtime_log
        .records
        .iter()
        .map(|r| {
            r.digest(HashAlg::Sha256)
                .map(hex::encode)
                .unwrap_or_default()
        })
        .collect();
    let refs: Vec<&PredictedEvent> = predicted.iter().collect();
    if logged.len() >= refs.len() && logged.iter().zip(&refs).all(|(l, p)| *l == p.sha256) {
        return Ok(format!(
            "the log's first {} events are PID1's predicted boot events",
            refs.len()
        ));
    }
    Err(format!(
        "PCR {RUNTIME_PCR} mismatch: the runtime log's boot events differ from the reference{}",
        first_difference(&logged[..logged.len().min(refs.len())], &refs)
    ))
}

/// "; first difference: event N (description): expected X, logged Y".
fn first_difference(logged: &[String], predicted: &[&PredictedEvent]) -> String {
    for (n, p) in predicted.iter().enumerate() {
        match logged.get(n) {
            Some(l) if *l == p.sha256 => {}
            Some(l) => {
                return format!(
                    "; first difference: event {n} ({}): expected {}, logged {l}",
                    p.description, p.sha256
                );
            }
            None => return format!("; event {n} ({}) is missing from the log", p.description),
        }
    }
    if logged.len() > predicted.len() {
        return format!(
            "; the log has {} unexpected extra events",
            logged.len() - predicted.len()
        );
    }
    String::new()
}
