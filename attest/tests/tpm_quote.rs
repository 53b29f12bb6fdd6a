//! A real quote from swtpm, verified; and for each check a tampered twin it rejects.
#![cfg(all(feature = "tpm", feature = "verifier"))]
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{pcrread, swtpm, tcti};
use cvm_attest::register::TpmPcr;
use cvm_attest::tpm::TpmEvidence;
use cvm_attest::tpm::attester::{AttesterError, quote};
use cvm_attest::tpm::verifier::{TpmVerifyError, verify_quote};
use cvm_attest::{EventKind, HashAlg, RuntimeLog};

const NONCE: &[u8] = b"0123456789abcdef0123456789abcdef";

fn flip(b64: &str, at: usize) -> String {
    let mut bytes = STANDARD.decode(b64).unwrap();
    let i = at.min(bytes.len() - 1);
    bytes[i] ^= 1;
    STANDARD.encode(bytes)
}

#[test]
fn quote_verifies_and_carries_the_runtime_pcr() {
    let t = swtpm();
    // PID1's measurements, then a quote, as in the guest.
    let mut log = RuntimeLog::new(Box::new(TpmPcr::open(&tcti(&t), 15).unwrap()), None);
    log.measure(EventKind::InitBinary, "/init", b"pid1")
        .unwrap();
    let snapshot = log.log().clone();
    drop(log);
    let ev = quote(&tcti(&t), NONCE).unwrap();
    assert!(
        ev.ek_cert.is_none(),
        "swtpm_setup without --create-ek-cert has no EK certificate"
    );
    let ak = STANDARD.decode(&ev.ak_public).unwrap();
    let verified = verify_quote(&ev, NONCE, &[ak]).unwrap();
    assert_eq!(verified.pcrs.len(), 24);
    // The quoted PCR 15 is what the event log replays to, and what tpm2-tools reads.
    snapshot
        .verify_replay(HashAlg::Sha256, &verified.pcrs[15])
        .unwrap();
    assert_eq!(hex::encode(verified.pcrs[15]), pcrread(&t, "sha256", 15));
    // Trustee's JSON shape.
    let json = serde_json::to_value(&ev).unwrap();
    assert!(
        json["tpm_quote"]["message"].is_string()
            && json["tpm_quote"]["pcrs"].as_array().unwrap().len() == 24
    );
}

#[test]
fn tampered_twins_are_rejected_by_name() {
    let t = swtpm();
    let ev = quote(&tcti(&t), NONCE).unwrap();
    let ak = STANDARD.decode(&ev.ak_public).unwrap();
    let trusted = [ak];
    let check = |ev: &TpmEvidence, nonce: &[u8]| verify_quote(ev, nonce, &trusted);

    // One flipped byte in the signed message (inside the PCR digest, the last bytes).
    let mut m = ev.clone();
    let len = STANDARD.decode(&m.tpm_quote.message).unwrap().len();
    m.tpm_quote.message = flip(&m.tpm_quote.message, len - 1);
    assert_eq!(check(&m, NONCE), Err(TpmVerifyError::Signature));
    // One flipped byte in the signature.
    let mut s = ev.clone();
    s.tpm_quote.signature = flip(&s.tpm_quote.signature, 40);
    assert_eq!(check(&s, NONCE), Err(TpmVerifyError::Signature));
    // A replayed quote: another nonce.
    assert!(matches!(
        check(&ev, b"another nonce, another session!!"),
        Err(TpmVerifyError::NonceMismatch { .. })
    ));
    // A PCR value changed in the evidence after the TPM signed.
    let mut p = ev.clone();
    p.tpm_quote.pcrs[15] = "11".repeat(32);
    assert!(matches!(
        check(&p, NONCE),
        Err(TpmVerifyError::PcrDigestMismatch { .. })
    ));
    let mut p = ev.clone();
    p.tpm_quote.pcrs.pop();
    assert!(matches!(check(&p, NONCE), Err(TpmVerifyError::PcrList(_))));
    // An AK nobody trusts, and garbage.
    assert!(matches!(
        verify_quote(&ev, NONCE, &[]),
        Err(TpmVerifyError::UntrustedAk(_))
    ));
    let mut g = ev.clone();
    g.tpm_quote.message = "not base64!".into();
    assert_eq!(
        check(&g, NONCE),
        Err(TpmVerifyError::Base64("tpm_quote.message"))
    );
    let mut g = ev.clone();
    g.tpm_quote.message = STANDARD.encode(&STANDARD.decode(&ev.tpm_quote.message).unwrap()[..20]);
    assert!(matches!(check(&g, NONCE), Err(TpmVerifyError::Parse(_))));
    // Good evidence still passes.
    check(&ev, NONCE).unwrap();
}

#[test]
fn bad_nonces_are_refused_before_the_tpm() {
    let t = swtpm();
    assert!(matches!(
        quote(&tcti(&t), b""),
        Err(AttesterError::Nonce(0))
    ));
    assert!(matches!(
        quote(&tcti(&t), &[0u8; 33]),
        Err(AttesterError::Nonce(33))
    ));
}
