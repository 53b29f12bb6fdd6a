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
    let raw = request(
        addr,
        method,
        path,
        body.unwrap_or_default(),
        "application/json",
        &[],
    )?;
    decode(addr, method, path, &raw)
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
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: &str,
    headers: &[(String, String)],
) -> Result<Vec<u8>, AgentClientError> {
    let what = format!("{method} {path}");
    let (status, head_len, mut reader) = send(addr, method, path, body, content_type, headers)?;
    let _ = head_len;
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
        let body: ErrorBody =
            serde_json::from_slice(&body).map_err(|e| AgentClientError::Malformed {
                addr: addr.to_owned(),
                path: what.clone(),
                reason: format!("status {status} without an error body: {e}"),
            })?;
        return Err(AgentClientError::Status {
            addr: addr.to_owned(),
            path: what,
            status,
            body,
        });
    }
    Ok(body)
}

/// Send a request and read a streamed (chunked) answer, calling `on_line` for each line
/// as it arrives, until the agent ends it or `on_line` returns false.
pub fn stream_lines(
    addr: &str,
    path: &str,
    headers: &[(String, String)],
    mut on_line: impl FnMut(&str) -> bool,
) -> Result<(), AgentClientError> {
    let what = format!("GET {path}");
    let io = |source| AgentClientError::Io {
        addr: addr.to_owned(),
        path: what.clone(),
        source,
    };
    let (status, _, mut reader) = send(addr, "GET", path, &[], "application/json", headers)?;
    reader.stream.set_read_timeout(None).map_err(io)?;
    if !(200..300).contains(&status) {
        let mut raw = Vec::new();
        let _ = (&mut reader).take(MAX_BODY as u64).read_to_end(&mut raw);
        let raw = if reader.chunked {
            dechunk(&raw).unwrap_or(raw)
        } else {
            raw
        };
        let body: ErrorBody =
            serde_json::from_slice(&raw).map_err(|e| AgentClientError::Malformed {
                addr: addr.to_owned(),
                path: what.clone(),
                reason: format!("status {status} without an error body: {e}"),
            })?;
        return Err(AgentClientError::Status {
            addr: addr.to_owned(),
            path: what,
            status,
            body,
        });
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
    stream: TcpStream,
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
    addr: &str,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: &str,
    headers: &[(String, String)],
) -> Result<(u16, usize, Reader), AgentClientError> {
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
        raw.len(),
        Reader {
            stream,
            chunked,
            buffered: Vec::new(),
        },
    ))
}
