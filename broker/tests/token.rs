//! Attestation tokens: ours verify under an independent JOSE implementation (jwcrypto)
//! with Trustee's claim layout, and our verifier refuses tampered, foreign and expired
//! twins by name.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cvm_broker::token::{Appraisal, TokenError, TokenKey, tee_pubkey};
use serde_json::json;

fn appraisal() -> Appraisal {
    Appraisal {
        tee: "tpm".into(),
        claims: json!({"pcr15": "ab"}),
        runtime_data: json!({
            "nonce": "n",
            "additional-evidence": "",
            "tee-pubkey": {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "AA", "y": "AA"},
        }),
        init_data: None,
        init_data_claims: None,
        status: "affirming",
    }
}

const NOW: u64 = 1_800_000_000;

#[test]
fn jwcrypto_verifies_our_token() {
    let Ok(py) = std::env::var("CVM_PYTHON") else {
        eprintln!("skipped: set CVM_PYTHON to a python with jwcrypto (./scripts/test does)");
        return;
    };
    let key = TokenKey::generate();
    // jwcrypto checks `exp` against its own clock, so this token is issued at the real
    // current time rather than at the fixed NOW the other tests use.
    let token = key.issue(&appraisal(), cvm_broker::state::now(), 300);
    let out = Command::new(py)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oracle.py"))
        .args(["verify-es256", &key.public_jwk().to_string(), &token])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["submods"]["cpu0"]["ear.status"], "affirming");
    assert_eq!(
        claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"]["tpm"]["pcr15"],
        "ab"
    );
}

#[test]
fn our_verifier_and_its_twins() {
    let key = TokenKey::generate();
    let token = key.issue(&appraisal(), NOW, 300);
    let claims = key.verify(&token, NOW + 10).unwrap();
    assert!(matches!(
        tee_pubkey(&claims).unwrap(),
        kbs_types::TeePubKey::EC { .. }
    ));

    let other = TokenKey::generate();
    assert_eq!(other.verify(&token, NOW), Err(TokenError::Signature));
    assert!(matches!(
        key.verify(&token, NOW + 300),
        Err(TokenError::Expired { .. })
    ));
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut c: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).unwrap()).unwrap();
    c["submods"]["cpu0"]["ear.status"] = json!("affirming!");
    parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
    assert_eq!(
        key.verify(&parts.join("."), NOW),
        Err(TokenError::Signature)
    );
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        parts[1]
    );
    assert_eq!(
        key.verify(&none, NOW),
        Err(TokenError::Algorithm("none".into()))
    );
    assert!(matches!(
        key.verify("x", NOW),
        Err(TokenError::Malformed(_))
    ));
    assert!(matches!(tee_pubkey(&json!({})), Err(TokenError::NoTeeKey)));
}
