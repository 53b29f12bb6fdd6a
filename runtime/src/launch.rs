//! The contract between the agent and `cvm-wasm`, the per-workload runtime process:
//! the command line the agent writes and the runtime reads, and the status events the
//! runtime reports back on a Unix socket the agent listens on (never on the workload's
//! stdout/stderr, so a workload cannot forge them). Everything passes by path inside
//! the agent's root-only run folder, so no descriptor juggling (and no `unsafe`) is
//! needed to start a workload.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Where a `wasi:http` component is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address (port 0: any free port; the `ready` event names the one taken).
    Tcp(SocketAddr),
    /// A Unix socket path (the agent's choice: only the agent can reach it).
    Unix(PathBuf),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Tcp(a) => write!(f, "tcp:{a}"),
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for Listen {
    type Err = LaunchError;
    fn from_str(s: &str) -> Result<Self, LaunchError> {
        if let Some(a) = s.strip_prefix("tcp:") {
            a.parse()
                .map(Listen::Tcp)
                .map_err(|_| LaunchError::Value("--http", "tcp:ADDR:PORT"))
        } else if let Some(p) = s.strip_prefix("unix:") {
            if p.is_empty() {
                return Err(LaunchError::Value("--http", "unix:PATH"));
            }
            Ok(Listen::Unix(PathBuf::from(p)))
        } else {
            Err(LaunchError::Value("--http", "tcp:ADDR:PORT or unix:PATH"))
        }
    }
}

/// What one runtime process runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    /// The workload's name (for messages).
    pub name: String,
    /// The verified Wasm (in the agent's run folder, on tmpfs: guest memory).
    pub wasm: PathBuf,
    /// The workload policy as JSON.
    pub policy: PathBuf,
    /// The workload's own state folder; preopens are resolved beneath it.
    pub state: PathBuf,
    /// Serve `wasi:http` here (required when the policy has `http`).
    pub http: Option<Listen>,
    /// Send status events to the Unix socket at this path (default: stderr).
    pub status: Option<PathBuf>,
    /// Confine the process (its cgroup, `no_new_privs`, Landlock) before compiling:
    /// always set by the agent; off only for running the runtime on a developer host.
    pub confine: bool,
}

/// A command line `cvm-wasm` does not accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LaunchError {
    /// An option it does not know.
    #[error("unknown option {0}")]
    Unknown(String),
    /// An option without its value, or with a malformed one.
    #[error("{0} expects {1}")]
    Value(&'static str, &'static str),
    /// A required option is absent.
    #[error("{0} is required")]
    Missing(&'static str),
}

impl LaunchSpec {
    /// The arguments that make `cvm-wasm` run this spec.
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "--name".to_owned(),
            self.name.clone(),
            "--wasm".to_owned(),
            self.wasm.display().to_string(),
            "--policy".to_owned(),
            self.policy.display().to_string(),
            "--state".to_owned(),
            self.state.display().to_string(),
        ];
        if let Some(h) = &self.http {
            a.extend(["--http".to_owned(), h.to_string()]);
        }
        if let Some(p) = &self.status {
            a.extend(["--status".to_owned(), p.display().to_string()]);
        }
        if self.confine {
            a.push("--confine".to_owned());
        }
        a
    }

    /// Parse `cvm-wasm`'s arguments (without argv\[0\]).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, LaunchError> {
        let (mut name, mut wasm, mut policy, mut state, mut http, mut status) =
            (None, None, None, None, None, None);
        let mut confine = false;
        let mut it = args.into_iter();
        while let Some(opt) = it.next() {
            let mut value = |flag: &'static str, what: &'static str| {
                it.next().ok_or(LaunchError::Value(flag, what))
            };
            match opt.as_str() {
                "--name" => name = Some(value("--name", "a name")?),
                "--wasm" => wasm = Some(PathBuf::from(value("--wasm", "a path")?)),
                "--policy" => policy = Some(PathBuf::from(value("--policy", "a path")?)),
                "--state" => state = Some(PathBuf::from(value("--state", "a path")?)),
                "--http" => http = Some(value("--http", "tcp:ADDR:PORT or unix:PATH")?.parse()?),
                "--status" => status = Some(PathBuf::from(value("--status", "a socket path")?)),
                "--confine" => confine = true,
                _ => return Err(LaunchError::Unknown(opt)),
            }
        }
        Ok(Self {
            name: name.ok_or(LaunchError::Missing("--name"))?,
            wasm: wasm.ok_or(LaunchError::Missing("--wasm"))?,
            policy: policy.ok_or(LaunchError::Missing("--policy"))?,
            state: state.ok_or(LaunchError::Missing("--state"))?,
            http,
            status,
            confine,
        })
    }
}

