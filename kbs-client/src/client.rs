//! The RCAR handshake and resource fetch: `/auth` → challenge and session cookie →
//! `/attest` with evidence over the runtime data (nonce + TEE public key) → token →
//! `/resource/<repo>/<type>/<tag>` → JWE decrypted with the TEE key.
//!
//! Transient failures (broker unreachable, timeouts, 5xx) are retried with exponential
//! backoff, a bounded number of times, restarting the handshake (a nonce is single-use).
//! A refusal (4xx) is final and carries the broker's error `type` and `detail`.

use std::time::Duration;

use kbs_types::{Attestation, Challenge, CompositeEvidence, InitData, Request, RuntimeData};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::KBS_PROTOCOL_VERSION;
use crate::attester::Attester;
use crate::counter::{Counter, CounterUpdate};
use crate::http::{BrokerTls, HttpResponse, Transport, TransportError};
use crate::initdata::FORMAT as INITDATA_FORMAT;
use crate::jwe::JweError;
use crate::report_data::runtime_data_digest;
use crate::tee_key::TeeKey;

/// How to reach the broker and how hard to try.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://host:port` (or `http://` with [`BrokerTls::InsecureHttp`]).
    pub url: String,
    /// Trust for the broker.
    pub tls: BrokerTls,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Attempts after the first, for transient failures.
    pub retries: u32,
    /// Delay before the first retry; doubled each time, capped at 8×.
    pub backoff: Duration,
    /// The init-data TOML body to present, verbatim.
    pub init_data: Option<String>,
}

impl ClientConfig {
    /// Defaults: 10 s timeout, 5 retries from 500 ms.
    pub fn new(url: &str, tls: BrokerTls) -> Self {
        Self {
            url: url.to_owned(),
            tls,
            timeout: Duration::from_secs(10),
            retries: 5,
            backoff: Duration::from_millis(500),
            init_data: None,
        }
    }
}

/// A handshake or fetch that failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration cannot work.
    #[error(transparent)]
    Config(TransportError),
    /// Still unreachable after every retry.
    #[error("broker {url} unreachable after {attempts} attempts: {last}")]
    Unreachable {
        /// The broker.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// TLS failed: the broker is not the one the configuration pins.
    #[error(transparent)]
    Tls(TransportError),
    /// The broker refused, with its reason.
    #[error("broker refused ({status} {kind}): {detail}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error variant (the last segment of its `type`).
        kind: String,
        /// The broker's detail.
        detail: String,
    },
    /// The broker answered something that is not the protocol.
    #[error("broker protocol error: {0}")]
    Protocol(String),
    /// The TEE could not produce evidence.
    #[error("evidence: {0}")]
    Evidence(String),
    /// The resource did not decrypt with the TEE key.
    #[error("resource: {0}")]
    Jwe(#[from] JweError),
}

impl ClientError {
    fn transient(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. })
            || matches!(self, ClientError::Refused { status, .. } if *status >= 500)
    }
}

/// A client with its TEE key; one handshake gives a session for many resources.
#[derive(Debug)]
pub struct KbsClient {
    config: ClientConfig,
    transport: Transport,
    tee_key: TeeKey,
    session: Option<String>,
    token: Option<String>,
}

fn refusal(resp: &HttpResponse) -> ClientError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        #[serde(rename = "type")]
        kind: String,
        detail: String,
    }
    match serde_json::from_slice::<ErrorBody>(&resp.body) {
        Ok(e) => ClientError::Refused {
            status: resp.status,
            kind: e.kind.rsplit('/').next().unwrap_or_default().to_owned(),
            detail: e.detail,
        },
        Err(_) => ClientError::Refused {
            status: resp.status,
            kind: "Unknown".into(),
            detail: String::from_utf8_lossy(&resp.body)
                .chars()
                .take(300)
                .collect(),
        },
    }
}

impl KbsClient {
    /// A client with a fresh P-256 TEE key (the Trustee client's default).
    pub fn new(config: ClientConfig) -> Result<Self, ClientError> {
        Self::with_tee_key(config, TeeKey::generate_p256())
    }

    /// A client with `tee_key`.
    pub fn with_tee_key(config: ClientConfig, tee_key: TeeKey) -> Result<Self, ClientError> {
        let transport = Transport::new(&config.url, &config.tls, config.timeout)
            .map_err(ClientError::Config)?;
        Ok(Self {
            config,
            transport,
            tee_key,
            session: None,
            token: None,
        })
    }

