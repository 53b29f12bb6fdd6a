//! The agent's passport: the broker's attestation token for this agent's TLS key
//! (`cvm_kbs_client::passport`). Another appliance or `cvm` that reaches the agent over
//! TLS checks it with the broker's key instead of appraising TPM quotes or SNP reports
//! itself; this is how two appliances attest each other for a migration.
//!
//! A token is reused while more than [`MIN_LEFT`] of its life remains, so peers asking
//! often do not cost one attestation each.

use std::sync::{Arc, Mutex};

use cvm_proto::agent::PassportBody;

use crate::broker::Broker;
use crate::runtime_log::Measurements;

/// A cached token is handed out only while it has this much life left, seconds.
const MIN_LEFT: u64 = 120;

/// Passports for one agent.
#[derive(Debug)]
pub struct Passports {
    broker: Option<Broker>,
    key_pkcs8: Arc<zeroize::Zeroizing<Vec<u8>>>,
    measurements: Arc<Measurements>,
    cached: Mutex<Option<(PassportBody, u64)>>,
}

impl Passports {
    /// Passports for the TLS key `key_pkcs8` from `broker`.
    pub fn new(
        broker: Option<Broker>,
        key_pkcs8: Arc<zeroize::Zeroizing<Vec<u8>>>,
        measurements: Arc<Measurements>,
    ) -> Self {
        Self {
            broker,
            key_pkcs8,
            measurements,
            cached: Mutex::new(None),
        }
    }

    /// A passport valid for at least [`MIN_LEFT`] seconds (blocking: it may attest).
    pub fn get(&self, now: u64) -> Result<PassportBody, String> {
        if let Ok(c) = self.cached.lock()
            && let Some((body, exp)) = c.as_ref()
            && exp.saturating_sub(now) > MIN_LEFT
        {
            return Ok(body.clone());
        }
        let broker = self.broker.as_ref().ok_or(
            "this appliance has no key broker (it booted without init-data), so no passport",
        )?;
        let log = self.measurements.current()?;
        let (token, broker_key) = broker.passport(&log, &self.key_pkcs8)?;
        let exp = expiry(&token).ok_or("the broker's token has no expiry")?;
        let body = PassportBody {
            broker: broker.url().to_owned(),
            broker_key,
            token,
        };
        if let Ok(mut c) = self.cached.lock() {
            *c = Some((body.clone(), exp));
        }
        Ok(body)
    }
}

/// The `exp` claim of a token this agent just received (not a verification: peers
/// verify; this only decides how long to reuse it).
fn expiry(token: &str) -> Option<u64> {
    use base64::Engine as _;
    let claims = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["exp"].as_u64()
}
