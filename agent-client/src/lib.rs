//! A small blocking HTTP/1.1 client for the agent's API, over TLS 1.3.
//!
//! The agent's certificate is self-signed and vouched for by nothing but its evidence,
//! so this client never trusts it by itself: an [`Agent`] is either *unverified* (the
//! key is recorded, not checked: public answers and the attestation exchange itself)
//! or *pinned* to the SHA-256 of the SubjectPublicKeyInfo that attestation proved
//! (`cvm`'s `attested` module, or a peer's passport), and a pinned connection to any other key fails in the handshake,
//! before a byte of the request is sent.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cvm_proto::agent::ErrorBody;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};

/// An agent's address and, once attested, the TLS key it must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    /// HOST:PORT.
    pub addr: String,
    pin: Option<[u8; 32]>,
    timeout: Duration,
}

impl Agent {
    /// TLS to `addr` without checking its key: for answers anyone may read (health,
    /// the event log) and for fetching the evidence that proves the key.
    pub fn unverified(addr: &str) -> Self {
        Self {
            addr: addr.to_owned(),
            pin: None,
            timeout: TIMEOUT,
        }
    }

    /// TLS to `addr` that must present the key whose SubjectPublicKeyInfo hashes to
    /// `key_sha256`.
    pub fn pinned(addr: &str, key_sha256: [u8; 32]) -> Self {
        Self {
            addr: addr.to_owned(),
            pin: Some(key_sha256),
            timeout: TIMEOUT,
        }
    }

