//! Binding the attestation key to a certified endorsement key, against swtpm: the EK
//! certificate chains to the local CA, the verifier seals a secret to the EK for the AK's
//! name, and only that TPM with that AK recovers it. Each check has a tampered twin.
#![cfg(all(feature = "tpm", feature = "verifier"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{ca_bundle, swtpm_with_ek_cert, tcti};
use cvm_attest::tpm::attester::{AttesterError, TpmAttester};
use cvm_attest::tpm::ekcert::{EkCaBundle, EkCertError};
use cvm_attest::tpm::verifier::{EkTrust, TpmVerifyError, challenge_ak, verify_quote};
use cvm_attest::tpm::{ActivationResponse, AkIdentity};

const NONCE: &[u8] = b"activation-test-nonce-32-bytes!!";

fn flip(b64: &str, at: usize) -> String {
    let mut bytes = STANDARD.decode(b64).unwrap();
    bytes[at] ^= 1;
    STANDARD.encode(bytes)
}

fn activate(
    a: &TpmAttester,
    req: &cvm_attest::tpm::ActivationRequest,
) -> Result<ActivationResponse, AttesterError> {
    let secret = a.activate(
        &STANDARD.decode(&req.credential_blob).unwrap(),
        &STANDARD.decode(&req.encrypted_secret).unwrap(),
    )?;
    Ok(ActivationResponse {
        secret: STANDARD.encode(secret),
    })
}

#[test]
fn certified_ek_activated_ak_verified_quote() {
    let ca = tempfile::tempdir().unwrap();
    let t = swtpm_with_ek_cert(ca.path());
    let trust = EkTrust::CaBundle(EkCaBundle::from_pem(&ca_bundle(ca.path())).unwrap());
    let attester = TpmAttester::create(&tcti(&t)).unwrap();
    let identity = attester.identity().unwrap();
    assert!(identity.ek_cert.is_some());

    let challenge = challenge_ak(&identity, &trust, SystemTime::now()).unwrap();
    let response = activate(&attester, &challenge.request).unwrap();
    let ak = challenge.finish(&response).unwrap();
    let evidence = attester.quote(NONCE).unwrap();
    let verified = verify_quote(&evidence, NONCE, std::slice::from_ref(&ak.der)).unwrap();
    assert_eq!(verified.pcrs.len(), 24);
    // The AK in the evidence is the activated one.
    assert_eq!(STANDARD.decode(&evidence.ak_public).unwrap(), ak.der);
}

#[test]
fn ek_certificate_twins_are_rejected() {
    let ca = tempfile::tempdir().unwrap();
    let other_ca = tempfile::tempdir().unwrap();
    let t = swtpm_with_ek_cert(ca.path());
    // Another local CA: same names (swtpm-localca), different keys.
    let _other = swtpm_with_ek_cert(other_ca.path());
    let identity = TpmAttester::create(&tcti(&t)).unwrap().identity().unwrap();
    let now = SystemTime::now();
    let trust = EkTrust::CaBundle(EkCaBundle::from_pem(&ca_bundle(ca.path())).unwrap());
    let wrong = EkTrust::CaBundle(EkCaBundle::from_pem(&ca_bundle(other_ca.path())).unwrap());

    let err = challenge_ak(&identity, &wrong, now).unwrap_err();
    assert!(
        matches!(err, TpmVerifyError::EkCert(EkCertError::Signature(_))),
        "{err}"
    );
    let cert = identity.ek_cert.clone().unwrap();
    let len = STANDARD.decode(&cert).unwrap().len();
    // One flipped byte in the signature (the last bytes of the certificate).
    let mut sig = identity.clone();
    sig.ek_cert = Some(flip(&cert, len - 3));
    assert!(matches!(
        challenge_ak(&sig, &trust, now),
        Err(TpmVerifyError::EkCert(EkCertError::Signature(_)))
    ));
    // One flipped byte in the signed part (inside the EK modulus, mid-certificate).
    let mut tbs = identity.clone();
    tbs.ek_cert = Some(flip(&cert, len / 2));
    assert!(matches!(
        challenge_ak(&tbs, &trust, now),
        Err(TpmVerifyError::EkCert(
            EkCertError::Signature(_) | EkCertError::Parse(_)
        ))
    ));
    // No certificate when EKs are trusted only through one.
    let mut none = identity.clone();
    none.ek_cert = None;
    assert!(matches!(
        challenge_ak(&none, &trust, now),
        Err(TpmVerifyError::NoEkCert)
    ));
    // Another EK than the certified one.
    let mut swapped = identity.clone();
    swapped.ek_public = identity.ak_public.clone();
    assert!(matches!(
        challenge_ak(&swapped, &trust, now),
        Err(TpmVerifyError::EkMismatch)
    ));
    // A pinned-EK verifier that does not know this EK.
    assert!(matches!(
        challenge_ak(&identity, &EkTrust::Pinned(vec![vec![1, 2, 3]]), now),
        Err(TpmVerifyError::UntrustedEk(_))
    ));
    // Certificates outside their validity period (swtpm's run to 9999; before 1970 + 1 s).
    let err = challenge_ak(&identity, &trust, SystemTime::UNIX_EPOCH).unwrap_err();
    assert!(
        matches!(err, TpmVerifyError::EkCert(EkCertError::Expired { .. })),
        "{err}"
    );
}

