//! The enforcement baseline: before the agent starts (and so before any workload can
//! exist), PID1 runs the agent binary's `baseline` step, which loads and pins the BPF
//! LSM programs, and measures what it installed. Any failure is fatal: the appliance
//! never runs without its baseline.

use std::process::{Command, Stdio};

use cvm_attest::{EventKind, RuntimeLog};
use serde::Deserialize;
use tracing::info;

use crate::config::Config;

/// The baseline could not be installed or measured.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// The step could not be run.
    #[error("enforcement baseline: run {path} baseline: {source}")]
    Run {
        /// The agent binary.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The step failed (its own message names the layer).
    #[error("enforcement baseline failed: {0}")]
    Failed(String),
    /// Its report is not what the step prints.
    #[error("enforcement baseline: unreadable report: {0}")]
    Report(String),
    /// Measuring it failed.
    #[error("enforcement baseline: measure: {0}")]
    Measure(#[from] cvm_attest::RegisterError),
}

#[derive(Deserialize)]
struct Report {
    sha256: String,
    hooks: Vec<String>,
    document: String,
}

/// Install the baseline and measure its report.
pub fn install(config: &Config, log: &mut RuntimeLog) -> Result<(), BaselineError> {
    let out = Command::new(&config.agent_path)
        .arg("baseline")
        .env_clear()
        .stdin(Stdio::null())
        .output()
        .map_err(|source| BaselineError::Run {
            path: config.agent_path.display().to_string(),
            source,
        })?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        return Err(BaselineError::Failed(msg.trim().to_owned()));
    }
    let report: Report =
        serde_json::from_slice(&out.stdout).map_err(|e| BaselineError::Report(e.to_string()))?;
    let subject = format!("sha256:{} hooks={}", report.sha256, report.hooks.join(","));
    // The document itself, so the record's digest is the baseline's sha256.
    let r = log.measure(
        EventKind::EnforcementBaseline,
        &subject,
        report.document.as_bytes(),
    )?;
    info!(recnum = r.recnum, baseline = %report.sha256, hooks = report.hooks.len(), "enforcement baseline installed");
    Ok(())
}
