//! A TD quote in the guest, over 64 bytes of report data, through configfs-tsm (the
//! `tdx_guest` provider asks the quoting enclave on the host), with the CC event log
//! the firmware published in the ACPI CCEL table.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::TdxEvidence;
use crate::tsm::{self, TsmError};

/// Where Linux exposes the ACPI CCEL table's data (the firmware's RTMR event log).
pub const CCEL_DATA: &str = "/sys/firmware/acpi/tables/data/CCEL";
/// Largest event log carried (OVMF's is tens of KiB).
const MAX_CCEL: u64 = 4 << 20;

/// A quote could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum TdxAttesterError {
    /// No `tdx_guest` provider.
    #[error("not a TDX guest: {0}")]
    NotTdx(TsmError),
    /// configfs-tsm failed otherwise.
    #[error(transparent)]
    Tsm(TsmError),
    /// The CCEL table exists but cannot be read.
    #[error("read the CC event log {CCEL_DATA} failed: {0}")]
    Ccel(String),
}

/// Request a quote over `report_data`.
pub fn quote(report_data: &[u8; 64]) -> Result<TdxEvidence, TdxAttesterError> {
    let r = tsm::report(
        Path::new(tsm::TSM_REPORT_DIR),
        "tdx_guest",
        report_data,
        None,
    )
    .map_err(|e| match e {
        TsmError::Unavailable(_) | TsmError::NoProvider | TsmError::Provider { .. } => {
            TdxAttesterError::NotTdx(e)
        }
        e => TdxAttesterError::Tsm(e),
    })?;
    let cc_eventlog = match std::fs::File::open(CCEL_DATA) {
        Ok(f) => {
            use std::io::Read as _;
            let mut bytes = Vec::new();
            f.take(MAX_CCEL)
                .read_to_end(&mut bytes)
                .map_err(|e| TdxAttesterError::Ccel(e.to_string()))?;
            Some(STANDARD.encode(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(TdxAttesterError::Ccel(e.to_string())),
    };
    Ok(TdxEvidence {
        cc_eventlog,
        quote: STANDARD.encode(r.outblob),
    })
}
