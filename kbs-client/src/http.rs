//! The HTTP(S) transport to the broker: ureq with rustls, trusting only the broker CA
//! from the measured configuration (no public web PKI roots), or plain HTTP when the
//! configuration says so explicitly. Every call has a timeout and a bounded response.

use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};

/// Largest response read (a JWE of the largest resource, in base64, fits).
pub const MAX_RESPONSE: u64 = 4 << 20;

/// How the broker is reached.
#[derive(Clone)]
pub enum BrokerTls {
    /// HTTPS, trusting only this CA (PEM).
    Pinned(Vec<u8>),
    /// Plain HTTP (only when the configuration asks for it).
    InsecureHttp,
}

impl std::fmt::Debug for BrokerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BrokerTls::Pinned(_) => f.write_str("Pinned(..)"),
            BrokerTls::InsecureHttp => f.write_str("InsecureHttp"),
        }
    }
}

/// A transport-level failure.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The configuration cannot work (URL scheme, CA).
    #[error("broker configuration: {0}")]
    Config(String),
    /// The broker could not be reached or did not answer in time; worth retrying.
    #[error("broker unreachable: {0}")]
    Unreachable(String),
    /// The TLS handshake failed (wrong CA, wrong name): not worth retrying.
    #[error("TLS to the broker failed: {0}")]
    Tls(String),
}

/// A response: status, body, the session cookie if set.
#[derive(Debug)]
pub struct HttpResponse {
    /// HTTP status.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
    /// `kbs-session-id` from `Set-Cookie`, if any.
    pub session_cookie: Option<String>,
}

/// A connection pool to one broker.
#[derive(Debug)]
pub struct Transport {
    agent: ureq::Agent,
    base: String,
}

fn classify(e: ureq::Error) -> TransportError {
    match e {
        ureq::Error::Rustls(e) => TransportError::Tls(e.to_string()),
        ureq::Error::Tls(e) => TransportError::Tls(e.to_string()),
        // rustls reports a refused certificate through the I/O error of the handshake.
        ureq::Error::Io(e)
            if e.get_ref()
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some()) =>
        {
            TransportError::Tls(e.to_string())
        }
        e => TransportError::Unreachable(e.to_string()),
    }
}

impl Transport {
    /// A transport to `base_url` (`https://host:port`, or `http://…` with
    /// [`BrokerTls::InsecureHttp`]), each call bounded by `timeout`.
    pub fn new(base_url: &str, tls: &BrokerTls, timeout: Duration) -> Result<Self, TransportError> {
        let base = base_url.trim_end_matches('/').to_owned();
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout.min(Duration::from_secs(10))))
            .max_redirects(0)
            .user_agent(concat!("cvm-kbs-client/", env!("CARGO_PKG_VERSION")));
        match tls {
            BrokerTls::Pinned(pem) => {
                if !base.starts_with("https://") {
                    return Err(TransportError::Config(format!(
                        "broker URL {base} is not https:// (plain HTTP must be configured explicitly)"
                    )));
                }
                let ca = Certificate::from_pem(pem)
                    .map_err(|e| TransportError::Config(format!("broker CA is not PEM: {e}")))?;
                let tls = TlsConfig::builder()
                    .provider(TlsProvider::Rustls)
                    .root_certs(RootCerts::Specific(Arc::new(vec![ca])))
                    .unversioned_rustls_crypto_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .build();
                config = config.https_only(true).tls_config(tls);
            }
            BrokerTls::InsecureHttp => {
                if !base.starts_with("http://") {
                    return Err(TransportError::Config(format!(
                        "broker URL {base} is not http:// but plain HTTP was configured"
                    )));
                }
            }
        }
        Ok(Self {
            agent: config.build().into(),
            base,
        })
    }

    /// The broker's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// One request to `path` (under the base URL).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        cookie: Option<&str>,
        bearer: Option<&str>,
        body: Option<(&str, &[u8])>,
    ) -> Result<HttpResponse, TransportError> {
        self.call_with(method, path, cookie, bearer, body, &[])
    }

    /// One request to `path` with extra `headers`.
    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        cookie: Option<&str>,
        bearer: Option<&str>,
        body: Option<(&str, &[u8])>,
        headers: &[(&str, &str)],
    ) -> Result<HttpResponse, TransportError> {
        let url = format!("{}{path}", self.base);
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(c) = cookie {
            builder = builder.header("cookie", format!("kbs-session-id={c}"));
        }
        if let Some(t) = bearer {
            builder = builder.header("authorization", format!("Bearer {t}"));
        }
        let (content_type, bytes) = body.unwrap_or(("application/json", &[]));
        let request = builder
            .header("content-type", content_type)
            .body(bytes.to_vec())
            .map_err(|e| TransportError::Config(format!("request to {url}: {e}")))?;
        let mut resp = self.agent.run(request).map_err(classify)?;
        let status = resp.status().as_u16();
        let session_cookie = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| {
                let first = v.split(';').next()?.trim();
                first.strip_prefix("kbs-session-id=").map(str::to_owned)
            });
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE)
            .read_to_vec()
            .map_err(classify)?;
        Ok(HttpResponse {
            status,
            body,
            session_cookie,
        })
    }
}
