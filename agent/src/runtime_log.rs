//! The runtime event log, taken over from PID1: the agent appends what it measures
//! (each workload's manifest before its key is fetched) to the same log and register.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use cvm_attest::register::{NoRegister, RegisterId, RuntimeLog, TdxRtmr, TpmPcr};
use cvm_attest::{EventKind, EventLog, MeasurementRegister};

/// The log and its register, one measurement at a time.
pub struct Measurements {
    log: Mutex<Option<RuntimeLog>>,
    path: PathBuf,
    tcti: Option<String>,
}

impl std::fmt::Debug for Measurements {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Measurements")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Measurements {
    /// The log at `path`, opened on first use (so an agent whose log is missing still
    /// serves everything else, and says why it cannot measure).
    pub fn new(path: PathBuf, tcti: Option<String>) -> Self {
        Self {
            log: Mutex::new(None),
            path,
            tcti,
        }
    }

    fn open(&self) -> Result<RuntimeLog, String> {
        let bytes = std::fs::read(&self.path)
            .map_err(|e| format!("read the runtime log {}: {e}", self.path.display()))?;
        let log = EventLog::parse(&bytes).map_err(|e| format!("runtime log: {e}"))?;
        let register: Box<dyn MeasurementRegister> = match log.register {
            RegisterId::TpmPcr { index } => {
                let tcti = self
                    .tcti
                    .as_deref()
                    .ok_or("the runtime log is on a TPM PCR but the agent has no TPM")?;
                Box::new(TpmPcr::open(tcti, index).map_err(|e| format!("{e}"))?)
            }
            RegisterId::TdxRtmr { index } => Box::new(
                TdxRtmr::open(Path::new("/sys"), index)
                    .ok_or(format!("RTMR{index} is not exposed by this kernel"))?,
            ),
            RegisterId::None => Box::new(NoRegister),
        };
        RuntimeLog::resume(register, self.path.clone()).map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            format!("{e}{cause}")
        })
    }

    /// Extend the register with `data` and append the record; returns the log after it.
    pub fn measure(&self, kind: EventKind, subject: &str, data: &[u8]) -> Result<EventLog, String> {
        let mut guard = self.log.lock().map_err(|_| "runtime log lock poisoned")?;
        if guard.is_none() {
            *guard = Some(self.open()?);
        }
        let Some(log) = guard.as_mut() else {
            return Err("runtime log unavailable".into());
        };
        log.measure(kind, subject, data).map_err(|e| {
            let cause = std::error::Error::source(&e)
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            format!("{e}{cause}")
        })?;
        Ok(log.log().clone())
    }
}
