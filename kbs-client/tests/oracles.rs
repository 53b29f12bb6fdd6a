//! The report-data rule and the JWE against independent implementations: Python's
//! `rfc8785` canonicaliser with hashlib, and `jwcrypto` decrypting our JWEs and
//! encrypting JWEs we decrypt. `./scripts/test` provides the Python environment
//! (`CVM_PYTHON`, a venv with pinned `jwcrypto` and `rfc8785`).
#![allow(clippy::unwrap_used)]

use std::process::Command;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cvm_kbs_client::jwe;
use cvm_kbs_client::report_data::runtime_data_digest;
use cvm_kbs_client::tee_key::TeeKey;
use kbs_types::TeePubKey;
use p256::elliptic_curve::sec1::ToEncodedPoint as _;
use rand_core::OsRng;
use rsa::traits::{PrivateKeyParts as _, PublicKeyParts as _};

fn python() -> Option<String> {
    let p = std::env::var("CVM_PYTHON").ok();
    if p.is_none() {
        eprintln!(
            "skipped: set CVM_PYTHON to a python with jwcrypto and rfc8785 (./scripts/test does)"
        );
    }
    p
}

fn oracle(py: &str, args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oracle.py");
    let out = Command::new(py).arg(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

#[test]
fn report_data_matches_rfc8785_and_hashlib() {
    let Some(py) = python() else { return };
    let key = TeeKey::generate_p256().public();
    for (nonce, additional) in [
        ("yY8c+FjaQ8fQ0Y0ZJz6dQqk1mS9tAXo/ij6O3VqV2jA=", ""),
        ("non-ASCII nonce: ü€\u{1F512}", r#"{"tpm":{"quote":"…"}}"#),
    ] {
        let ours = runtime_data_digest(nonce, &key, additional).unwrap();
        let value = serde_json::json!({
            "tee-pubkey": key,
            "nonce": nonce,
            "additional-evidence": additional,
        });
        let theirs = oracle(&py, &["jcs-sha384", &value.to_string()]);
        assert_eq!(hex::encode(ours), theirs);
    }
}

#[test]
fn jwcrypto_decrypts_ours_and_we_decrypt_jwcrypto() {
    let Some(py) = python() else { return };
    let plaintext = b"key for the encrypted state volume";

    // P-256, ECDH-ES+A256KW.
    let secret = p256::SecretKey::random(&mut OsRng);
    let point = secret.public_key().to_encoded_point(false);
    let private_jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256",
        "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap()),
        "d": b64(&secret.to_bytes()),
    });
    let ours = TeeKey::P256(secret);
    let jwe_ours = jwe::encrypt(&ours.public(), plaintext).unwrap();
    assert_eq!(
        oracle(&py, &["decrypt", &private_jwk.to_string(), &jwe_ours]),
        hex::encode(plaintext)
    );
    let TeePubKey::EC { x, y, .. } = ours.public() else {
        panic!()
    };
    let public_jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y});
    let theirs = oracle(
        &py,
        &[
            "encrypt",
            &public_jwk.to_string(),
            "ECDH-ES+A256KW",
            &hex::encode(plaintext),
        ],
    );
    assert_eq!(
        ours.decrypt(theirs.as_bytes()).unwrap().as_slice(),
        plaintext
    );

    // RSA-OAEP-256.
    let rsa = rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
    let primes = rsa.primes();
    let private_jwk = serde_json::json!({
        "kty": "RSA",
        "n": b64(&rsa.n().to_bytes_be()), "e": b64(&rsa.e().to_bytes_be()),
        "d": b64(&rsa.d().to_bytes_be()),
        "p": b64(&primes[0].to_bytes_be()), "q": b64(&primes[1].to_bytes_be()),
        "dp": b64(&rsa.dp().unwrap().to_bytes_be()), "dq": b64(&rsa.dq().unwrap().to_bytes_be()),
        "qi": b64(&rsa.crt_coefficient().unwrap().to_bytes_be()),
    });
    let ours = TeeKey::Rsa(Box::new(rsa));
    let jwe_ours = jwe::encrypt(&ours.public(), plaintext).unwrap();
    assert_eq!(
        oracle(&py, &["decrypt", &private_jwk.to_string(), &jwe_ours]),
        hex::encode(plaintext)
    );
    let TeePubKey::RSA { k_mod, k_exp, .. } = ours.public() else {
        panic!()
    };
    let public_jwk = serde_json::json!({"kty": "RSA", "n": k_mod, "e": k_exp});
    let theirs = oracle(
        &py,
        &[
            "encrypt",
            &public_jwk.to_string(),
            "RSA-OAEP-256",
            &hex::encode(plaintext),
        ],
    );
    assert_eq!(
        ours.decrypt(theirs.as_bytes()).unwrap().as_slice(),
        plaintext
    );
}
