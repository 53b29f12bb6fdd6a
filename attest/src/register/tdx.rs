//! TDX RTMR3 through Linux's TSM measurement files (Linux ≥ 6.16):
//! `/sys/class/misc/tdx_guest/measurements/rtmr3:sha384`. Writing a 48-byte digest
//! extends the register (TDG.MR.RTMR.EXTEND); reading returns its 48-byte value. RTMR3
//! is the one RTMR the firmware leaves to the OS, so it carries the runtime log.

use std::fs;
use std::path::{Path, PathBuf};

use super::{MeasurementRegister, RegisterError, RegisterId};
use crate::digest::Digests;

/// The RTMR the runtime log extends.
pub const RUNTIME_RTMR: u32 = 3;

/// The sysfs file of RTMR `index` under `sysfs` (normally `/sys`).
pub fn rtmr_file(sysfs: &Path, index: u32) -> PathBuf {
    sysfs.join(format!(
        "class/misc/tdx_guest/measurements/rtmr{index}:sha384"
    ))
}

/// An RTMR extended through its sysfs file.
#[derive(Debug)]
pub struct TdxRtmr {
    index: u32,
    file: PathBuf,
}

impl TdxRtmr {
    /// The RTMR `index`, when this kernel exposes it (a TDX guest, Linux ≥ 6.16).
    pub fn open(sysfs: &Path, index: u32) -> Option<Self> {
        let file = rtmr_file(sysfs, index);
        file.exists().then_some(Self { index, file })
    }

    /// The current value.
    pub fn read(&self) -> Result<Vec<u8>, RegisterError> {
        fs::read(&self.file).map_err(|e| RegisterError::TpmCommand {
            command: "read RTMR",
            source: Box::new(e),
        })
    }
}

impl MeasurementRegister for TdxRtmr {
    fn id(&self) -> RegisterId {
        RegisterId::TdxRtmr { index: self.index }
    }

    fn extend(&mut self, digests: &Digests) -> Result<(), RegisterError> {
        fs::write(&self.file, digests.sha384).map_err(|e| RegisterError::TpmCommand {
            command: "extend RTMR",
            source: Box::new(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HashAlg;
    use crate::eventlog::EventKind;
    use crate::register::RuntimeLog;

    /// The register writes exactly the record's sha384 digest, and the log it mirrors
    /// replays in the sha384 bank (the file here is a plain file standing in for the
    /// sysfs attribute, which this kernel does not have).
    #[test]
    fn extends_write_the_sha384_digest() {
        let dir = tempfile::tempdir().unwrap();
        let file = rtmr_file(dir.path(), 3);
        assert!(TdxRtmr::open(dir.path(), 3).is_none());
        fs::create_dir_all(file.parent().unwrap()).unwrap();
        fs::write(&file, [0u8; 48]).unwrap();
        let rtmr = TdxRtmr::open(dir.path(), 3).unwrap();
        assert_eq!(rtmr.id(), RegisterId::TdxRtmr { index: 3 });
        let mut log = RuntimeLog::new(Box::new(rtmr), None);
        log.measure(EventKind::InitBinary, "/init", b"pid1")
            .unwrap();
        let written = fs::read(&file).unwrap();
        assert_eq!(written, Digests::of(b"pid1").sha384);
        assert_eq!(log.log().register, RegisterId::TdxRtmr { index: 3 });
        assert!(log.log().replay(HashAlg::Sha384).is_ok());
    }
}
