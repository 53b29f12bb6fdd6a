//! Reading the runtime event log and the register it mirrors (no HTTP here).

use std::fs;
use std::path::{Path, PathBuf};

use cvm_attest::{EventLog, EventLogError, HashAlg, RegisterId};
use cvm_proto::agent::{EventLogResponse, RegisterValue};

/// The log or register could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MeasurementsError {
    /// The log file is missing or unreadable.
    #[error("read event log {path} failed")]
    ReadLog {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The log file does not parse.
    #[error("event log {path} is malformed")]
    ParseLog {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: EventLogError,
    },
    /// A PCR file exists but cannot be read.
    #[error("read {path} failed")]
    ReadRegister {
        /// The sysfs file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The log and the current register values (read from sysfs, not from the log).
pub fn read(eventlog: &Path, sysfs: &Path) -> Result<EventLogResponse, MeasurementsError> {
    let bytes = fs::read(eventlog).map_err(|source| MeasurementsError::ReadLog {
        path: eventlog.to_owned(),
        source,
    })?;
    let log = EventLog::parse(&bytes).map_err(|source| MeasurementsError::ParseLog {
        path: eventlog.to_owned(),
        source,
    })?;
    let register_values = match log.register {
        RegisterId::TpmPcr { index } => read_pcrs(sysfs, index)?,
        RegisterId::TdxRtmr { index } => read_rtmr(sysfs, index)?,
        RegisterId::None => Vec::new(),
    };
    Ok(EventLogResponse {
        log,
        register_values,
    })
}

/// `/sys/class/tpm/tpm0/pcr-<bank>/<index>` holds the PCR as hex; a bank the TPM does
/// not have allocated has no directory.
fn read_pcrs(sysfs: &Path, index: u32) -> Result<Vec<RegisterValue>, MeasurementsError> {
    let mut values = Vec::new();
    for alg in [HashAlg::Sha256, HashAlg::Sha384] {
        let path = sysfs.join(format!("class/tpm/tpm0/pcr-{}/{index}", alg.name()));
        if !path.exists() {
            continue;
        }
        let text = fs::read_to_string(&path)
            .map_err(|source| MeasurementsError::ReadRegister { path, source })?;
        values.push(RegisterValue {
            hash_alg: alg,
            value: text.trim().to_ascii_lowercase(),
        });
    }
    Ok(values)
}

/// An RTMR's value: its sysfs file holds the 48 raw bytes.
fn read_rtmr(sysfs: &Path, index: u32) -> Result<Vec<RegisterValue>, MeasurementsError> {
    let path = cvm_attest::register::tdx::rtmr_file(sysfs, index);
    let bytes =
        fs::read(&path).map_err(|source| MeasurementsError::ReadRegister { path, source })?;
    Ok(vec![RegisterValue {
        hash_alg: HashAlg::Sha384,
        value: hex::encode(bytes),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use cvm_attest::{Digests, EventContent, EventKind};

    #[test]
    fn reads_log_and_sysfs_pcrs() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EventLog::new(RegisterId::TpmPcr { index: 15 });
        log.append(
            15,
            &Digests::of(b"x"),
            EventContent {
                kind: EventKind::InitBinary,
                subject: "/init".into(),
            },
        );
        let path = dir.path().join("log.json");
        fs::write(&path, serde_json::to_vec(&log).unwrap()).unwrap();
        let pcr = dir.path().join("class/tpm/tpm0/pcr-sha256");
        fs::create_dir_all(&pcr).unwrap();
        fs::write(pcr.join("15"), "ABCDEF\n").unwrap();
        let r = read(&path, dir.path()).unwrap();
        assert_eq!(r.log, log);
        assert_eq!(
            r.register_values,
            vec![RegisterValue {
                hash_alg: HashAlg::Sha256,
                value: "abcdef".into()
            }]
        );
    }

    #[test]
    fn missing_or_corrupt_log_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.json");
        assert!(matches!(
            read(&path, dir.path()),
            Err(MeasurementsError::ReadLog { .. })
        ));
        fs::write(&path, b"{not json").unwrap();
        assert!(matches!(
            read(&path, dir.path()),
            Err(MeasurementsError::ParseLog { .. })
        ));
    }
}
