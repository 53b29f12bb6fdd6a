//! Measurement registers and the runtime log that mirrors them.
//!
//! A [`RuntimeLog`] owns one register and the event log; [`RuntimeLog::measure`] extends
//! the register and appends the record as one operation (it takes `&mut self`), so the
//! log always replays to the register. When the log is persisted, every append replaces
//! the file atomically (write, fsync, rename), so a reader never sees half a log.

pub mod tdx;
#[cfg(feature = "tpm")]
mod tpm;

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digests;
use crate::eventlog::{EventContent, EventKind, EventLog, EventRecord};

pub use tdx::TdxRtmr;
#[cfg(feature = "tpm")]
pub use tpm::TpmPcr;

/// The PCR that PID1 and the agent extend: not used by firmware, the EFI stub or
/// systemd-stub on any of our platforms, and not resettable.
pub const RUNTIME_PCR: u32 = 15;

/// Which register a log mirrors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RegisterId {
    /// A TPM 2.0 PCR (sha256 and, where allocated, sha384 banks).
    TpmPcr {
        /// The PCR index.
        index: u32,
    },
    /// A TDX runtime measurement register (sha384 only).
    TdxRtmr {
        /// The RTMR index (3 for the runtime log).
        index: u32,
    },
    /// No register: the log is kept but nothing hardware-backed mirrors it. Only allowed
    /// when the configuration says the TPM is optional.
    None,
}

impl RegisterId {
    /// The register index records carry, if the register has one.
    pub fn index(&self) -> Option<u32> {
        match self {
            RegisterId::TpmPcr { index } | RegisterId::TdxRtmr { index } => Some(*index),
            RegisterId::None => None,
        }
    }
}

