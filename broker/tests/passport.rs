//! The broker's token as a passport: a real swtpm attests with a chosen P-256 key as its
//! TEE key, and the token is checked against the broker's published key for that key
//! only. Tampered twins are refused by name: another key, a changed signature, another
//! broker, an expired token, evidence the broker did not affirm, the sample TEE. A
//! migration certificate carrying the token checks within the clock skew allowed. The
//! token key survives a restart of the broker, so later checks still verify.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../attest/tests/common/mod.rs"]
mod swtpm;

use common::{Options, start};
use cvm_broker::state::now;
use cvm_kbs_client::attester::SampleAttester;
use cvm_kbs_client::attester::tpm::TpmRcarAttester;
use cvm_kbs_client::client::KbsClient;
use cvm_kbs_client::passport::{self, PassportError, TokenError};
use cvm_kbs_client::tee_key::TeeKey;
use cvm_runtime::certificate::{self, CertificateError, Kind, Statement};
use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use serde_json::json;
use sha2::{Digest as _, Sha256};

fn spki_sha256(key: &p256::SecretKey) -> [u8; 32] {
    Sha256::digest(key.public_key().to_public_key_der().unwrap().as_bytes()).into()
}

#[test]
fn a_passport_names_the_attested_key_and_nothing_else() {
    let ca = tempfile::tempdir().unwrap();
    let tpm = swtpm::swtpm_with_ek_cert(ca.path());
    let bundle = ca.path().join("bundle.pem");
    std::fs::write(&bundle, swtpm::ca_bundle(ca.path())).unwrap();
    let b = start(Options {
        ek_ca: Some(bundle.clone()),
        ..Options::default()
    });
    let mut attester = TpmRcarAttester::new(&swtpm::tcti(&tpm), None, None).unwrap();
    let key = p256::SecretKey::random(&mut rand_core::OsRng);
    let key_sha = spki_sha256(&key);
    let mut c = KbsClient::with_tee_key(b.client_config(), TeeKey::P256(key.clone())).unwrap();

    // Genuine but no reference values registered: `warning`, not a passport.
    let token = c.attest(&mut attester).unwrap();
    let jwk = c.token_key().unwrap();
    let broker_key = passport::broker_key(&jwk).unwrap();
    assert_eq!(
        passport::check(&broker_key, &token, now(), &key_sha),
        Err(PassportError::NotAffirming("warning".into()))
    );

    // Matching reference values (a fresh TPM: PCR 4, 9, 15 untouched): affirmed.
    let zero = "00".repeat(32);
    let right = json!({"name": "this-build", "values": {
        "platform": "qemu", "pcrs": {"4": zero, "9": zero, "15": zero}, "events": [], "runtime_events": [],
        "inputs": {"kernel_sha256": zero, "initrd_sha256": null, "cmdline": "", "memory_mib": 1024}}});
    let r = b.admin(
        "POST",
        "/kbs/v0/reference-values",
        right.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200);
    let token = c.attest(&mut attester).unwrap();
    let p = passport::check(&broker_key, &token, now(), &key_sha).unwrap();
    assert_eq!((p.tee.as_str(), p.key_sha256), ("tpm", key_sha));
    assert!(p.expires_at > p.issued_at);

    // Twins.
    let other = spki_sha256(&p256::SecretKey::random(&mut rand_core::OsRng));
    assert!(matches!(
        passport::check(&broker_key, &token, now(), &other),
        Err(PassportError::OtherKey { .. })
    ));
    let mut bent = token.clone().into_bytes();
    let last = bent.len() - 2;
    bent[last] = if bent[last] == b'A' { b'B' } else { b'A' };
    assert_eq!(
        passport::check(
            &broker_key,
            std::str::from_utf8(&bent).unwrap(),
            now(),
            &key_sha
        ),
        Err(PassportError::Token(TokenError::Signature))
    );
    let stranger = cvm_broker::token::TokenKey::generate().public_jwk();
    assert_eq!(
        passport::check(
            &passport::broker_key(&stranger).unwrap(),
            &token,
            now(),
            &key_sha
        ),
        Err(PassportError::Token(TokenError::Signature))
    );
    assert!(matches!(
        passport::check(&broker_key, &token, p.expires_at, &key_sha),
        Err(PassportError::Token(TokenError::Expired { .. }))
    ));
    // Checked at a time before it was issued (beyond the allowed skew): refused.
    let early = p.issued_at - passport::MAX_CLOCK_SKEW - 1;
    assert!(matches!(
        passport::check(&broker_key, &token, early, &key_sha),
        Err(PassportError::Token(TokenError::NotYetValid { .. }))
    ));
    passport::check(
        &broker_key,
        &token,
        p.issued_at - passport::MAX_CLOCK_SKEW,
        &key_sha,
    )
    .unwrap();
    assert_eq!(
        passport::broker_key(&json!({"kty": "RSA"})).unwrap_err(),
        PassportError::BrokerKey
    );

    // A migration certificate signed with this key and token: dated a second before
    // the token was issued (a guest's clock a little behind its host's) it checks;
    // dated further back than the allowed skew, or after the token expired, it does not.
    let pkcs8 = key.to_pkcs8_der().unwrap();
    let at = |time: u64| {
        let statement = Statement {
            kind: Kind::Release,
            migration: "0".repeat(32),
            workload: "badge-request".into(),
            manifest_sha256: "00".repeat(32),
            from: hex::encode(key_sha),
            to: hex::encode(other),
            version: 2,
            snapshot_sha256: Some("11".repeat(32)),
            reason: None,
            time,
        };
        certificate::check(
            &certificate::sign(&statement, pkcs8.as_bytes(), &token).unwrap(),
            &broker_key,
        )
    };
    assert_eq!(at(p.issued_at - 1).unwrap().passport, p);
    assert!(matches!(
        at(p.issued_at - passport::MAX_CLOCK_SKEW - 1),
        Err(CertificateError::Passport(PassportError::Token(
            TokenError::NotYetValid { .. }
        )))
    ));
    assert!(matches!(
        at(p.expires_at),
        Err(CertificateError::Passport(PassportError::Token(
            TokenError::Expired { .. }
        )))
    ));

    // The token key outlives a restart: the old token still checks with the key the
    // restarted broker publishes.
    let dir = b.stop();
    let b = start(Options {
        ek_ca: Some(bundle),
        dir: Some(dir),
        ..Options::default()
    });
    let mut c = KbsClient::new(b.client_config()).unwrap();
    assert_eq!(c.token_key().unwrap(), jwk);
    passport::check(&broker_key, &token, now(), &key_sha).unwrap();
}

#[test]
fn the_sample_tee_never_gets_a_passport() {
    let b = start(Options {
        allow_sample: true,
        ..Options::default()
    });
    let key = p256::SecretKey::random(&mut rand_core::OsRng);
    let mut c = KbsClient::with_tee_key(b.client_config(), TeeKey::P256(key.clone())).unwrap();
    let token = c.attest(&mut SampleAttester).unwrap();
    let broker_key = passport::broker_key(&c.token_key().unwrap()).unwrap();
    let refused = passport::check(&broker_key, &token, now(), &spki_sha256(&key)).unwrap_err();
    assert!(
        matches!(
            refused,
            PassportError::Sample | PassportError::NotAffirming(_)
        ),
        "{refused:?}"
    );
}
