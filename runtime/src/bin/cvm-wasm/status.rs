//! Status events to the agent, one JSON line each, on a socket the workload never sees
//! (WASI stdout/stderr are the process's stdout/stderr; this is `--status`).

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};

use cvm_runtime::launch::StatusEvent;

/// Where status events go (cheap to clone; shared by the capability checks).
#[derive(Clone)]
pub struct Status(Arc<Mutex<Sink>>);

enum Sink {
    Socket(UnixStream),
    Stderr,
}

impl Status {
    /// Connect to the agent's socket at `path`, or use stderr.
    pub fn open(path: Option<&Path>) -> std::io::Result<Self> {
        let sink = match path {
            Some(p) => Sink::Socket(UnixStream::connect(p)?),
            None => Sink::Stderr,
        };
        Ok(Self(Arc::new(Mutex::new(sink))))
    }

    /// Report one event. A closed socket means the agent is gone; nothing to do then.
    pub fn send(&self, event: &StatusEvent) {
        let Ok(mut line) = serde_json::to_vec(event) else {
            return;
        };
        line.push(b'\n');
        let Ok(mut sink) = self.0.lock() else {
            return;
        };
        let _ = match &mut *sink {
            Sink::Socket(s) => s.write_all(&line),
            Sink::Stderr => std::io::stderr().write_all(&line),
        };
    }
}

/// One line naming an error and its causes.
pub fn reason(e: &wasmtime::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}
