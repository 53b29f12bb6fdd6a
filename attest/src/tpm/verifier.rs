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

use std::time::SystemTime;

use rand_core::{OsRng, RngCore as _};
use rsa::traits::PublicKeyParts as _;

use super::credential::{CredentialError, make_credential};
use super::ekcert::{EkCaBundle, EkCertError};
use super::public::parse_public;
use super::quote::{ALG_SHA256, QuoteParseError, parse_quote, parse_signature};
use super::{ActivationRequest, ActivationResponse, AkIdentity, PCR_COUNT, TpmEvidence};

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
    /// The AK's public area is not that of an attestation key.
    #[error("AK is not a restricted signing key fixed to its TPM (objectAttributes {0:#010x})")]
    AkAttributes(u32),
    /// `ak_public` and `ak_tpm_public` are different keys.
    #[error("ak_public and ak_tpm_public are different keys")]
    AkMismatch,
    /// The TPM has no EK certificate but the verifier trusts EKs only through one.
    #[error("the TPM sent no EK certificate, and EKs are trusted only through their certificate")]
    NoEkCert,
    /// The EK certificate is not trusted.
    #[error("EK certificate rejected")]
    EkCert(#[from] EkCertError),
    /// The EK is neither certified nor pinned.
    #[error("endorsement key not trusted: sha256 of ek_public is {0}")]
    UntrustedEk(String),
    /// The EK certificate's key is not the EK the TPM reports.
    #[error("EK certificate key differs from ek_public")]
    EkMismatch,
    /// Sealing the challenge failed.
    #[error("make credential failed")]
    Credential(#[from] CredentialError),
    /// The guest did not recover the sealed secret: the AK is not in the certified TPM.
    #[error(
        "credential activation failed: the TPM did not recover the secret sealed to its EK for this AK"
    )]
    ActivationFailed,
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

/// How the verifier trusts endorsement keys.
#[derive(Debug, Clone)]
pub enum EkTrust {
    /// The EK certificate must be signed by a CA in this bundle.
    CaBundle(EkCaBundle),
    /// These EKs (DER SubjectPublicKeyInfo), for TPMs without a certificate.
    Pinned(Vec<Vec<u8>>),
}

/// An attestation key bound to a trusted EK by credential activation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedAk {
    /// DER SubjectPublicKeyInfo, as in `tpm` evidence.
    pub der: Vec<u8>,
    /// TPM name (nameAlg ‖ sha256 of TPMT_PUBLIC).
    pub name: Vec<u8>,
}

/// The first half of AK binding: the sealed credential to send to the guest, and what
/// the verifier keeps to check the answer.
#[derive(Debug)]
pub struct AkChallenge {
    /// Send this to the guest.
    pub request: ActivationRequest,
    secret: Vec<u8>,
    ak: TrustedAk,
}

/// Check an AK identity and seal a fresh secret to its EK for its name.
pub fn challenge_ak(
    identity: &AkIdentity,
    trust: &EkTrust,
    now: SystemTime,
) -> Result<AkChallenge, TpmVerifyError> {
    let ak_der = b64("ak_public", &identity.ak_public)?;
    let ak_tpm = parse_public(&b64("ak_tpm_public", &identity.ak_tpm_public)?)?;
    if !ak_tpm.is_attestation_key() {
        return Err(TpmVerifyError::AkAttributes(ak_tpm.attributes));
    }
    let ak_key = RsaPublicKey::from_public_key_der(&ak_der).map_err(|_| TpmVerifyError::AkKey)?;
    if ak_key.n().to_bytes_be() != ak_tpm.modulus
        || ak_key.e() != &rsa::BigUint::from(ak_tpm.exponent)
    {
        return Err(TpmVerifyError::AkMismatch);
    }
    let ek_der = b64("ek_public", &identity.ek_public)?;
    let ek = match trust {
        EkTrust::CaBundle(bundle) => {
            let cert = identity
                .ek_cert
                .as_deref()
                .ok_or(TpmVerifyError::NoEkCert)?;
            let key = bundle.verify(&b64("ek_cert", cert)?, now)?;
            let reported = RsaPublicKey::from_public_key_der(&ek_der)
                .map_err(|_| TpmVerifyError::EkMismatch)?;
            if key != reported {
                return Err(TpmVerifyError::EkMismatch);
            }
            key
        }
        EkTrust::Pinned(keys) => {
            if !keys.contains(&ek_der) {
                return Err(TpmVerifyError::UntrustedEk(hex::encode(Sha256::digest(
                    &ek_der,
                ))));
            }
            RsaPublicKey::from_public_key_der(&ek_der)
                .map_err(|_| TpmVerifyError::UntrustedEk(hex::encode(Sha256::digest(&ek_der))))?
        }
    };
    let mut secret = vec![0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let made = make_credential(&ek, &ak_tpm.name, &secret)?;
    Ok(AkChallenge {
        request: ActivationRequest {
            credential_blob: STANDARD.encode(made.credential_blob),
            encrypted_secret: STANDARD.encode(made.encrypted_secret),
        },
        secret,
        ak: TrustedAk {
            der: ak_der,
            name: ak_tpm.name,
        },
    })
}

impl AkChallenge {
    /// Check the guest's answer: the AK is trusted only if the TPM recovered the secret.
    pub fn finish(self, response: &ActivationResponse) -> Result<TrustedAk, TpmVerifyError> {
        self.check(response)?;
        Ok(self.ak)
    }

    /// [`AkChallenge::finish`] for a verifier that keeps the challenge (a broker session):
    /// the AK it vouches for once the answer is right.
    pub fn check(&self, response: &ActivationResponse) -> Result<&TrustedAk, TpmVerifyError> {
        let got = b64("secret", &response.secret)?;
        if got != self.secret {
            return Err(TpmVerifyError::ActivationFailed);
        }
        Ok(&self.ak)
    }
}
