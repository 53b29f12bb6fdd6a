//! The runtime event log, taken over from PID1: the agent appends what it measures
//! (each workload's manifest before its key is fetched) to the same log and register.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

use cvm_attest::register::{NoRegister, RegisterId, RuntimeLog, TdxRtmr, TpmPcr};
use cvm_attest::{EventKind, EventLog, MeasurementRegister};

/// The log and its register, one measurement at a time.
///
/// Evidence is a quote of the register plus the log, made at two moments; a measurement
/// between them makes the log and the register disagree and the evidence fail. So
/// measuring holds `still` for writing and making evidence holds it for reading
/// ([`Measurements::hold_still`]): evidence never straddles a measurement.
pub struct Measurements {
    still: RwLock<()>,
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
            still: RwLock::new(()),
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
        RuntimeLog::resume(register, self.path.clone()).map_err(|e| crate::error_chain(&e))
    }

    /// No measurement happens while the returned guard lives: hold it from reading the
    /// log until the evidence over the register is made.
    pub fn hold_still(&self) -> RwLockReadGuard<'_, ()> {
        // The guarded value is `()`: a poisoned lock protects nothing that could be
        // half-written.
        self.still
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The log as it stands (call under [`Measurements::hold_still`] to use it for
    /// evidence).
    pub fn current(&self) -> Result<EventLog, String> {
        let mut guard = self.log.lock().map_err(|_| "runtime log lock poisoned")?;
        if guard.is_none() {
            *guard = Some(self.open()?);
        }
        guard
            .as_ref()
            .map(|l| l.log().clone())
            .ok_or_else(|| "runtime log unavailable".into())
    }

    /// Extend the register with `data` and append the record; returns the log after it.
    pub fn measure(&self, kind: EventKind, subject: &str, data: &[u8]) -> Result<EventLog, String> {
        let _still = self
            .still
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut guard = self.log.lock().map_err(|_| "runtime log lock poisoned")?;
        if guard.is_none() {
            *guard = Some(self.open()?);
        }
        let Some(log) = guard.as_mut() else {
            return Err("runtime log unavailable".into());
        };
        log.measure(kind, subject, data)
            .map_err(|e| crate::error_chain(&e))?;
        Ok(log.log().clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn no_measurement_while_evidence_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eventlog.json");
        let empty = EventLog::new(RegisterId::None);
        std::fs::write(&path, serde_json::to_vec(&empty).unwrap()).unwrap();
        let m = Arc::new(Measurements::new(path, None));
        let before = m.current().unwrap();

        let still = m.hold_still();
        let (tx, rx) = mpsc::channel();
        let measurer = m.clone();
        let t = std::thread::spawn(move || {
            let log = measurer.measure(EventKind::WorkloadOutcome, "w failed: x", b"w failed: x");
            tx.send(log.map(|l| l.records.len())).unwrap();
        });
        // The measurement waits while evidence is being made...
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err());
        assert_eq!(m.current().unwrap(), before);
        // ...and lands once it is done.
        drop(still);
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(1));
        t.join().unwrap();
        assert_eq!(m.current().unwrap().records.len(), 1);
    }
}
