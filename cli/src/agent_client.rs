//! A small blocking HTTP/1.1 client for the agent's plain-HTTP API.
//!
//! The agent API is plain HTTP on the guest network in this issue; attested TLS
//! replaces this transport in the workload issue.

use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

use cvm_proto::agent::ErrorBody;
use serde::de::DeserializeOwned;

/// Per-request timeout.
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

/// `GET path` on `addr` and decode the JSON body.
pub fn get_json<T: DeserializeOwned>(addr: &str, path: &str) -> Result<T, AgentClientError> {
    request_json(addr, "GET", path, None)
}

/// `POST path` with a JSON body on `addr` and decode the JSON answer.
pub fn post_json<B: serde::Serialize, T: DeserializeOwned>(
    addr: &str,
    path: &str,
    body: &B,
) -> Result<T, AgentClientError> {
    let bytes = serde_json::to_vec(body).map_err(|e| AgentClientError::Malformed {
        addr: addr.to_owned(),
        path: format!("POST {path}"),
        reason: format!("request body: {e}"),
    })?;
    request_json(addr, "POST", path, Some(&bytes))
}

fn request_json<T: DeserializeOwned>(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> Result<T, AgentClientError> {
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
    let sock = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| AgentClientError::BadAddress(addr.to_owned()))?;
    let mut stream = TcpStream::connect_timeout(&sock, TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    let body = body.unwrap_or_default();
    let content = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n{content}Connection: close\r\n\r\n")
        .map_err(io)?;
    stream.write_all(body).map_err(io)?;
    let mut raw = Vec::new();
    stream
        .take(MAX_BODY as u64 + 64 * 1024)
        .read_to_end(&mut raw)
        .map_err(io)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let status: u16 = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed(format!("bad status line in {head:?}")))?;
    if !(200..300).contains(&status) {
        let body: ErrorBody = serde_json::from_slice(body)
            .map_err(|e| malformed(format!("status {status} without an error body: {e}")))?;
        return Err(AgentClientError::Status {
            addr: addr.to_owned(),
            path: what,
            status,
            body,
        });
    }
    serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))
}
