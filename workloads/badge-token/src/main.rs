//! `badge-token`: the owner's side of the Badge Request Tool's caller authentication.
//! With an Ed25519 key (PKCS#8 PEM, as `cvm keygen` writes it):
//!
//! ```text
//! badge-token --key caller.key --public                      # the CALLER_KEY to seal with
//! badge-token --key caller.key --role manager --sub E000001 [--ttl SECONDS]
//! ```
//!
//! The second form prints a token for `authorization: Bearer …` (default lifetime one
//! hour). Whoever holds the key decides who is a manager or security: keep it where
//! callers are authenticated (an identity provider), not on the appliance.

use std::process::ExitCode;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::pkcs8::DecodePrivateKey as _;
use ed25519_dalek::{Signer as _, SigningKey};

/// The roles the tool knows.
const ROLES: [&str; 3] = ["employee", "manager", "security"];

/// A compact JWS (EdDSA) with the claims the tool checks.
fn mint(key: &SigningKey, role: &str, sub: &str, exp: u64) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let claims = serde_json::json!({"aud": "badge-request", "role": role, "sub": sub, "exp": exp});
    let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: badge-token --key FILE --public\n       badge-token --key FILE --role employee|manager|security --sub ID [--ttl SECONDS]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(path) = value("--key") else {
        return usage();
    };
    let key = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|pem| SigningKey::from_pkcs8_pem(&pem).map_err(|e| e.to_string()))
    {
        Ok(k) => k,
        Err(e) => {
            eprintln!("badge-token: {path}: {e} (an Ed25519 key: cvm keygen --out {path})");
            return ExitCode::FAILURE;
        }
    };
    if args.iter().any(|a| a == "--public") {
        println!("{}", STANDARD.encode(key.verifying_key().as_bytes()));
        return ExitCode::SUCCESS;
    }
    let (Some(role), Some(sub)) = (value("--role"), value("--sub")) else {
        return usage();
    };
    if !ROLES.contains(&role.as_str()) {
        eprintln!("badge-token: role {role:?} is not employee, manager or security");
        return ExitCode::from(2);
    }
    let ttl: u64 = match value("--ttl").map(|t| t.parse()) {
        None => 3600,
        Some(Ok(t)) => t,
        Some(Err(_)) => return usage(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    println!("{}", mint(&key, &role, &sub, now.saturating_add(ttl)));
    ExitCode::SUCCESS
}
