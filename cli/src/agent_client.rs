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
    #[error("request GET {path} to {addr} failed")]
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
    #[error("agent at {addr} sent a malformed response to GET {path}: {reason}")]
    Malformed {
        /// The address.
        addr: String,
        /// The path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The agent answered with an error.
    #[error("agent at {addr} answered GET {path} with {status} {}: {}", body.kind, body.detail)]
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
    let io = |source| AgentClientError::Io {
        addr: addr.to_owned(),
        path: path.to_owned(),
        source,
    };
    let malformed = |reason: String| AgentClientError::Malformed {
        addr: addr.to_owned(),
        path: path.to_owned(),
        reason,
    };
    let sock = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| AgentClientError::BadAddress(addr.to_owned()))?;
    let mut stream = TcpStream::connect_timeout(&sock, TIMEOUT).map_err(io)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\nConnection: close\r\n\r\n")
        .map_err(io)?;
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
            path: path.to_owned(),
            status,
            body,
        });
    }
    serde_json::from_slice(body).map_err(|e| malformed(e.to_string()))
}
