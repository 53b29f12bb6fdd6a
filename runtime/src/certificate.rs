//! Migration certificates: what each appliance signs as a migration moves a workload,
//! kept by the owner and checkable later (`cvm migrate --verify`).
//!
//! A certificate is a statement (release, acceptance or abort of one migration) signed
//! ES256 by the signing agent's TLS key, with that agent's passport: the broker's
//! attestation token naming the same key. A verifier who trusts the broker's token key
//! learns that an appliance the broker affirmed signed the statement, and when. The
//! statement is carried as the exact bytes that were signed (base64 of its JSON), so
//! no canonical form is needed.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cvm_kbs_client::passport::{self, Passport, PassportError};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePublicKey as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// What a certificate states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The source stopped the workload and released it to the destination.
    Release,
    /// The destination holds the workload (the broker recorded it) and serves it.
    Acceptance,
    /// The migration did not happen; the source holds and serves the workload.
    Abort,
}

/// The signed statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// What happened.
    pub kind: Kind,
    /// The migration's id.
    pub migration: String,
    /// The workload.
    pub workload: String,
    /// SHA-256 of its signed manifest, hex.
    pub manifest_sha256: String,
    /// The source's holder name at the broker.
    pub from: String,
    /// The destination's.
    pub to: String,
    /// The state version the source released.
    pub version: u64,
    /// SHA-256 of the sealed snapshot, hex (release, acceptance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_sha256: Option<String>,
    /// Why (abort).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Unix seconds of the signature.
    pub time: u64,
}

/// A signed statement with the signer's passport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// The statement's JSON, base64: the signed bytes.
    pub statement: String,
    /// The signer's public key, DER SubjectPublicKeyInfo, base64.
    pub signer: String,
    /// ES256 signature (r ‖ s), base64.
    pub signature: String,
    /// The broker's token for the signer's key.
    pub passport: String,
}

/// A certificate that does not check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CertificateError {
    /// Not a certificate.
    #[error("certificate is malformed: {0}")]
    Malformed(String),
    /// The signature does not verify with the signer key.
    #[error("certificate signature does not verify")]
    Signature,
    /// The passport does not vouch for the signer at the statement's time.
    #[error("the signer's passport: {0}")]
    Passport(PassportError),
    /// The signing key cannot be used.
    #[error("signing key: {0}")]
    Key(String),
}

/// Sign `statement` with the agent key `key_pkcs8` (PKCS#8 DER of a P-256 key) whose
/// passport is `passport_token`.
pub fn sign(
    statement: &Statement,
    key_pkcs8: &[u8],
    passport_token: &str,
) -> Result<Certificate, CertificateError> {
    let key =
        SigningKey::from_pkcs8_der(key_pkcs8).map_err(|e| CertificateError::Key(e.to_string()))?;
    let bytes =
        serde_json::to_vec(statement).map_err(|e| CertificateError::Malformed(e.to_string()))?;
    let sig: Signature = key.sign(&bytes);
    let spki = key
        .verifying_key()
        .to_public_key_der()
        .map_err(|e| CertificateError::Key(e.to_string()))?;
    Ok(Certificate {
        statement: STANDARD.encode(&bytes),
        signer: STANDARD.encode(spki.as_bytes()),
        signature: STANDARD.encode(sig.to_bytes()),
        passport: passport_token.to_owned(),
    })
}

/// The statement of `cert`, unchecked: for naming and showing it; [`check`] it before
/// relying on it.
pub fn statement_of(cert: &Certificate) -> Result<Statement, CertificateError> {
    let bytes = STANDARD
        .decode(&cert.statement)
        .map_err(|_| CertificateError::Malformed("statement is not base64".into()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| CertificateError::Malformed(format!("statement: {e}")))
}

/// What a checked certificate says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The statement.
    pub statement: Statement,
    /// The signer's passport at the statement's time.
    pub passport: Passport,
}

/// Check `cert` against the broker's token key: the signature by the signer key, and
/// the passport naming that key, affirming, valid at the statement's time.
pub fn check(cert: &Certificate, broker_key: &VerifyingKey) -> Result<Checked, CertificateError> {
    let b64 = |s: &str, what: &str| {
        STANDARD
            .decode(s)
            .map_err(|_| CertificateError::Malformed(format!("{what} is not base64")))
    };
    let bytes = b64(&cert.statement, "statement")?;
    let spki = b64(&cert.signer, "signer")?;
    let sig = Signature::from_slice(&b64(&cert.signature, "signature")?)
        .map_err(|_| CertificateError::Signature)?;
    let signer = VerifyingKey::from_public_key_der(&spki)
        .map_err(|_| CertificateError::Malformed("signer is not a P-256 key".into()))?;
    signer
        .verify(&bytes, &sig)
        .map_err(|_| CertificateError::Signature)?;
    let statement: Statement = serde_json::from_slice(&bytes)
        .map_err(|e| CertificateError::Malformed(format!("statement: {e}")))?;
    let key_sha: [u8; 32] = Sha256::digest(&spki).into();
    // Valid at the statement's time: not expired, and issued no more than
    // MAX_CLOCK_SKEW after it. The statement's time is the signer's clock, the
    // passport's the broker's: a guest a second behind its host signs with a passport
    // "from the future", and that is skew, not a forgery.
    let passport = passport::check(broker_key, &cert.passport, statement.time, &key_sha)
        .map_err(CertificateError::Passport)?;
    Ok(Checked {
        statement,
        passport,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::EncodePrivateKey as _;

    fn statement(time: u64) -> Statement {
        Statement {
            kind: Kind::Release,
            migration: "m1".into(),
            workload: "badge".into(),
            manifest_sha256: "00".repeat(32),
            from: "volume:a/badge".into(),
            to: "volume:b/badge".into(),
            version: 3,
            snapshot_sha256: Some("11".repeat(32)),
            reason: None,
            time,
        }
    }

    // A passport needs a broker-signed token; that path is tested with a real broker
    // (broker/tests/passport.rs, tests/vm). Here: the signature and the framing.
    #[test]
    fn a_changed_statement_or_signer_does_not_verify() {
        let key = SigningKey::random(&mut rand_core::OsRng);
        let der = key.to_pkcs8_der().unwrap();
        let cert = sign(&statement(5), der.as_bytes(), "x.y.z").unwrap();
        let broker = *SigningKey::random(&mut rand_core::OsRng).verifying_key();
        // Signature fine, passport not a token: refused at the passport.
        assert!(matches!(
            check(&cert, &broker),
            Err(CertificateError::Passport(_))
        ));
        let mut changed = cert.clone();
        let mut s = statement(5);
        s.version = 4;
        changed.statement = STANDARD.encode(serde_json::to_vec(&s).unwrap());
        assert_eq!(check(&changed, &broker), Err(CertificateError::Signature));
        let other = SigningKey::random(&mut rand_core::OsRng);
        let mut resigned = cert.clone();
        resigned.signer = STANDARD.encode(
            other
                .verifying_key()
                .to_public_key_der()
                .unwrap()
                .as_bytes(),
        );
        assert_eq!(check(&resigned, &broker), Err(CertificateError::Signature));
        let mut garbled = cert;
        garbled.signature = "!".into();
        assert!(matches!(
            check(&garbled, &broker),
            Err(CertificateError::Malformed(_))
        ));
    }
}