#[test]
fn attestation_key_twins_are_rejected() {
    let ca = tempfile::tempdir().unwrap();
    let t = swtpm_with_ek_cert(ca.path());
    let trust = EkTrust::CaBundle(EkCaBundle::from_pem(&ca_bundle(ca.path())).unwrap());
    let now = SystemTime::now();
    let attester = TpmAttester::create(&tcti(&t)).unwrap();
    let second = TpmAttester::create(&tcti(&t)).unwrap();
    let identity = attester.identity().unwrap();
    let second_identity: AkIdentity = second.identity().unwrap();

    // An AK public area with `restricted` cleared (objectAttributes, big-endian at bytes
    // 4..8: bit 16 is the low bit of byte 5).
    let mut unrestricted = identity.clone();
    unrestricted.ak_tpm_public = flip(&identity.ak_tpm_public, 5);
    assert!(matches!(
        challenge_ak(&unrestricted, &trust, now),
        Err(TpmVerifyError::AkAttributes(_))
    ));
    // ak_public of one key, public area of another.
    let mut mixed = identity.clone();
    mixed.ak_public = second_identity.ak_public.clone();
    assert!(matches!(
        challenge_ak(&mixed, &trust, now),
        Err(TpmVerifyError::AkMismatch)
    ));

    // A credential sealed for the second AK's name: the first AK cannot activate it.
    let for_second = challenge_ak(&second_identity, &trust, now).unwrap();
    let err = activate(&attester, &for_second.request).unwrap_err();
    assert!(
        matches!(
            err,
            AttesterError::Tpm {
                step: "ActivateCredential",
                ..
            }
        ),
        "{err}"
    );
    // The second AK can.
    let answer = activate(&second, &for_second.request).unwrap();
    let ak2 = for_second.finish(&answer).unwrap();
    // ... and a quote by the first AK does not verify with the second's trust.
    let evidence = attester.quote(NONCE).unwrap();
    assert!(matches!(
        verify_quote(&evidence, NONCE, &[ak2.der]),
        Err(TpmVerifyError::UntrustedAk(_))
    ));

    // A wrong answer.
    let challenge = challenge_ak(&identity, &trust, now).unwrap();
    let bad = ActivationResponse {
        secret: STANDARD.encode([0u8; 32]),
    };
    assert!(matches!(
        challenge.finish(&bad),
        Err(TpmVerifyError::ActivationFailed)
    ));
}

#[test]
fn a_credential_for_another_tpm_does_not_activate() {
    let ca = tempfile::tempdir().unwrap();
    let a = swtpm_with_ek_cert(ca.path());
    let b = swtpm_with_ek_cert(ca.path());
    let trust = EkTrust::CaBundle(EkCaBundle::from_pem(&ca_bundle(ca.path())).unwrap());
    let on_a = TpmAttester::create(&tcti(&a)).unwrap();
    let on_b = TpmAttester::create(&tcti(&b)).unwrap();
    // A relay: B's certified EK presented with A's AK. The secret is sealed to B's EK,
    // so A cannot recover it, and B has no AK of that name.
    let mut relay = on_a.identity().unwrap();
    let b_identity = on_b.identity().unwrap();
    relay.ek_cert = b_identity.ek_cert;
    relay.ek_public = b_identity.ek_public;
    let challenge = challenge_ak(&relay, &trust, SystemTime::now()).unwrap();
    assert!(activate(&on_a, &challenge.request).is_err());
    assert!(activate(&on_b, &challenge.request).is_err());
}
