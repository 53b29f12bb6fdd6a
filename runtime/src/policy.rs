//! The workload policy: one document, inside the signed manifest, from which every
//! enforcement layer is derived, each capability stated once (DESIGN.md §4). Written
//! by the owner as YAML (or JSON); unknown fields are errors, so a misspelt capability
//! can never be silently ignored.
//!
//! ```yaml
//! mode: enforce              # enforce | audit
//! args: ["--verbose"]
//! env: {GREETING: hello}
//! preopens:                  # inside the workload's own encrypted state
//!   - {dir: data, guest: /data, access: rw}
//!   - {dir: config, guest: /config, access: ro}
//! network:
//!   connect: ["10.0.2.2:8443"]
//!   bind: []
//! http: {port: 8080, concurrency: 16}  # serve wasi:http; the agent proxies to it
//! limits: {memory_mib: 64, fuel: 1000000000, wall_ms: 0}
//! require: {landlock_abi: 6} # refuse to start on a kernel older than this
//! ```
//!
//! The process-level confinement (BPF LSM rules, Landlock, the cgroup) is derived from
//! these fields, never stated twice: see [`crate::confinement`].

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Largest policy document.
pub const MAX_POLICY: usize = 64 << 10;

/// Whether violations are stopped or only reported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every layer must be in place; violations are denied (default).
    #[default]
    Enforce,
    /// Violations are allowed and reported.
    Audit,
}

/// Read-only or read-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Read only.
    Ro,
    /// Read and write.
    Rw,
}

/// A directory of the workload's state made visible to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preopen {
    /// Folder inside the workload's state (relative, no `..`).
    pub dir: String,
    /// Where the workload sees it (absolute).
    pub guest: String,
    /// Permissions.
    pub access: Access,
}

/// TCP the workload may use.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Addresses it may connect to.
    #[serde(default)]
    pub connect: Vec<SocketAddr>,
    /// Addresses it may listen on.
    #[serde(default)]
    pub bind: Vec<SocketAddr>,
}

/// Most requests one workload serves at once (and the runtime's instance pool size).
pub const MAX_CONCURRENCY: u32 = 16;
const _: () = assert!(
    MAX_CONCURRENCY == 16,
    "update the http.concurrency error message"
);

/// Serving `wasi:http`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// The guest port the agent proxies to the component.
    pub port: u16,
    /// Requests served at once, 1 to [`MAX_CONCURRENCY`] (the default); others wait.
    /// 1 serialises them, for a component that keeps its state in files without
    /// coordinating its instances.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
}

fn default_concurrency() -> u32 {
    MAX_CONCURRENCY
}

/// Resource limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory, MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Fuel (instructions, roughly) per request or run; 0 = unlimited.
    #[serde(default)]
    pub fuel: u64,
    /// Wall-clock limit per request or run, ms; 0 = unlimited.
    #[serde(default)]
    pub wall_ms: u64,
}

fn default_memory_mib() -> u32 {
    64
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_mib: default_memory_mib(),
            fuel: 0,
            wall_ms: 0,
        }
    }
}

/// What the kernel must offer for the workload to start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Require {
    /// Lowest Landlock ABI; the appliance itself needs 6 (TCP ports and scopes).
    #[serde(default)]
    pub landlock_abi: u8,
}

/// The workload policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadPolicy {
    /// Enforce or audit.
    #[serde(default)]
    pub mode: Mode,
    /// Arguments (argv[1..]).
    #[serde(default)]
    pub args: Vec<String>,
    /// The whole environment (nothing is inherited).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Directories of its state.
    #[serde(default)]
    pub preopens: Vec<Preopen>,
    /// TCP allowlists.
    #[serde(default)]
    pub network: Network,
    /// `wasi:http` serving, if any.
    #[serde(default)]
    pub http: Option<Http>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Kernel features the confinement must have.
    #[serde(default, skip_serializing_if = "is_default")]
    pub require: Require,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// A policy that is not valid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    /// Not YAML/JSON of the policy's shape.
    #[error("workload policy does not parse: {0}")]
    Parse(String),
    /// A field with a value outside what it may hold.
    #[error("workload policy {field}: {reason}")]
    Invalid {
        /// The field.
        field: String,
        /// Why.
        reason: &'static str,
    },
}

fn invalid(field: impl Into<String>, reason: &'static str) -> PolicyError {
    PolicyError::Invalid {
        field: field.into(),
        reason,
    }
}

