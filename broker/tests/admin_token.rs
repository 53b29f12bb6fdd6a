//! Admin tokens: one signed by an independent JOSE implementation (jwcrypto) verifies;
//! tampered, expired, foreign-key and `alg: none` twins are refused by name.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cvm_broker::admin_token::{AdminKey, AdminTokenError};
use ed25519_dalek::pkcs8::EncodePublicKey as _;
use ed25519_dalek::{Signer as _, SigningKey};
use rand_core::OsRng;

const NOW: u64 = 1_800_000_000;

fn ours(key: &SigningKey, header: &str, claims: &str) -> String {
    let signed = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(claims)
    );
    let sig = key.sign(signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
}

#[test]
fn jwcrypto_token_verifies() {
    let Ok(py) = std::env::var("CVM_PYTHON") else {
        eprintln!("skipped: set CVM_PYTHON to a python with jwcrypto (./scripts/test does)");
        return;
    };
    let claims = format!(r#"{{"iat": {NOW}, "exp": {}}}"#, NOW + 600);
    let out = Command::new(py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oracle.py"))
        .args(["eddsa-jwt", &claims])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let pem = lines.next().unwrap().replace('|', "\n");
    let token = lines.next().unwrap();
    let key = AdminKey::from_pem(&pem).unwrap();
    key.verify(token, NOW).unwrap();
    assert!(matches!(
        key.verify(token, NOW + 601),
        Err(AdminTokenError::Expired { .. })
    ));
}

#[test]
fn twins_are_refused() {
    let signing = SigningKey::generate(&mut OsRng);
    let pem = signing
        .verifying_key()
        .to_public_key_pem(Default::default())
        .unwrap();
    let key = AdminKey::from_pem(&pem).unwrap();
    let header = r#"{"alg":"EdDSA","typ":"JWT"}"#;
    let claims = format!(r#"{{"iat":{NOW},"exp":{}}}"#, NOW + 60);
    let good = ours(&signing, header, &claims);
    key.verify(&good, NOW).unwrap();

    // Claims changed after signing.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = URL_SAFE_NO_PAD.encode(format!(r#"{{"iat":{NOW},"exp":{}}}"#, NOW + 999_999));
    assert_eq!(
        key.verify(&parts.join("."), NOW),
        Err(AdminTokenError::Signature)
    );
    // Signed by another key.
    let other = SigningKey::generate(&mut OsRng);
    assert_eq!(
        key.verify(&ours(&other, header, &claims), NOW),
        Err(AdminTokenError::Signature)
    );
    // alg: none, with an empty signature.
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(&claims)
    );
    assert_eq!(
        key.verify(&none, NOW),
        Err(AdminTokenError::Algorithm("none".into()))
    );
    // Expired, not yet valid, and without exp.
    assert!(matches!(
        key.verify(&good, NOW + 60),
        Err(AdminTokenError::Expired { .. })
    ));
    let future = ours(
        &signing,
        header,
        &format!(r#"{{"iat":{},"exp":{}}}"#, NOW + 3600, NOW + 7200),
    );
    assert!(matches!(
        key.verify(&future, NOW),
        Err(AdminTokenError::Expired { .. })
    ));
    let no_exp = ours(&signing, header, &format!(r#"{{"iat":{NOW}}}"#));
    assert_eq!(
        key.verify(&no_exp, NOW),
        Err(AdminTokenError::Malformed("no exp claim"))
    );
    // Garbage.
    assert!(matches!(
        key.verify("a.b", NOW),
        Err(AdminTokenError::Malformed(_))
    ));
    assert!(matches!(
        key.verify(&"x".repeat(9000), NOW),
        Err(AdminTokenError::Malformed(_))
    ));
    assert_eq!(
        AdminKey::from_pem("not a key").unwrap_err(),
        AdminTokenError::Key
    );
}
