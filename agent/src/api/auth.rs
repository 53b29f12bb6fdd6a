//! Owner-signed requests: every workload request but the deploy itself (whose bundle
//! is signed) carries the owner's kid, the time and a signature over
//! [`cvm_proto::agent::request_signing_input`]. A signature is accepted once, within
//! [`REQUEST_MAX_SKEW`] of the agent's clock, from an owner the appliance trusts.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cvm_proto::agent::{
    HEADER_NONCE, HEADER_OWNER, HEADER_SIGNATURE, HEADER_TIME, REQUEST_MAX_SKEW,
    request_signing_input,
};
use cvm_runtime::bundle::owner::OwnerKeys;
use hyper::http::request::Parts;
use sha2::{Digest as _, Sha256};

/// Signatures seen within the skew window (replays are refused).
#[derive(Debug, Default)]
pub struct ReplayGuard(Mutex<HashMap<[u8; 32], u64>>);

/// Check the request's signature; returns the signer's kid.
pub fn authorize(
    parts: &Parts,
    body: &[u8],
    owners: &OwnerKeys,
    agent_key_sha256: &str,
    seen: &ReplayGuard,
) -> Result<Vec<u8>, String> {
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                format!(
                    "missing header {name}: requests are signed by an owner key (cvm does this)"
                )
            })
    };
    let kid =
        hex::decode(header(HEADER_OWNER)?).map_err(|_| format!("{HEADER_OWNER} is not hex"))?;
    let time: u64 = header(HEADER_TIME)?
        .parse()
        .map_err(|_| format!("{HEADER_TIME} is not a number of seconds"))?;
    let nonce = header(HEADER_NONCE)?;
    if nonce.len() < 32 || hex::decode(nonce).is_err() {
        return Err(format!(
            "{HEADER_NONCE} must be at least 16 random bytes, hex"
        ));
    }
    let sig = STANDARD
        .decode(header(HEADER_SIGNATURE)?)
        .map_err(|_| format!("{HEADER_SIGNATURE} is not base64"))?;
    let key = owners.find(&kid).ok_or_else(|| {
        format!(
            "owner key {} is not trusted by this appliance",
            hex::encode(&kid)
        )
    })?;
    let now = crate::workloads::now_ms() / 1000;
    if now.abs_diff(time) > REQUEST_MAX_SKEW {
        return Err(format!(
            "request time {time} is more than {REQUEST_MAX_SKEW} s from the appliance's clock ({now})"
        ));
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let input = request_signing_input(
        parts.method.as_str(),
        path,
        time,
        nonce,
        &hex::encode(Sha256::digest(body)),
        agent_key_sha256,
    );
    key.verify(&input, &sig)
        .map_err(|_| "request signature does not verify (wrong key, altered request, or signed for another appliance)".to_owned())?;
    let fingerprint: [u8; 32] = Sha256::digest(nonce.as_bytes()).into();
    let mut seen = seen
        .0
        .lock()
        .map_err(|_| "replay guard poisoned".to_owned())?;
    seen.retain(|_, t| now.abs_diff(*t) <= REQUEST_MAX_SKEW);
    if seen.insert(fingerprint, time).is_some() {
        return Err("this signed request was already used (replay)".into());
    }
    Ok(kid)
}
