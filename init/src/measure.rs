//! The runtime measurements PID1 takes before it starts anything.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

use cvm_attest::register::tdx::RUNTIME_RTMR;
use cvm_attest::register::{NoRegister, RUNTIME_PCR, TdxRtmr, TpmPcr};
use cvm_attest::{EventKind, MeasurementRegister, RegisterError, RuntimeLog};
use tracing::{info, warn};

use crate::config::{Config, TPM_DEVICE, TpmMode};

/// A measurement that could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// A file to measure could not be read.
    #[error("measure {what} {path} failed")]
    Read {
        /// What the file is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration requires a TPM and none appeared.
    #[error(
        "TPM required but {TPM_DEVICE} did not appear within {0:?} (set cvm.tpm=optional to boot without one)"
    )]
    NoTpm(Duration),
    /// The register could not be opened or extended, or the log not written.
    #[error(transparent)]
    Register(#[from] RegisterError),
}

/// Open the register the configuration asks for.
pub fn open_register(config: &Config) -> Result<Box<dyn MeasurementRegister>, MeasureError> {
    // In a TDX guest whose kernel exposes RTMR3 (Linux ≥ 6.16), the runtime log goes to
    // the TEE's own register: it is in the TD quote, with no vTPM to trust.
    if let Some(rtmr) = TdxRtmr::open(Path::new("/sys"), RUNTIME_RTMR) {
        info!("runtime measurements go to TDX RTMR3");
        return Ok(Box::new(rtmr));
    }
    if config.tpm == TpmMode::Off {
        return Ok(Box::new(NoRegister));
    }
    if !wait_for(Path::new(TPM_DEVICE), config.tpm_wait) {
        if config.tpm == TpmMode::Required {
            return Err(MeasureError::NoTpm(config.tpm_wait));
        }
        warn!("no TPM: the event log is not backed by a register");
        return Ok(Box::new(NoRegister));
    }
    // A TPM that is present but fails to open is an error in every mode: never degrade
    // silently to an unbacked log.
    Ok(Box::new(TpmPcr::open(
        &format!("device:{TPM_DEVICE}"),
        RUNTIME_PCR,
    )?))
}

/// The TCTI of the guest TPM, when the configuration uses one and it is present.
pub fn tpm_tcti(config: &Config) -> Option<String> {
    (config.tpm != TpmMode::Off && Path::new(TPM_DEVICE).exists())
        .then(|| format!("device:{TPM_DEVICE}"))
}

/// Built-in drivers usually probe before PID1 runs, but probing can be asynchronous.
fn wait_for(path: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    loop {
        if path.exists() {
            return true;
        }
        if start.elapsed() >= limit {
            return false;
        }
        sleep(Duration::from_millis(20));
    }
}

/// Measure PID1 itself, its configuration, the `cvm.*` parameters and the agent.
pub fn measure_boot(
    log: &mut RuntimeLog,
    config: &Config,
    config_path: &str,
    config_bytes: &[u8],
) -> Result<(), MeasureError> {
    let init = read("PID1 binary", Path::new("/proc/self/exe"))?;
    record(log.measure(EventKind::InitBinary, "/init", &init)?);
    record(log.measure(EventKind::InitConfig, config_path, config_bytes)?);
    let params = config.kernel_params_text();
    record(log.measure(EventKind::KernelParams, &params, params.as_bytes())?);
    let agent = read("agent binary", &config.agent_path)?;
    let subject = config.agent_path.to_string_lossy();
    record(log.measure(EventKind::AgentBinary, &subject, &agent)?);
    Ok(())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, MeasureError> {
    fs::read(path).map_err(|source| MeasureError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn record(r: &cvm_attest::EventRecord) {
    let sha256 = r.digests.first().map(|d| d.digest.as_str()).unwrap_or("");
    info!(recnum = r.recnum, kind = ?r.content.kind, subject = %r.content.subject, sha256, "measured");
}
