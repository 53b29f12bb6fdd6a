//! Verifying a `tpm` quote: the AK is trusted, the TPM signed exactly this TPMS_ATTEST,
//! the qualifying data is the verifier's nonce, and the PCR values in the evidence are
//! the ones the signed digest covers. Each failed check has its own error.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rsa::RsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey as _;
use rsa::signature::Verifier as _;
use sha2::{Digest as _, Sha256};

use super::quote::{ALG_SHA256, QuoteParseError, parse_quote, parse_signature};
use super::{PCR_COUNT, TpmEvidence};

/// The verified PCR values of a quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedQuote {
    /// sha256 PCR 0..23.
    pub pcrs: Vec<[u8; 32]>,
    /// The TPM's reset count when it quoted.
    pub reset_count: u32,
}

/// A check of a quote that failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TpmVerifyError {
    /// A field is not standard base64.
    #[error("evidence field {0} is not base64")]
    Base64(&'static str),
    /// The quote or signature structure is malformed.
    #[error("TPM quote malformed")]
    Parse(#[from] QuoteParseError),
    /// The AK is not an RSA SubjectPublicKeyInfo.
    #[error("ak_public is not an RSA public key (DER SubjectPublicKeyInfo)")]
    AkKey,
    /// The AK is not one the verifier trusts.
    #[error("attestation key not trusted: sha256 of ak_public is {0}")]
    UntrustedAk(String),
    /// The signature uses a hash other than sha256.
    #[error("quote signature hash {0:#x} is not sha256")]
    SignatureHash(u16),
    /// The signature does not verify.
    #[error("quote signature does not verify with the attestation key")]
    Signature,
    /// The quote is for another nonce.
    #[error("nonce mismatch: expected {expected}, got {actual}")]
    NonceMismatch {
        /// Hex of the verifier's nonce.
        expected: String,
        /// Hex of the quote's qualifying data.
        actual: String,
    },
    /// The quote does not cover exactly the 24 sha256 PCRs.
    #[error("quote selects {0}, not sha256 PCR 0-23")]
    Selection(String),
    /// The evidence lists the wrong number of PCR values, or a malformed one.
    #[error("evidence PCR list is malformed: {0}")]
    PcrList(String),
    /// The PCR values in the evidence are not the ones the TPM signed.
    #[error("PCR digest mismatch: quote signs {signed}, evidence PCRs hash to {computed}")]
    PcrDigestMismatch {
        /// Hex of the signed digest.
        signed: String,
        /// Hex of the digest of the evidence's PCR values.
        computed: String,
    },
}

fn b64(field: &'static str, s: &str) -> Result<Vec<u8>, TpmVerifyError> {
    STANDARD
        .decode(s)
        .map_err(|_| TpmVerifyError::Base64(field))
}

/// Verify `evidence` for `nonce`, trusting only the AKs in `trusted_aks` (DER
/// SubjectPublicKeyInfo).
pub fn verify_quote(
    evidence: &TpmEvidence,
    nonce: &[u8],
    trusted_aks: &[Vec<u8>],
) -> Result<VerifiedQuote, TpmVerifyError> {
    let ak_der = b64("ak_public", &evidence.ak_public)?;
    let message = b64("tpm_quote.message", &evidence.tpm_quote.message)?;
    let sig_bytes = b64("tpm_quote.signature", &evidence.tpm_quote.signature)?;
    let quote = parse_quote(&message)?;
    let sig = parse_signature(&sig_bytes)?;

    if !trusted_aks.contains(&ak_der) {
        return Err(TpmVerifyError::UntrustedAk(hex::encode(Sha256::digest(
            &ak_der,
        ))));
    }
    let key = RsaPublicKey::from_public_key_der(&ak_der).map_err(|_| TpmVerifyError::AkKey)?;
    if sig.hash != ALG_SHA256 {
        return Err(TpmVerifyError::SignatureHash(sig.hash));
    }
    let signature =
        Signature::try_from(sig.sig.as_slice()).map_err(|_| TpmVerifyError::Signature)?;
    VerifyingKey::<Sha256>::new(key)
        .verify(&message, &signature)
        .map_err(|_| TpmVerifyError::Signature)?;

    if quote.extra_data != nonce {
        return Err(TpmVerifyError::NonceMismatch {
            expected: hex::encode(nonce),
            actual: hex::encode(&quote.extra_data),
        });
    }
    let all: Vec<u32> = (0..PCR_COUNT as u32).collect();
    if quote.selection != [(ALG_SHA256, all)] {
        return Err(TpmVerifyError::Selection(format!("{:?}", quote.selection)));
    }
    if evidence.tpm_quote.pcrs.len() != PCR_COUNT {
        return Err(TpmVerifyError::PcrList(format!(
            "{} values",
            evidence.tpm_quote.pcrs.len()
        )));
    }
    let mut pcrs = Vec::with_capacity(PCR_COUNT);
    let mut h = Sha256::new();
    for (i, v) in evidence.tpm_quote.pcrs.iter().enumerate() {
        let bytes: [u8; 32] = hex::decode(v)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| TpmVerifyError::PcrList(format!("PCR {i} is not 32 bytes of hex")))?;
        h.update(bytes);
        pcrs.push(bytes);
    }
    let computed = h.finalize();
    if computed.as_slice() != quote.pcr_digest.as_slice() {
        return Err(TpmVerifyError::PcrDigestMismatch {
            signed: hex::encode(&quote.pcr_digest),
            computed: hex::encode(computed),
        });
    }
    Ok(VerifiedQuote {
        pcrs,
        reset_count: quote.reset_count,
    })
}
