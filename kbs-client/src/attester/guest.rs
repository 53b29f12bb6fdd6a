//! The attester of the guest this runs in: SEV-SNP or TDX hardware when present, else
//! the TPM (the `qemu` platform's vTPM). PID1 and the agent pick it the same way.

use std::path::Path;

use cvm_attest::EventLog;

use super::Attester;

/// Where the kernel publishes the firmware's TCG event log.
pub const FIRMWARE_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";

/// The platform whose evidence this guest sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// SEV-SNP (report data carries the runtime-data digest).
    Snp,
    /// TDX.
    Tdx,
    /// A TPM (the `qemu` platform's vTPM).
    Tpm,
}

/// The platform this guest runs on: SNP or TDX hardware if present, else the TPM.
pub fn detect() -> Platform {
    if Path::new(cvm_attest::snp::attester::SEV_GUEST_DEVICE).exists() {
        Platform::Snp
    } else if Path::new("/dev/tdx_guest").exists() {
        Platform::Tdx
    } else {
        Platform::Tpm
    }
}

/// The attester for `platform`; a TPM attester sends the firmware log (read here) and
/// `runtime_log` so the broker can replay both.
pub fn attester(
    platform: Platform,
    tcti: Option<&str>,
    runtime_log: &EventLog,
) -> Result<Box<dyn Attester + Send>, String> {
    match platform {
        Platform::Snp => Ok(Box::new(super::cc::SnpAttester)),
        Platform::Tdx => Ok(Box::new(super::cc::TdxAttester)),
        Platform::Tpm => {
            let tcti = tcti.ok_or("no SEV-SNP, TDX or TPM device to attest with")?;
            let firmware = std::fs::read(FIRMWARE_LOG).ok();
            let a = super::tpm::TpmRcarAttester::new(tcti, firmware, Some(runtime_log.clone()))?;
            Ok(Box::new(a))
        }
    }
}