    /// The attestation token of the last handshake.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<HttpResponse, ClientError> {
        let resp = self
            .transport
            .call(
                method,
                path,
                self.session.as_deref(),
                None,
                body.map(|b| ("application/json", b)),
            )
            .map_err(|e| match e {
                TransportError::Unreachable(last) => ClientError::Unreachable {
                    url: self.transport.base().to_owned(),
                    attempts: 1,
                    last,
                },
                TransportError::Tls(_) => ClientError::Tls(e),
                TransportError::Config(_) => ClientError::Config(e),
            })?;
        if resp.status >= 400 {
            return Err(refusal(&resp));
        }
        Ok(resp)
    }

    /// Run `op` with retries on transient failures.
    fn retrying<T>(
        &mut self,
        what: &str,
        mut op: impl FnMut(&mut Self) -> Result<T, ClientError>,
    ) -> Result<T, ClientError> {
        let mut delay = self.config.backoff;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op(self) {
                Err(e) if e.transient() && attempt <= self.config.retries => {
                    tracing::warn!(attempt, error = %e, "{what} failed, retrying in {delay:?}");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(self.config.backoff * 8);
                }
                Err(ClientError::Unreachable { url, last, .. }) => {
                    return Err(ClientError::Unreachable {
                        url,
                        attempts: attempt,
                        last,
                    });
                }
                other => return other,
            }
        }
    }

    /// The full handshake with `attester`; returns the token.
    pub fn attest(&mut self, attester: &mut dyn Attester) -> Result<String, ClientError> {
        self.retrying("attestation", |c| c.handshake(attester))
    }

    fn handshake(&mut self, attester: &mut dyn Attester) -> Result<String, ClientError> {
        self.session = None;
        self.token = None;
        let request = Request {
            version: KBS_PROTOCOL_VERSION.into(),
            tee: attester.tee(),
            extra_params: attester
                .auth_extra_params()
                .map_err(ClientError::Evidence)?,
        };
        let body =
            serde_json::to_vec(&request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = self.call("POST", "/kbs/v0/auth", Some(&body))?;
        self.session =
            Some(resp.session_cookie.clone().ok_or_else(|| {
                ClientError::Protocol("/auth set no kbs-session-id cookie".into())
            })?);
        let challenge: Challenge = serde_json::from_slice(&resp.body)
            .map_err(|e| ClientError::Protocol(format!("/auth answer is not a challenge: {e}")))?;

        let tee_pubkey = self.tee_key.public();
        let additional = String::new();
        let digest = runtime_data_digest(&challenge.nonce, &tee_pubkey, &additional)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let evidence = attester
            .evidence(&digest, &challenge.extra_params)
            .map_err(ClientError::Evidence)?;
        let attestation = Attestation {
            init_data: self.config.init_data.as_ref().map(|body| InitData {
                format: INITDATA_FORMAT.into(),
                body: body.clone(),
            }),
            runtime_data: RuntimeData {
                nonce: challenge.nonce,
                tee_pubkey,
            },
            tee_evidence: CompositeEvidence {
                primary_evidence: evidence,
                additional_evidence: additional,
            },
        };
        let body =
            serde_json::to_vec(&attestation).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = self.call("POST", "/kbs/v0/attest", Some(&body))?;
        let answer: Value = serde_json::from_slice(&resp.body)
            .map_err(|e| ClientError::Protocol(format!("/attest answer is not JSON: {e}")))?;
        let token = answer["token"]
            .as_str()
            .ok_or_else(|| ClientError::Protocol("/attest answer has no token".into()))?
            .to_owned();
        self.token = Some(token.clone());
        Ok(token)
    }

    /// Fetch and decrypt the resource `repo/type/tag` in the attested session.
    pub fn resource(&mut self, path: &str) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        if self.session.is_none() {
            return Err(ClientError::Protocol(
                "no attested session: attest before fetching resources".into(),
            ));
        }
        let url = format!("/kbs/v0/resource/{path}");
        let resp = self.retrying("resource fetch", |c| c.call("GET", &url, None))?;
        Ok(self.tee_key.decrypt(&resp.body)?)
    }

    fn attested(&self) -> Result<(), ClientError> {
        match self.session {
            Some(_) => Ok(()),
            None => Err(ClientError::Protocol(
                "no attested session: attest before using counters".into(),
            )),
        }
    }

    /// Read the counter at `path` in the attested session.
    pub fn counter(&mut self, path: &str) -> Result<Counter, ClientError> {
        self.attested()?;
        let url = format!("/kbs/v0/counter/{path}");
        let resp = self.retrying("counter read", |c| c.call("GET", &url, None))?;
        serde_json::from_slice(&resp.body)
            .map_err(|e| ClientError::Protocol(format!("counter {path}: {e}")))
    }

    /// Advance the counter at `path` from `update.expect` (compare-and-set). A retried
    /// request whose first attempt the broker applied answers with a conflict; the
    /// counter then already holds exactly this update, which counts as success.
    pub fn advance_counter(
        &mut self,
        path: &str,
        update: &CounterUpdate,
    ) -> Result<Counter, ClientError> {
        self.attested()?;
        let url = format!("/kbs/v0/counter/{path}");
        let body = serde_json::to_vec(update)
            .map_err(|e| ClientError::Protocol(format!("counter update: {e}")))?;
        match self.retrying("counter update", |c| c.call("POST", &url, Some(&body))) {
            Ok(resp) => serde_json::from_slice(&resp.body)
                .map_err(|e| ClientError::Protocol(format!("counter {path}: {e}"))),
            Err(ClientError::Refused {
                status: 409,
                kind,
                detail,
            }) => match self.counter(path) {
                Ok(now) if now == update.counter() => Ok(now),
                _ => Err(ClientError::Refused {
                    status: 409,
                    kind,
                    detail,
                }),
            },
            Err(e) => Err(e),
        }
    }

    /// The broker's token key (a P-256 JWK), to check its tokens as passports. Asked
    /// over the pinned TLS connection, which is what makes the answer trustworthy.
    pub fn token_key(&mut self) -> Result<serde_json::Value, ClientError> {
        let resp = self.retrying("token key", |c| c.call("GET", "/kbs/v0/token-key", None))?;
        serde_json::from_slice(&resp.body)
            .map_err(|e| ClientError::Protocol(format!("token key: {e}")))
    }
}