impl WorkloadPolicy {
    /// Parse YAML (JSON is YAML too) and validate.
    pub fn from_yaml(text: &str) -> Result<Self, PolicyError> {
        if text.len() > MAX_POLICY {
            return Err(invalid("document", "larger than 64 KiB"));
        }
        let p: Self = serde_yaml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    /// Check every field's range and shape.
    pub fn validate(&self) -> Result<(), PolicyError> {
        for (i, p) in self.preopens.iter().enumerate() {
            let field = format!("preopens[{i}]");
            let rel_ok = !p.dir.is_empty()
                && !p.dir.starts_with('/')
                && p.dir.split('/').all(|c| {
                    !c.is_empty()
                        && c != "."
                        && c != ".."
                        && c.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                });
            if !rel_ok {
                return Err(invalid(
                    format!("{field}.dir"),
                    "must be a relative path of [A-Za-z0-9._-] parts, without . or ..",
                ));
            }
            let guest_ok = p.guest.starts_with('/')
                && !p.guest.split('/').any(|c| c == "." || c == "..")
                && !p.guest.contains('\0');
            if !guest_ok {
                return Err(invalid(
                    format!("{field}.guest"),
                    "must be an absolute path without . or ..",
                ));
            }
        }
        let mut guests: Vec<&str> = self.preopens.iter().map(|p| p.guest.as_str()).collect();
        guests.sort_unstable();
        if guests.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("preopens", "two preopens at the same guest path"));
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(invalid(format!("env.{k}"), "not a variable name"));
            }
        }
        if self
            .env
            .values()
            .chain(self.args.iter())
            .any(|v| v.contains('\0'))
        {
            return Err(invalid("args/env", "contains a NUL byte"));
        }
        if let Some(h) = &self.http
            && h.port == 0
        {
            return Err(invalid("http.port", "must be 1-65535"));
        }
        if let Some(h) = &self.http
            && !(1..=MAX_CONCURRENCY).contains(&h.concurrency)
        {
            return Err(invalid("http.concurrency", "must be 1-16"));
        }
        if self.limits.memory_mib == 0 || self.limits.memory_mib > 4096 {
            return Err(invalid("limits.memory_mib", "must be 1-4096"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
mode: enforce
args: ["--verbose"]
env: {GREETING: hello}
preopens:
  - {dir: data, guest: /data, access: rw}
  - {dir: config, guest: /config, access: ro}
network:
  connect: ["10.0.2.2:8443"]
http: {port: 8080}
limits: {memory_mib: 32, fuel: 1000000}
"#;

    #[test]
    fn the_documented_example_parses() {
        let p = WorkloadPolicy::from_yaml(EXAMPLE).unwrap();
        assert_eq!(p.preopens[1].access, Access::Ro);
        assert_eq!(p.network.connect[0].port(), 8443);
        assert_eq!(p.limits.wall_ms, 0);
        // JSON round trip keeps it identical (the manifest carries it as JSON).
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(WorkloadPolicy::from_yaml(&json).unwrap(), p);
    }

    #[test]
    fn bad_policies_are_named() {
        for (yaml, needle) in [
            (
                "preopens: [{dir: ../x, guest: /x, access: ro}]",
                "preopens[0].dir",
            ),
            (
                "preopens: [{dir: /etc, guest: /x, access: ro}]",
                "preopens[0].dir",
            ),
            (
                "preopens: [{dir: a, guest: x, access: ro}]",
                "preopens[0].guest",
            ),
            (
                "preopens: [{dir: a, guest: /x, access: rwx}]",
                "does not parse",
            ),
            (
                "preopens: [{dir: a, guest: /x, access: ro}, {dir: b, guest: /x, access: ro}]",
                "same guest path",
            ),
            ("network: {connect: [\"example.com:80\"]}", "does not parse"),
            ("limits: {memory_mib: 0}", "limits.memory_mib"),
            ("http: {port: 0}", "http.port"),
            ("http: {port: 80, concurrency: 0}", "http.concurrency"),
            ("http: {port: 80, concurrency: 17}", "http.concurrency"),
            ("env: {\"A=B\": x}", "env.A=B"),
            ("capabilities: [everything]", "does not parse"),
        ] {
            let e = WorkloadPolicy::from_yaml(yaml).unwrap_err().to_string();
            assert!(e.contains(needle), "{yaml}: {e}");
        }
    }
}
