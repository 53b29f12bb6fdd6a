//! Workload content keys from the key broker PID1 attested to (the init-data's): a
//! fresh attestation per fetch, with the runtime log as it is now — it already holds
//! the workload's manifest, so a broker policy can bind the key to that workload.

use std::path::Path;
use std::time::Duration;

use cvm_attest::EventLog;
use cvm_kbs_client::attester::guest;
use cvm_kbs_client::client::{ClientConfig, ClientError, KbsClient};
use cvm_kbs_client::counter::{Counter, CounterUpdate};
use cvm_kbs_client::http::BrokerTls;
use cvm_kbs_client::tee_key::TeeKey;
use zeroize::Zeroizing;

/// Per-request timeout.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts after the first when the broker is unreachable.
const RETRIES: u32 = 2;
/// First retry delay.
const BACKOFF: Duration = Duration::from_millis(500);

/// The broker and what the agent presents to it.
#[derive(Clone)]
pub struct Broker {
    url: String,
    tls: BrokerTls,
    initdata: String,
    tcti: Option<String>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// From the files PID1 left: the init-data body and the pinned CA (absent: plain
    /// HTTP, which PID1 only allowed when the init-data said so).
    pub fn load(
        url: &str,
        ca: Option<&Path>,
        initdata: &Path,
        tcti: Option<String>,
    ) -> anyhow::Result<Self> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| anyhow::anyhow!("read {}: {e}", p.display()));
        let tls = match ca {
            Some(p) => BrokerTls::Pinned(read(p)?),
            None => BrokerTls::InsecureHttp,
        };
        let initdata = String::from_utf8(read(initdata)?)
            .map_err(|_| anyhow::anyhow!("{} is not UTF-8", initdata.display()))?;
        Ok(Self {
            url: url.to_owned(),
            tls,
            initdata,
            tcti,
        })
    }

    /// The broker's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the broker accepts a TCP connection within `timeout` (blocking): a
    /// cheap probe before work that would otherwise measure a deploy for nothing.
    pub fn reachable(&self, timeout: std::time::Duration) -> bool {
        use std::net::ToSocketAddrs as _;
        let Ok(uri) = self.url.parse::<hyper::Uri>() else {
            return false;
        };
        let Some(host) = uri.host() else {
            return false;
        };
        let default_port = if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        (host, uri.port_u16().unwrap_or(default_port))
            .to_socket_addrs()
            .ok()
            .into_iter()
            .flatten()
            .any(|a| std::net::TcpStream::connect_timeout(&a, timeout).is_ok())
    }

    /// Attest with this guest's evidence and fetch `resource` (blocking).
    pub fn fetch(
        &self,
        resource: &str,
        runtime_log: &EventLog,
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        self.session(runtime_log)?.resource(resource)
    }

    /// Attest with this guest's evidence (blocking): a session for several resources
    /// and counters under one token.
    pub fn session(&self, runtime_log: &EventLog) -> Result<BrokerSession, String> {
        let mut client = KbsClient::new(self.config()).map_err(chain)?;
        let mut attester = guest::attester(guest::detect(), self.tcti.as_deref(), runtime_log)?;
        client.attest(attester.as_mut()).map_err(chain)?;
        Ok(BrokerSession { client })
    }

    /// Attest with the agent's TLS key as the TEE key (blocking): the broker's token
    /// then names the key peers reach over TLS (a passport, see
    /// `cvm_kbs_client::passport`). Nothing is fetched in this session, so the TLS key
    /// never serves for ECDH. Returns the token and the broker's token key (JWK).
    pub fn passport(
        &self,
        runtime_log: &EventLog,
        tls_key_pkcs8: &[u8],
    ) -> Result<(String, serde_json::Value), String> {
        let tee_key = TeeKey::from_p256_pkcs8(tls_key_pkcs8).map_err(|e| e.to_string())?;
        let mut client = KbsClient::with_tee_key(self.config(), tee_key).map_err(chain)?;
        let mut attester = guest::attester(guest::detect(), self.tcti.as_deref(), runtime_log)?;
        let token = client.attest(attester.as_mut()).map_err(chain)?;
        let key = client.token_key().map_err(chain)?;
        Ok((token, key))
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(&self.url, self.tls.clone());
        config.timeout = TIMEOUT;
        config.retries = RETRIES;
        config.backoff = BACKOFF;
        config.init_data = Some(self.initdata.clone());
        config
    }
}

fn chain(e: ClientError) -> String {
    crate::error_chain(&e)
}

/// An attested session with the broker (blocking calls).
#[derive(Debug)]
pub struct BrokerSession {
    client: KbsClient,
}

impl BrokerSession {
    /// The resource at `path`, decrypted.
    pub fn resource(&mut self, path: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        self.client.resource(path).map_err(chain)
    }

    /// The counter at `path`.
    pub fn counter(&mut self, path: &str) -> Result<Counter, String> {
        self.client.counter(path).map_err(chain)
    }

    /// Advance the counter at `path` (compare-and-set).
    pub fn advance(&mut self, path: &str, update: &CounterUpdate) -> Result<Counter, String> {
        self.client.advance_counter(path, update).map_err(chain)
    }
}