/// What kind of Wasm a workload is, as the runtime found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WasmKind {
    /// A component exporting `wasi:http/incoming-handler` (served per request).
    HttpComponent,
    /// A component exporting `wasi:cli/run` (run once).
    CommandComponent,
    /// A WASI preview 1 core module (run once, `_start`).
    Preview1Module,
}

/// One status event, a JSON line on the status descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum StatusEvent {
    /// The Wasm compiled and linked against what the policy grants.
    Compiled {
        /// What it is.
        kind: WasmKind,
        /// Compile time, ms.
        ms: u64,
    },
    /// The process confined itself (before compiling): its cgroup and whether
    /// Landlock is in force.
    Confined {
        /// The cgroup joined.
        cgroup: String,
        /// Landlock applied (enforce mode).
        landlock: bool,
    },
    /// Serving `wasi:http` (http components) or started (commands).
    Ready {
        /// Where it listens, if it serves.
        listen: Option<String>,
    },
    /// The workload tried something its policy does not grant and was refused.
    Denied {
        /// The capability (`connect`, `bind`, `listen`, `udp`, `http-request`).
        what: String,
        /// What exactly.
        detail: String,
    },
    /// One request failed inside the workload (trap, limit); the service keeps serving.
    RequestFailed {
        /// Why.
        reason: String,
    },
    /// A command finished.
    Exited {
        /// Its exit code.
        code: i32,
    },
    /// The workload was stopped or never started, and why (limit, trap, bad Wasm,
    /// policy the Wasm does not fit).
    Failed {
        /// Why.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_round_trip() {
        let spec = LaunchSpec {
            name: "hello".into(),
            wasm: "/run/cvm/w/hello/app.wasm".into(),
            policy: "/run/cvm/w/hello/policy.json".into(),
            state: "/var/lib/cvm/workloads/hello".into(),
            http: Some(Listen::Unix("/run/cvm/w/hello/http.sock".into())),
            status: Some("/run/cvm/w/hello/status.sock".into()),
            confine: true,
        };
        assert_eq!(LaunchSpec::parse(spec.to_args()).unwrap(), spec);
        let tcp = LaunchSpec {
            http: Some(Listen::Tcp("127.0.0.1:0".parse().unwrap())),
            status: None,
            confine: false,
            ..spec
        };
        assert_eq!(LaunchSpec::parse(tcp.to_args()).unwrap(), tcp);
    }

    #[test]
    fn bad_command_lines_are_named() {
        let e = |v: &[&str]| LaunchSpec::parse(v.iter().map(|s| s.to_string())).unwrap_err();
        assert_eq!(e(&["--bogus"]), LaunchError::Unknown("--bogus".into()));
        assert_eq!(e(&["--name"]), LaunchError::Value("--name", "a name"));
        assert_eq!(e(&["--name", "x"]), LaunchError::Missing("--wasm"));
        assert!(matches!(
            e(&["--http", "udp:1.2.3.4:5"]),
            LaunchError::Value("--http", _)
        ));
    }

    #[test]
    fn status_events_are_tagged_json() {
        let ev = StatusEvent::Denied {
            what: "connect".into(),
            detail: "10.0.2.2:80".into(),
        };
        let line = serde_json::to_string(&ev).unwrap();
        assert_eq!(
            line,
            r#"{"event":"denied","what":"connect","detail":"10.0.2.2:80"}"#
        );
        assert_eq!(serde_json::from_str::<StatusEvent>(&line).unwrap(), ev);
    }
}
