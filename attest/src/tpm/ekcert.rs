//! Endorsement key certificates: the EK certificate a TPM carries must be signed by a CA
//! the verifier was configured with (for the dev platform, swtpm's local CA; for a cloud
//! vTPM, the provider's EK CA). Its public key is then the key the verifier seals a
//! credential to, so an attestation key the guest activates is one in that TPM.

use std::time::{SystemTime, UNIX_EPOCH};

use der::{Decode as _, Encode as _};
use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use rsa::RsaPublicKey;
use rsa::pkcs1v15::{Signature as RsaSignature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey as _;
use rsa::signature::Verifier as _;
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use x509_cert::Certificate;
use x509_cert::ext::pkix::BasicConstraints;

const SHA256_RSA: &str = "1.2.840.113549.1.1.11";
const SHA384_RSA: &str = "1.2.840.113549.1.1.12";
const SHA512_RSA: &str = "1.2.840.113549.1.1.13";
const ECDSA_SHA256: &str = "1.2.840.10045.4.3.2";
const ECDSA_SHA384: &str = "1.2.840.10045.4.3.3";
const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const P256: &str = "1.2.840.10045.3.1.7";
const P384: &str = "1.3.132.0.34";

/// An EK certificate that the verifier does not accept.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EkCertError {
    /// The CA bundle does not parse.
    #[error("EK CA bundle is not PEM certificates: {0}")]
    Bundle(String),
    /// The CA bundle is empty.
    #[error("EK CA bundle holds no certificate")]
    EmptyBundle,
    /// The EK certificate is not DER X.509.
    #[error("EK certificate is not DER X.509: {0}")]
    Parse(String),
    /// No CA in the bundle has the EK certificate's issuer as its subject.
    #[error("EK certificate issuer {0} is not a CA in the trust bundle")]
    UnknownIssuer(String),
    /// The signature does not verify with the named CA's key.
    #[error("EK certificate signature does not verify with CA {0}")]
    Signature(String),
    /// A signature algorithm this verifier does not implement.
    #[error("certificate signature algorithm {0} is not supported")]
    SignatureAlgorithm(String),
    /// The issuer is not marked as a CA.
    #[error("issuer {0} is not a CA (basicConstraints cA is not true)")]
    NotCa(String),
    /// Outside the validity period.
    #[error(
        "certificate {subject} is not valid now (valid {not_before}s to {not_after}s after the epoch)"
    )]
    Expired {
        /// Subject of the certificate.
        subject: String,
        /// notBefore, seconds since the epoch.
        not_before: u64,
        /// notAfter, seconds since the epoch.
        not_after: u64,
    },
    /// The EK is not an RSA key.
    #[error("EK certificate public key is not RSA")]
    NotRsa,
}

/// The CAs an EK certificate may be signed by.
#[derive(Debug, Clone)]
pub struct EkCaBundle {
    cas: Vec<Certificate>,
}

impl EkCaBundle {
    /// Every certificate in a PEM bundle is a trusted issuer.
    pub fn from_pem(pem: &[u8]) -> Result<Self, EkCertError> {
        let cas =
            Certificate::load_pem_chain(pem).map_err(|e| EkCertError::Bundle(e.to_string()))?;
        if cas.is_empty() {
            return Err(EkCertError::EmptyBundle);
        }
        Ok(Self { cas })
    }

