//! Key release: PID1 proves the boot it measured to the broker named in the init-data
//! and receives the state volume key and the resources the init-data lists. Keys only
//! ever live in memory (zeroised on drop) and are never logged.

use std::collections::BTreeMap;
use std::time::Duration;

use cvm_attest::EventLog;
use cvm_kbs_client::client::{ClientConfig, ClientError, KbsClient};
use cvm_kbs_client::http::BrokerTls;
use tracing::info;
use zeroize::Zeroizing;

use crate::initdata::KeyRelease;

pub use cvm_kbs_client::attester::guest::{Platform, detect};

/// Per-request timeout.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts after the first when the broker is unreachable.
pub const RETRIES: u32 = 5;
/// First retry delay (doubling, capped at 8×: about 20 s of retries in all).
pub const BACKOFF: Duration = Duration::from_millis(1000);

/// Key release that failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The platform has no attester for it.
    #[error("no attester for this platform: {0}")]
    NoAttester(String),
    /// The handshake or a fetch failed.
    #[error("key release from {url} failed")]
    Client {
        /// The broker.
        url: String,
        /// Why (the broker's reason for a refusal).
        #[source]
        source: ClientError,
    },
}

/// What the broker released.
pub struct Keys {
    /// The state volume key.
    pub state_key: Option<Zeroizing<Vec<u8>>>,
    /// The resources for the agent, by path.
    pub resources: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("state_key", &self.state_key.as_ref().map(|_| ".."))
            .field("resources", &self.resources.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Attest and fetch everything `settings` asks for.
pub fn release(
    settings: &KeyRelease,
    platform: Platform,
    tcti: Option<&str>,
    runtime_log: &EventLog,
) -> Result<Keys, KeyError> {
    let client_err = |source| KeyError::Client {
        url: settings.broker_url.clone(),
        source,
    };
    let tls = match &settings.broker_ca {
        Some(pem) => BrokerTls::Pinned(pem.clone()),
        None => BrokerTls::InsecureHttp,
    };
    let mut config = ClientConfig::new(&settings.broker_url, tls);
    config.timeout = TIMEOUT;
    config.retries = RETRIES;
    config.backoff = BACKOFF;
    config.init_data = Some(settings.body.clone());
    let mut client = KbsClient::new(config).map_err(client_err)?;
    let mut attester = cvm_kbs_client::attester::guest::attester(platform, tcti, runtime_log)
        .map_err(KeyError::NoAttester)?;
    client.attest(attester.as_mut()).map_err(client_err)?;
    info!(broker = %settings.broker_url, ?platform, "attested");
    let state_key = match &settings.state_device {
        Some(_) => Some(client.resource(&settings.state_key).map_err(client_err)?),
        None => None,
    };
    let mut resources = BTreeMap::new();
    for path in &settings.resources {
        resources.insert(path.clone(), client.resource(path).map_err(client_err)?);
    }
    info!(
        resources = resources.len(),
        state_key = state_key.is_some(),
        "keys released"
    );
    Ok(Keys {
        state_key,
        resources,
    })
}
