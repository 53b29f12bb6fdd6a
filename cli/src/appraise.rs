//! Appraising `tpm` evidence from a guest: the quote is signed by an activated AK for
//! our nonce, then the broker's PCR appraisal (log replays, reference values) runs on
//! the quoted PCRs, so `cvm attest` and the broker judge alike.

use cvm_attest::tpm::TpmEvidence;
use cvm_attest::tpm::verifier::{TrustedAk, verify_quote};
use cvm_broker::appraise::{Check, tpm_pcrs};
use cvm_image::measure::qemu::QemuReference;
use cvm_proto::agent::AttestationEvidence;

/// Appraise `ev`, produced for `nonce` by the AK `ak`, against `reference` if given.
pub fn appraise(
    ev: &AttestationEvidence,
    nonce: &[u8],
    ak: &TrustedAk,
    reference: Option<&QemuReference>,
) -> Vec<Check> {
    let mut checks = Vec::new();
    if ev.tee != "tpm" {
        checks.push(Check::new(
            "evidence",
            Err(format!("expected tpm evidence, got {}", ev.tee)),
        ));
        return checks;
    }
    let quote: TpmEvidence = match serde_json::from_value(ev.evidence.clone()) {
        Ok(q) => q,
        Err(e) => {
            checks.push(Check::new(
                "evidence",
                Err(format!("tpm evidence is malformed: {e}")),
            ));
            return checks;
        }
    };
    let pcrs = match verify_quote(&quote, nonce, std::slice::from_ref(&ak.der)) {
        Ok(q) => {
            checks.push(Check::new(
                "quote",
                Ok("signed by the activated AK over sha256 PCR 0-23, with our nonce".into()),
            ));
            q.pcrs
        }
        Err(e) => {
            checks.push(Check::new("quote", Err(e.to_string())));
            return checks;
        }
    };
    if ev.firmware_log.is_none() {
        checks.push(Check::new(
            "firmware log",
            Err("the guest sent no firmware event log".into()),
        ));
    }
    checks.extend(tpm_pcrs(
        &pcrs,
        ev.firmware_log.as_deref(),
        Some(&ev.runtime_log),
        reference,
    ));
    checks
}