/// A failure to extend, read or persist.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The TPM could not be opened.
    #[error("open TPM through {tcti} failed")]
    TpmOpen {
        /// The TCTI configuration string.
        tcti: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A TPM command failed.
    #[error("TPM {command} failed")]
    TpmCommand {
        /// The command name.
        command: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The TPM has neither a sha256 nor a sha384 PCR bank allocated.
    #[error("TPM has no sha256 or sha384 PCR bank allocated")]
    NoUsableBank,
    /// The PCR index is not a TPM PCR.
    #[error("PCR index {0} is out of range")]
    BadIndex(u32),
    /// Writing the log file failed.
    #[error("write event log {path} failed")]
    Persist {
        /// The log file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// A register that runtime measurements are extended into.
pub trait MeasurementRegister: Send {
    /// Which register this is.
    fn id(&self) -> RegisterId;
    /// Extend the register with the digests of one measured object.
    fn extend(&mut self, digests: &Digests) -> Result<(), RegisterError>;
}

/// The register used when no TPM is present and the configuration allows that.
#[derive(Debug, Default)]
pub struct NoRegister;

impl MeasurementRegister for NoRegister {
    fn id(&self) -> RegisterId {
        RegisterId::None
    }

    fn extend(&mut self, _digests: &Digests) -> Result<(), RegisterError> {
        Ok(())
    }
}

/// A register and the log that mirrors it.
pub struct RuntimeLog {
    register: Box<dyn MeasurementRegister>,
    log: EventLog,
    path: Option<PathBuf>,
}

impl RuntimeLog {
    /// A new, empty log for `register`, written to `path` after every measurement when
    /// a path is given.
    pub fn new(register: Box<dyn MeasurementRegister>, path: Option<PathBuf>) -> Self {
        let log = EventLog::new(register.id());
        RuntimeLog {
            register,
            log,
            path,
        }
    }

    /// Take over the log another process (PID1) kept at `path`, for the same register:
    /// later measurements append to it. A log for another register is refused, so the
    /// log can never stop mirroring the register it claims.
    pub fn resume(
        register: Box<dyn MeasurementRegister>,
        path: PathBuf,
    ) -> Result<Self, RegisterError> {
        let err = |source| RegisterError::Persist {
            path: path.clone(),
            source,
        };
        let bytes = fs::read(&path).map_err(err)?;
        let log = EventLog::parse(&bytes).map_err(|e| err(std::io::Error::other(e)))?;
        if log.register != register.id() {
            return Err(err(std::io::Error::other(format!(
                "the log mirrors {:?}, not {:?}",
                log.register,
                register.id()
            ))));
        }
        Ok(RuntimeLog {
            register,
            log,
            path: Some(path),
        })
    }

    /// Measure `data`: extend the register, then append and persist the record.
    pub fn measure(
        &mut self,
        kind: EventKind,
        subject: &str,
        data: &[u8],
    ) -> Result<&EventRecord, RegisterError> {
        let digests = Digests::of(data);
        self.register.extend(&digests)?;
        let pcr = self.log.register.index().unwrap_or(RUNTIME_PCR);
        self.log.append(
            pcr,
            &digests,
            EventContent {
                kind,
                subject: subject.to_owned(),
            },
        );
        if let Some(path) = &self.path {
            persist(path, &self.log)?;
        }
        Ok(&self.log.records[self.log.records.len() - 1])
    }

    /// The log so far.
    pub fn log(&self) -> &EventLog {
        &self.log
    }
}

/// Replace `path` with the JSON of `log`, atomically.
fn persist(path: &Path, log: &EventLog) -> Result<(), RegisterError> {
    let err = |source| RegisterError::Persist {
        path: path.to_owned(),
        source,
    };
    let json = serde_json::to_vec_pretty(log).map_err(|e| err(std::io::Error::other(e)))?;
    let tmp = path.with_extension("json.tmp");
    let mut file = fs::File::create(&tmp).map_err(err)?;
    file.write_all(&json).map_err(err)?;
    file.sync_all().map_err(err)?;
    fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::HashAlg;

    /// A software register, to check that `RuntimeLog` extends what it logs.
    struct SoftPcr(Vec<u8>);

    impl MeasurementRegister for SoftPcr {
        fn id(&self) -> RegisterId {
            RegisterId::TpmPcr { index: 15 }
        }
        fn extend(&mut self, digests: &Digests) -> Result<(), RegisterError> {
            self.0 = HashAlg::Sha256.extend(&self.0, &digests.sha256);
            Ok(())
        }
    }

    #[test]
    fn persisted_log_replays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("eventlog.json");
        let mut rt = RuntimeLog::new(Box::new(SoftPcr(vec![0; 32])), Some(path.clone()));
        rt.measure(EventKind::InitBinary, "/init", b"one").unwrap();
        rt.measure(
            EventKind::KernelParams,
            "cvm.tpm=required",
            b"cvm.tpm=required",
        )
        .unwrap();
        let on_disk = EventLog::parse(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(&on_disk, rt.log());
        let mut expect = vec![0u8; 32];
        for d in [b"one".as_slice(), b"cvm.tpm=required".as_slice()] {
            expect = HashAlg::Sha256.extend(&expect, &HashAlg::Sha256.hash(d));
        }
        on_disk.verify_replay(HashAlg::Sha256, &expect).unwrap();
        assert!(!path.with_extension("json.tmp").exists());

        // The agent resumes PID1's log and appends; the whole log still replays.
        let pcr = SoftPcr(expect.clone());
        let mut resumed = RuntimeLog::resume(Box::new(pcr), path.clone()).unwrap();
        resumed
            .measure(
                EventKind::WorkloadManifest,
                "hello 1.0 owner=ab",
                b"manifest",
            )
            .unwrap();
        let on_disk = EventLog::parse(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(on_disk.records.len(), 3);
        let expect = HashAlg::Sha256.extend(&expect, &HashAlg::Sha256.hash(b"manifest"));
        on_disk.verify_replay(HashAlg::Sha256, &expect).unwrap();
        assert_eq!(on_disk.all(EventKind::WorkloadManifest).count(), 1);

        // A log for another register is not taken over.
        let e = RuntimeLog::resume(Box::new(NoRegister), path)
            .err()
            .unwrap();
        assert!(format!("{:?}", e).contains("mirrors"), "{e:?}");
    }
}