    /// Check `ek_cert` (DER) against the bundle at time `now`; return its RSA key.
    pub fn verify(&self, ek_cert: &[u8], now: SystemTime) -> Result<RsaPublicKey, EkCertError> {
        let cert = Certificate::from_der(ek_cert).map_err(|e| EkCertError::Parse(e.to_string()))?;
        let issuer = &cert.tbs_certificate.issuer;
        let mut candidates = self
            .cas
            .iter()
            .filter(|ca| &ca.tbs_certificate.subject == issuer)
            .peekable();
        if candidates.peek().is_none() {
            return Err(EkCertError::UnknownIssuer(issuer.to_string()));
        }
        let mut last = EkCertError::UnknownIssuer(issuer.to_string());
        for ca in candidates {
            match check_issued_by(&cert, ca, now) {
                Ok(()) => {
                    check_validity(&cert, now)?;
                    let spki = cert
                        .tbs_certificate
                        .subject_public_key_info
                        .to_der()
                        .map_err(|e| EkCertError::Parse(e.to_string()))?;
                    return RsaPublicKey::from_public_key_der(&spki)
                        .map_err(|_| EkCertError::NotRsa);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

fn check_validity(cert: &Certificate, now: SystemTime) -> Result<(), EkCertError> {
    let v = &cert.tbs_certificate.validity;
    let not_before = v.not_before.to_unix_duration().as_secs();
    let not_after = v.not_after.to_unix_duration().as_secs();
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if now < not_before || now > not_after {
        return Err(EkCertError::Expired {
            subject: cert.tbs_certificate.subject.to_string(),
            not_before,
            not_after,
        });
    }
    Ok(())
}

fn check_issued_by(
    cert: &Certificate,
    ca: &Certificate,
    now: SystemTime,
) -> Result<(), EkCertError> {
    let ca_name = ca.tbs_certificate.subject.to_string();
    check_validity(ca, now)?;
    match ca.tbs_certificate.get::<BasicConstraints>() {
        Ok(Some((_, bc))) if bc.ca => {}
        _ => return Err(EkCertError::NotCa(ca_name)),
    }
    let tbs = cert
        .tbs_certificate
        .to_der()
        .map_err(|e| EkCertError::Parse(e.to_string()))?;
    let sig = cert.signature.raw_bytes();
    let alg = cert.signature_algorithm.oid.to_string();
    let spki = &ca.tbs_certificate.subject_public_key_info;
    let bad = || EkCertError::Signature(ca_name.clone());
    match alg.as_str() {
        SHA256_RSA | SHA384_RSA | SHA512_RSA => {
            let der = spki
                .to_der()
                .map_err(|e| EkCertError::Parse(e.to_string()))?;
            let key = RsaPublicKey::from_public_key_der(&der).map_err(|_| bad())?;
            let sig = RsaSignature::try_from(sig).map_err(|_| bad())?;
            let ok = match alg.as_str() {
                SHA256_RSA => VerifyingKey::<Sha256>::new(key).verify(&tbs, &sig),
                SHA384_RSA => VerifyingKey::<Sha384>::new(key).verify(&tbs, &sig),
                _ => VerifyingKey::<Sha512>::new(key).verify(&tbs, &sig),
            };
            ok.map_err(|_| bad())
        }
        ECDSA_SHA256 | ECDSA_SHA384 => {
            let prehash = if alg == ECDSA_SHA256 {
                Sha256::digest(&tbs).to_vec()
            } else {
                Sha384::digest(&tbs).to_vec()
            };
            if spki.algorithm.oid.to_string() != EC_PUBLIC_KEY {
                return Err(bad());
            }
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok())
                .map(|o| o.to_string());
            let point = spki.subject_public_key.raw_bytes();
            let ok = match curve.as_deref() {
                Some(P256) => {
                    let vk =
                        p256::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad())?;
                    let s = p256::ecdsa::DerSignature::try_from(sig).map_err(|_| bad())?;
                    vk.verify_prehash(&prehash, &s)
                }
                Some(P384) => {
                    let vk =
                        p384::ecdsa::VerifyingKey::from_sec1_bytes(point).map_err(|_| bad())?;
                    let s = p384::ecdsa::DerSignature::try_from(sig).map_err(|_| bad())?;
                    vk.verify_prehash(&prehash, &s)
                }
                other => {
                    return Err(EkCertError::SignatureAlgorithm(format!(
                        "ECDSA on curve {other:?}"
                    )));
                }
            };
            ok.map_err(|_| bad())
        }
        other => Err(EkCertError::SignatureAlgorithm(other.to_owned())),
    }
}
