//! TPM 2.0 quotes: the evidence format (Trustee's `tpm` JSON), its parsers, quote
//! production in the guest (feature `tpm`) and verification (feature `verifier`).

#[cfg(feature = "tpm")]
pub mod attester;
#[cfg(feature = "verifier")]
pub mod credential;
#[cfg(feature = "verifier")]
pub mod ekcert;
pub mod public;
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

/// What a verifier needs to bind an attestation key to its TPM's endorsement key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AkIdentity {
    /// The EK certificate (standard base64 of DER), when the TPM has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_cert: Option<String>,
    /// The EK: standard base64 of its DER SubjectPublicKeyInfo.
    pub ek_public: String,
    /// The AK: standard base64 of its DER SubjectPublicKeyInfo (as in the evidence).
    pub ak_public: String,
    /// The AK's marshalled TPMT_PUBLIC, standard base64: its hash is the AK's name.
    pub ak_tpm_public: String,
}

/// A credential the verifier sealed to the EK for the AK's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationRequest {
    /// TPM2B_ID_OBJECT contents, standard base64.
    pub credential_blob: String,
    /// TPM2B_ENCRYPTED_SECRET contents, standard base64.
    pub encrypted_secret: String,
}

/// The secret the TPM recovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivationResponse {
    /// The secret, standard base64.
    pub secret: String,
}

/// `tpm` evidence as a cvm guest sends it over the KBS protocol: Trustee's fields, plus
/// optional ones a Trustee verifier ignores: the answer to the broker's credential
/// challenge (which binds the fresh AK to an endorsed TPM without prior enrolment) and
/// the two event logs, so a refusal can name the event that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcarTpmEvidence {
    /// Trustee's `tpm` evidence.
    #[serde(flatten)]
    pub base: TpmEvidence,
    /// The secret the TPM recovered from the broker's challenge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ak_activation: Option<ActivationResponse>,
    /// The firmware's TCG PC Client event log, standard base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_log: Option<String>,
    /// The runtime event log, which replays to the runtime PCR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_log: Option<crate::EventLog>,
}