    /// The same agent, waiting up to `timeout` for each read and write (a request the
    /// agent answers only after long work, such as a migration).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The pinned key's hash, if any.
    pub fn key_sha256(&self) -> Option<[u8; 32]> {
        self.pin
    }
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo (DER).
pub fn spki_sha256(cert: &[u8]) -> Result<[u8; 32], String> {
    use x509_cert::der::{Decode as _, Encode as _};
    let cert = x509_cert::Certificate::from_der(cert)
        .map_err(|e| format!("agent certificate is not X.509 DER: {e}"))?;
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .map_err(|e| format!("agent certificate's public key: {e}"))?;
    Ok(Sha256::digest(spki).into())
}

/// Accepts the agent's certificate only as a carrier of its key: records the key's
/// hash, refuses any key but the pinned one, and checks the handshake signature with
/// that key (so the peer holds its private half).
#[derive(Debug)]
struct KeyVerifier {
    pin: Option<[u8; 32]>,
    seen: Mutex<Option<[u8; 32]>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for KeyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let key = spki_sha256(end_entity).map_err(rustls::Error::General)?;
        if let Some(pin) = self.pin
            && pin != key
        {
            return Err(rustls::Error::General(format!(
                "the agent presented TLS key sha256 {}, not the attested key {}",
                hex::encode(key),
                hex::encode(pin)
            )));
        }
        *self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(key);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The client offers TLS 1.3 only.
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connect to `agent` over TLS; returns the stream and the key the agent presented.
fn connect(agent: &Agent) -> Result<(TlsStream, [u8; 32]), std::io::Error> {
    let sock = agent
        .addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other("address resolves to nothing"))?;
    let tcp = TcpStream::connect_timeout(&sock, TIMEOUT.min(agent.timeout))?;
    tcp.set_read_timeout(Some(agent.timeout))?;
    tcp.set_write_timeout(Some(agent.timeout))?;
    tcp.set_nodelay(true)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(KeyVerifier {
        pin: agent.pin,
        seen: Mutex::new(None),
        algorithms: provider.signature_verification_algorithms,
    });
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // The name is not checked (the key is); the agent's certificate carries this one.
    let name = ServerName::try_from("cvm-agent").map_err(std::io::Error::other)?;
    let conn =
        rustls::ClientConnection::new(Arc::new(config), name).map_err(std::io::Error::other)?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    // Finish the handshake now, so a wrong key fails before the request is written.
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    let key = verifier
        .seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .ok_or_else(|| std::io::Error::other("TLS handshake ended without a certificate"))?;
    Ok((stream, key))
}

/// Per-read and per-write timeout, unless [`Agent::with_timeout`] says otherwise.
pub const TIMEOUT: Duration = Duration::from_secs(15);
/// Largest response body accepted.
pub const MAX_BODY: usize = 16 << 20;

/// A request to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// `--to` is not HOST:PORT.
    #[error("agent address {0:?} is not HOST:PORT")]
    BadAddress(String),
    /// Connection or I/O failed.
    #[error("request {path} to {addr} failed")]
    Io {
        /// The address.
        addr: String,
        /// The path.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The response is not HTTP or not the expected JSON.
    #[error("agent at {addr} sent a malformed response to {path}: {reason}")]
    Malformed {
        /// The address.
        addr: String,
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The agent answered with an error.
    #[error("agent at {addr} answered {path} with {status} {}: {}", body.kind, body.detail)]
    Status {
        /// The address.
        addr: String,
        /// The path.
        path: String,
        /// HTTP status.
        status: u16,
        /// The error body.
        body: ErrorBody,
    },
}

/// `GET path` on `agent` and decode the JSON body.
pub fn get_json<T: DeserializeOwned>(agent: &Agent, path: &str) -> Result<T, AgentClientError> {
    get_json_keyed(agent, path).map(|(v, _)| v)
}

/// `GET path` on `agent` and decode the JSON body; also returns the SHA-256 of the TLS
/// key that answered.
pub fn get_json_keyed<T: DeserializeOwned>(
    agent: &Agent,
    path: &str,
) -> Result<(T, [u8; 32]), AgentClientError> {
    let (raw, key) = request_keyed(agent, "GET", path, &[], "application/json", &[])?;
    Ok((decode(&agent.addr, "GET", path, &raw)?, key))
}

/// `POST path` with a JSON body on `addr` and decode the JSON answer.
pub fn post_json<B: serde::Serialize, T: DeserializeOwned>(
    agent: &Agent,
    path: &str,
    body: &B,
) -> Result<T, AgentClientError> {
    let bytes = serde_json::to_vec(body).map_err(|e| AgentClientError::Malformed {
        addr: agent.addr.clone(),
        path: format!("POST {path}"),
        reason: format!("request body: {e}"),
    })?;
    let raw = request(agent, "POST", path, &bytes, "application/json", &[])?;
    decode(&agent.addr, "POST", path, &raw)
}

/// Decode a JSON answer.
pub fn decode<T: DeserializeOwned>(
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<T, AgentClientError> {
    serde_json::from_slice(body).map_err(|e| AgentClientError::Malformed {
        addr: addr.to_owned(),
        path: format!("{method} {path}"),
        reason: e.to_string(),
    })
}

/// Send one request; returns the body of a 2xx answer, the agent's error otherwise.
pub fn request(
    agent: &Agent,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: &str,
    headers: &[(String, String)],
) -> Result<Vec<u8>, AgentClientError> {
    request_keyed(agent, method, path, body, content_type, headers).map(|(b, _)| b)
}

fn request_keyed(
    agent: &Agent,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: &str,
    headers: &[(String, String)],
) -> Result<(Vec<u8>, [u8; 32]), AgentClientError> {
    let addr = agent.addr.as_str();
    let what = format!("{method} {path}");
    let (status, mut reader) = send(agent, method, path, body, content_type, headers)?;
    let key = reader.key;
    let mut raw = Vec::new();
    (&mut reader)
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|source| AgentClientError::Io {
            addr: addr.to_owned(),
            path: what.clone(),
            source,
        })?;
    if raw.len() > MAX_BODY {
        return Err(AgentClientError::Malformed {
            addr: addr.to_owned(),
            path: what,
            reason: format!("answer larger than {MAX_BODY} bytes"),
        });
    }
    let body = if reader.chunked {
        dechunk(&raw).ok_or_else(|| AgentClientError::Malformed {
            addr: addr.to_owned(),
            path: what.clone(),
            reason: "bad chunked encoding".into(),
        })?
    } else {
        raw
    };
    if !(200..300).contains(&status) {
        return Err(status_error(addr, what, status, &body));
    }
    Ok((body, key))
}

/// The agent's error answer as an error (or a malformed-answer error).
fn status_error(addr: &str, what: String, status: u16, body: &[u8]) -> AgentClientError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => AgentClientError::Status {
            addr: addr.to_owned(),
            path: what,
            status,
            body,
        },
        Err(e) => AgentClientError::Malformed {
            addr: addr.to_owned(),
            path: what,
            reason: format!("status {status} without an error body: {e}"),
        },
    }
}

