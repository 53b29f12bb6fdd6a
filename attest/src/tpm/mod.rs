//! TPM 2.0 quotes: the evidence format (Trustee's `tpm` JSON), its parsers, quote
//! production in the guest (feature `tpm`) and verification (feature `verifier`).

#[cfg(feature = "tpm")]
pub mod attester;
pub mod quote;
#[cfg(feature = "verifier")]
pub mod verifier;

use serde::{Deserialize, Serialize};

/// Number of PCRs in a PC-client TPM bank.
pub const PCR_COUNT: usize = 24;

/// Evidence of the `tpm` TEE, as Trustee's TPM verifier reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmEvidence {
    /// The attestation key: standard base64 of its DER SubjectPublicKeyInfo.
    pub ak_public: String,
    /// The quote and the PCR values it covers.
    pub tpm_quote: TpmQuote,
    /// The endorsement key certificate (standard base64 of DER), when the TPM has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_cert: Option<String>,
}

/// A quote over the sha256 bank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmQuote {
    /// Standard base64 of the marshalled TPMS_ATTEST the TPM signed.
    pub message: String,
    /// Standard base64 of the marshalled TPMT_SIGNATURE.
    pub signature: String,
    /// The 24 sha256 PCR values, lower-case hex, index order.
    pub pcrs: Vec<String>,
}
