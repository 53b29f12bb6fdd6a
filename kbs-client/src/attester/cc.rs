//! `snp` and `tdx` evidence from the confidential-computing hardware itself (features
//! `snp` and `tdx`): the runtime-data digest, zero-padded to 64 bytes, is the report
//! data of an SEV-SNP attestation report or a TD quote.

use kbs_types::Tee;
use serde_json::Value;

use super::Attester;
use crate::report_data::report_data_64;

/// An SEV-SNP guest (configfs-tsm, else /dev/sev-guest), reporting from VMPL 0.
#[cfg(feature = "snp")]
#[derive(Debug, Default)]
pub struct SnpAttester;

#[cfg(feature = "snp")]
impl Attester for SnpAttester {
    fn tee(&self) -> Tee {
        Tee::Snp
    }

    fn evidence(&mut self, report_data: &[u8; 48], _: &Value) -> Result<Value, String> {
        let ev = cvm_attest::snp::attester::report(&report_data_64(report_data), Some(0))
            .map_err(|e| e.to_string())?;
        serde_json::to_value(ev).map_err(|e| e.to_string())
    }
}

/// A TDX guest (configfs-tsm quote and the CC event log).
#[cfg(feature = "tdx")]
#[derive(Debug, Default)]
pub struct TdxAttester;

#[cfg(feature = "tdx")]
impl Attester for TdxAttester {
    fn tee(&self) -> Tee {
        Tee::Tdx
    }

    fn evidence(&mut self, report_data: &[u8; 48], _: &Value) -> Result<Value, String> {
        let ev = cvm_attest::tdx::attester::quote(&report_data_64(report_data))
            .map_err(|e| e.to_string())?;
        serde_json::to_value(ev).map_err(|e| e.to_string())
    }
}