/// Send a request and read a streamed (chunked) answer, calling `on_line` for each line
/// as it arrives, until the agent ends it or `on_line` returns false.
pub fn stream_lines(
    agent: &Agent,
    path: &str,
    headers: &[(String, String)],
    mut on_line: impl FnMut(&str) -> bool,
) -> Result<(), AgentClientError> {
    let addr = agent.addr.as_str();
    let what = format!("GET {path}");
    let io = |source| AgentClientError::Io {
        addr: addr.to_owned(),
        path: what.clone(),
        source,
    };
    let (status, mut reader) = send(agent, "GET", path, &[], "application/json", headers)?;
    reader.stream.sock.set_read_timeout(None).map_err(io)?;
    if !(200..300).contains(&status) {
        let mut raw = Vec::new();
        let _ = (&mut reader).take(MAX_BODY as u64).read_to_end(&mut raw);
        let raw = if reader.chunked {
            dechunk(&raw).unwrap_or(raw)
        } else {
            raw
        };
        return Err(status_error(addr, what, status, &raw));
    }
    let mut pending = Vec::new();
    let mut emit = |bytes: &[u8], pending: &mut Vec<u8>| -> bool {
        pending.extend_from_slice(bytes);
        while let Some(n) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=n).collect();
            if !on_line(String::from_utf8_lossy(&line[..n]).as_ref()) {
                return false;
            }
        }
        true
    };
    if !reader.chunked {
        let mut buf = [0u8; 8192];
        loop {
            let n = reader.read(&mut buf).map_err(io)?;
            if n == 0 || !emit(&buf[..n], &mut pending) {
                return Ok(());
            }
        }
    }
    loop {
        let mut size_line = Vec::new();
        read_line(&mut reader, &mut size_line).map_err(io)?;
        let text = String::from_utf8_lossy(&size_line);
        let size = usize::from_str_radix(text.trim().split(';').next().unwrap_or(""), 16).map_err(
            |_| AgentClientError::Malformed {
                addr: addr.to_owned(),
                path: what.clone(),
                reason: format!("bad chunk size {text:?}"),
            },
        )?;
        if size == 0 {
            return Ok(());
        }
        let mut chunk = vec![0u8; size.min(MAX_BODY)];
        reader.read_exact(&mut chunk).map_err(io)?;
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).map_err(io)?;
        if !emit(&chunk, &mut pending) {
            return Ok(());
        }
    }
}

fn read_line(r: &mut impl std::io::Read, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut b = [0u8; 1];
    loop {
        if r.read(&mut b)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if b[0] == b'\n' {
            return Ok(());
        }
        if out.len() > 1024 {
            return Err(std::io::Error::other("header or chunk line too long"));
        }
        out.push(b[0]);
    }
}

/// A response after its head: the rest of the stream.
struct Reader {
    stream: TlsStream,
    key: [u8; 32],
    chunked: bool,
    buffered: Vec<u8>,
}

impl std::io::Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if !self.buffered.is_empty() {
            let n = buf.len().min(self.buffered.len());
            buf[..n].copy_from_slice(&self.buffered[..n]);
            self.buffered.drain(..n);
            return Ok(n);
        }
        self.stream.read(buf)
    }
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// Connect, send, read the status line and headers.
fn send(
    agent: &Agent,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: &str,
    headers: &[(String, String)],
) -> Result<(u16, Reader), AgentClientError> {
    let addr = agent.addr.as_str();
    let what = format!("{method} {path}");
    let io = |source| AgentClientError::Io {
        addr: addr.to_owned(),
        path: what.clone(),
        source,
    };
    let malformed = |reason: String| AgentClientError::Malformed {
        addr: addr.to_owned(),
        path: what.clone(),
        reason,
    };
    if addr
        .rsplit_once(':')
        .is_none_or(|(_, port)| port.parse::<u16>().is_err())
    {
        return Err(AgentClientError::BadAddress(addr.to_owned()));
    }
    let (mut stream, key) = connect(agent).map_err(io)?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n"
    );
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(body).map_err(io)?;
    // Read the head byte by byte up to its blank line; the body follows.
    let mut raw = Vec::new();
    let mut b = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if stream.read(&mut b).map_err(io)? == 0 {
            return Err(malformed(
                "connection closed before the end of headers".into(),
            ));
        }
        raw.push(b[0]);
        if raw.len() > 64 << 10 {
            return Err(malformed("headers larger than 64 KiB".into()));
        }
    }
    let head = String::from_utf8_lossy(&raw).into_owned();
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed(format!("bad status line in {head:?}")))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok((
        status,
        Reader {
            stream,
            key,
            chunked,
            buffered: Vec::new(),
        },
    ))
}
