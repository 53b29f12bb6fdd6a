//! AMD SEV-SNP evidence: the attestation report (1184 bytes, signed by the chip's VCEK
//! or a VLEK) and the certificates that chain it to AMD's root, in Trustee's `snp`
//! evidence format (the `sev` crate's serde form of the report). Verification (feature
//! `verifier`) is in [`verifier`].

#[cfg(feature = "snp")]
pub mod attester;
#[cfg(feature = "verifier")]
pub mod verifier;

use serde::{Deserialize, Serialize};
pub use sev::firmware::guest::AttestationReport;
pub use sev::firmware::host::{CertTableEntry, CertType};

/// Size of a marshalled attestation report.
pub const REPORT_SIZE: usize = 1184;

/// Evidence of the `snp` TEE, as Trustee's SNP verifier reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpEvidence {
    /// The report.
    pub attestation_report: AttestationReport,
    /// Certificates from the host (VCEK or VLEK, ASK or ASVK, ARK), when it supplied them.
    pub cert_chain: Option<Vec<CertTableEntry>>,
}

/// A report that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnpParseError {
    /// Wrong size.
    #[error("SNP report is {0} bytes, not {REPORT_SIZE}")]
    Size(usize),
    /// The `sev` crate refused it (unknown version, reserved bits, …).
    #[error("SNP report malformed: {0}")]
    Malformed(String),
}

/// Parse a marshalled report (untrusted bytes: never panics).
pub fn parse_report(bytes: &[u8]) -> Result<AttestationReport, SnpParseError> {
    use sev::parser::ByteParser as _;
    if bytes.len() != REPORT_SIZE {
        return Err(SnpParseError::Size(bytes.len()));
    }
    // The sev crate's decoder indexes fixed offsets of a checked-size buffer; guard
    // against a panic anyway, since these bytes come from outside.
    std::panic::catch_unwind(|| AttestationReport::from_bytes(bytes))
        .map_err(|_| SnpParseError::Malformed("decoder panicked".into()))?
        .map_err(|e| SnpParseError::Malformed(e.to_string()))
}
