//! Appraising quoted PCRs against reference values from `cvm measure --platform qemu`,
//! shared by the broker and `cvm attest`: the event logs must replay to the quote, and
//! each PCR a reference names must hold its value. A failed check names the PCR and,
//! where the logs allow, the first event that differs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cvm_attest::tcg::FirmwareLog;
use cvm_attest::{EventLog, HashAlg};
use cvm_image::measure::qemu::{PredictedEvent, QemuReference};
use cvm_image::measure::runtime::RUNTIME_PCR;
use serde::Serialize;

/// One check and its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Whether it held.
    pub ok: bool,
    /// Details: the compared values.
    pub detail: String,
}

impl Check {
    /// A check from its result.
    pub fn new(name: impl Into<String>, result: Result<String, String>) -> Self {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        Self {
            name: name.into(),
            ok,
            detail,
        }
    }
}

/// The first failed check of `checks`, as one line.
pub fn first_failure(checks: &[Check]) -> Option<String> {
    checks
        .iter()
        .find(|c| !c.ok)
        .map(|c| format!("{}: {}", c.name, c.detail))
}

/// Appraise the quoted sha256 `pcrs` (already verified) with the logs the guest sent:
/// each present log must replay, then `reference` (if any) must match. A missing
/// runtime log means PCR 15 must equal the reference exactly.
pub fn tpm_pcrs(
    pcrs: &[[u8; 32]],
    firmware_log: Option<&str>,
    runtime_log: Option<&EventLog>,
    reference: Option<&QemuReference>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let firmware = match firmware_log.map(|b64| {
        STANDARD
            .decode(b64)
            .map_err(|_| "firmware_log is not base64".to_owned())
            .and_then(|bytes| FirmwareLog::parse(&bytes).map_err(|e| e.to_string()))
    }) {
        None => None,
        Some(Err(e)) => {
            checks.push(Check::new("firmware log", Err(e)));
            None
        }
        Some(Ok(log)) => {
            let r = log
                .verify_replay(pcrs)
                .map(|()| {
                    format!(
                        "{} events replay to PCRs {:?}",
                        log.events.len(),
                        log.pcrs()
                    )
                })
                .map_err(|e| e.to_string());
            let ok = r.is_ok();
            checks.push(Check::new("firmware log replays to the quote", r));
            ok.then_some(log)
        }
    };

    let runtime_pcr = RUNTIME_PCR as usize;
    if let Some(log) = runtime_log {
        checks.push(Check::new(
            format!("runtime log replays to PCR {RUNTIME_PCR}"),
            match pcrs.get(runtime_pcr) {
                Some(value) => log
                    .verify_replay(HashAlg::Sha256, value)
                    .map(|()| format!("{} events", log.records.len()))
                    .map_err(|e| e.to_string()),
                None => Err(format!("the quote has no PCR {RUNTIME_PCR}")),
            },
        ));
    }

    let Some(reference) = reference else {
        return checks;
    };
    for (&pcr, expected) in &reference.pcrs {
        let i = pcr as usize;
        let Some(actual) = pcrs.get(i).map(hex::encode) else {
            checks.push(Check::new(format!("PCR {pcr}"), Err("not a PCR".into())));
            continue;
        };
        let name = format!("PCR {pcr} = reference");
        if pcr == RUNTIME_PCR
            && let Some(log) = runtime_log
        {
            // Later runtime events (workloads) extend PCR 15 after boot: the boot events
            // must be the log's first ones, and the log must replay to the quote.
            checks.push(Check::new(
                name,
                runtime_prefix(log, &reference.runtime_events),
            ));
            continue;
        }
        if *expected == actual {
            checks.push(Check::new(name, Ok(actual)));
            continue;
        }
        let mut detail = format!("PCR {pcr} mismatch: expected {expected}, got {actual}");
        let predicted: Vec<&PredictedEvent> = if pcr == RUNTIME_PCR {
            reference.runtime_events.iter().collect()
        } else {
            reference.events.iter().filter(|e| e.pcr == pcr).collect()
        };
        if let Some(log) = &firmware {
            let logged: Vec<String> = log
                .events_of(pcr)
                .map(|e| e.sha256.map(hex::encode).unwrap_or_default())
                .collect();
            detail.push_str(&first_difference(&logged, &predicted));
        }
        checks.push(Check::new(name, Err(detail)));
    }
    checks
}

fn runtime_prefix(log: &EventLog, predicted: &[PredictedEvent]) -> Result<String, String> {
    let logged: Vec<String> = log
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
