//! The audit log: one JSON line for every release and every refusal, with its reason,
//! appended to `audit.log` in the broker's folder and echoed to the `audit` tracing
//! target. Lines never carry resource contents or keys: only names, TEEs, sessions and
//! reasons.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

/// One audited decision.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent<'a> {
    /// Seconds since the epoch.
    pub time: u64,
    /// `auth`, `attest`, `resource`, or an admin operation.
    pub endpoint: &'a str,
    /// `release`, `attested`, `refuse`, `admin`.
    pub outcome: &'a str,
    /// The peer address.
    pub peer: &'a str,
    /// The TEE, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tee: Option<&'a str>,
    /// The resource or document, when one is named.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a str>,
    /// Why (the refusal's detail, or the reference matched).
    pub reason: &'a str,
}

/// The append-only audit file.
#[derive(Debug)]
pub struct Audit {
    file: Mutex<File>,
}

impl Audit {
    /// Open (creating) `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }

    /// Record `event`. A failed write is reported on the log, never hidden.
    pub fn record(&self, event: &AuditEvent<'_>) {
        let line = match serde_json::to_string(event) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(target: "audit", error = %e, "audit event does not serialise");
                return;
            }
        };
        if event.outcome == "refuse" {
            tracing::warn!(target: "audit", "{line}");
        } else {
            tracing::info!(target: "audit", "{line}");
        }
        let mut f = self
            .file
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // One write per line: O_APPEND keeps concurrent lines whole.
        if let Err(e) = f.write_all(format!("{line}\n").as_bytes()) {
            tracing::error!(target: "audit", error = %e, "audit log write failed");
        }
    }
}
