//! Conformance with the Trustee wire format: `/auth` and `/attest` bodies exactly as
//! Trustee's client sends them (fixtures in `tests/data/trustee/`) are accepted, and our
//! answers have Trustee's shape: the challenge, the session cookie, the token's claim
//! layout (runtime data, init-data digest and claims where Trustee puts them).
#![allow(clippy::unwrap_used)]

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{Options, start};
use serde_json::Value;
use sha2::Digest as _;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/data/trustee/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn handshake(attest_fixture: &str) -> Value {
    let b = start(Options {
        allow_sample: true,
        ..Options::default()
    });
    let t = b.transport();
    let auth = t
        .call(
            "POST",
            "/kbs/v0/auth",
            None,
            None,
            Some(("application/json", fixture("auth-sample.json").as_bytes())),
        )
        .unwrap();
    assert_eq!(auth.status, 200);
    let challenge: Value = serde_json::from_slice(&auth.body).unwrap();
    let mut keys: Vec<&String> = challenge.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["extra-params", "nonce"]);
    assert_eq!(challenge["extra-params"], "");
    let nonce = challenge["nonce"].as_str().unwrap();
    assert_eq!(STANDARD.decode(nonce).unwrap().len(), 32);
    let cookie = auth.session_cookie.expect("kbs-session-id cookie");

    let template = fixture(attest_fixture).replace("NONCE", nonce);
    let parsed: Value = serde_json::from_str(&template.replace("REPORT_DATA", "")).unwrap();
    let key: kbs_types::TeePubKey =
        serde_json::from_value(parsed["runtime-data"]["tee-pubkey"].clone()).unwrap();
    let digest = cvm_kbs_client::report_data::runtime_data_digest(nonce, &key, "").unwrap();
    let body = template.replace("REPORT_DATA", &STANDARD.encode(digest));
    let attest = t
        .call(
            "POST",
            "/kbs/v0/attest",
            Some(&cookie),
            None,
            Some(("application/json", body.as_bytes())),
        )
        .unwrap();
    assert_eq!(
        attest.status,
        200,
        "{}",
        String::from_utf8_lossy(&attest.body)
    );
    let answer: Value = serde_json::from_slice(&attest.body).unwrap();
    let token = answer["token"].as_str().unwrap();
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["jwk"]["kty"], "EC");
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["eat_profile"],
        "tag:github.com,2024:confidential-containers/Trustee"
    );
    let annotated = &claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"];
    assert_eq!(
        annotated["runtime_data_claims"]["tee-pubkey"],
        parsed["runtime-data"]["tee-pubkey"]
    );
    assert_eq!(annotated["runtime_data_claims"]["nonce"], nonce);
    assert_eq!(annotated["runtime_data_claims"]["additional-evidence"], "");
    assert!(annotated["sample"].is_object());
    claims
}

#[test]
fn trustee_shaped_sample_handshake_is_accepted() {
    let claims = handshake("attest-sample.json");
    let annotated = &claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"];
    assert!(annotated.get("init_data").is_none());
    // Genuine but unreferenced: Trustee's default policies deny it.
    assert_eq!(claims["submods"]["cpu0"]["ear.status"], "warning");
}

#[test]
fn trustee_shaped_init_data_is_hashed_over_its_exact_body() {
    let claims = handshake("attest-sample-initdata.json");
    let fixture: Value = serde_json::from_str(&fixture("attest-sample-initdata.json")).unwrap();
    let body = fixture["init-data"]["body"].as_str().unwrap();
    let annotated = &claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"];
    assert_eq!(
        annotated["init_data"],
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    );
    assert_eq!(
        annotated["init_data_claims"]["aa.toml"],
        "[token_configs]\n"
    );
}
