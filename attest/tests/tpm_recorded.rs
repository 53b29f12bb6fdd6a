//! A quote recorded from a cvm guest's vTPM (agent evidence endpoint), verified offline;
//! its tampered twins are rejected.
#![cfg(feature = "verifier")]
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cvm_attest::tpm::TpmEvidence;
use cvm_attest::tpm::verifier::{TpmVerifyError, verify_quote};

fn recorded() -> (TpmEvidence, Vec<u8>, Vec<u8>) {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("data/tpm/evidence.json")).unwrap();
    let ev: TpmEvidence = serde_json::from_value(v["evidence"].clone()).unwrap();
    let nonce = hex::decode(v["nonce"].as_str().unwrap()).unwrap();
    let ak = STANDARD.decode(&ev.ak_public).unwrap();
    (ev, nonce, ak)
}

#[test]
fn recorded_guest_quote_verifies() {
    let (ev, nonce, ak) = recorded();
    let q = verify_quote(&ev, &nonce, &[ak]).unwrap();
    // PCR 15 carries PID1's measurements; PCR 8 (reserved for init-data) is unused.
    assert_ne!(q.pcrs[15], [0; 32]);
    assert_eq!(q.pcrs[8], [0; 32]);
}

#[test]
fn recorded_twins_are_rejected() {
    let (ev, nonce, ak) = recorded();
    let mut sig = ev.clone();
    let mut bytes = STANDARD.decode(&sig.tpm_quote.signature).unwrap();
    bytes[100] ^= 1;
    sig.tpm_quote.signature = STANDARD.encode(bytes);
    assert_eq!(
        verify_quote(&sig, &nonce, std::slice::from_ref(&ak)),
        Err(TpmVerifyError::Signature)
    );
    let mut pcr = ev.clone();
    pcr.tpm_quote.pcrs[9] = "00".repeat(32);
    assert!(matches!(
        verify_quote(&pcr, &nonce, std::slice::from_ref(&ak)),
        Err(TpmVerifyError::PcrDigestMismatch { .. })
    ));
    assert!(matches!(
        verify_quote(&ev, b"replayed", &[ak]),
        Err(TpmVerifyError::NonceMismatch { .. })
    ));
}
