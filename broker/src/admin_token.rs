//! Admin authentication: a bearer token that is a JWT signed with EdDSA (Ed25519) by a
//! key whose public half the broker was started with, as Trustee's admin API does. The
//! token must name `EdDSA`, verify, and be inside its `iat`/`exp` window.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::pkcs8::DecodePublicKey as _;
use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde::Deserialize;

/// Largest token accepted.
pub const MAX_TOKEN: usize = 8 << 10;
/// Clock skew tolerated for `iat`, seconds.
pub const SKEW: u64 = 60;

/// A token that does not authenticate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AdminTokenError {
    /// The configured public key is not an Ed25519 PEM public key.
    #[error("admin public key is not an Ed25519 PEM public key")]
    Key,
    /// Not three base64url parts with JSON header and claims.
    #[error("admin token is malformed: {0}")]
    Malformed(&'static str),
    /// An algorithm other than EdDSA (including `none`).
    #[error("admin token algorithm {0:?} is not EdDSA")]
    Algorithm(String),
    /// The signature does not verify with the admin key.
    #[error("admin token signature does not verify")]
    Signature,
    /// Outside its validity window.
    #[error("admin token expired or not yet valid (now {now}, iat {iat:?}, exp {exp})")]
    Expired {
        /// Now, seconds since the epoch.
        now: u64,
        /// Issued at.
        iat: Option<u64>,
        /// Expiry.
        exp: u64,
    },
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    exp: Option<u64>,
    iat: Option<u64>,
}

/// Verifies admin tokens against one public key.
#[derive(Debug, Clone)]
pub struct AdminKey(VerifyingKey);

impl AdminKey {
    /// From a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) holding an Ed25519 key.
    pub fn from_pem(pem: &str) -> Result<Self, AdminTokenError> {
        VerifyingKey::from_public_key_pem(pem)
            .map(Self)
            .map_err(|_| AdminTokenError::Key)
    }

    /// Check `token` at time `now` (seconds since the epoch). A token must carry `exp`.
    pub fn verify(&self, token: &str, now: u64) -> Result<(), AdminTokenError> {
        if token.len() > MAX_TOKEN {
            return Err(AdminTokenError::Malformed("too long"));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AdminTokenError::Malformed("not three dot-separated parts"));
        };
        let decode = |p: &str, what| {
            URL_SAFE_NO_PAD
                .decode(p)
                .map_err(|_| AdminTokenError::Malformed(what))
        };
        let header: Header = serde_json::from_slice(&decode(h, "header is not base64url")?)
            .map_err(|_| AdminTokenError::Malformed("header is not JSON"))?;
        if header.alg != "EdDSA" {
            return Err(AdminTokenError::Algorithm(header.alg));
        }
        let sig = Signature::from_slice(&decode(s, "signature is not base64url")?)
            .map_err(|_| AdminTokenError::Signature)?;
        let signed = &token[..h.len() + 1 + c.len()];
        self.0
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| AdminTokenError::Signature)?;
        let claims: Claims = serde_json::from_slice(&decode(c, "claims are not base64url")?)
            .map_err(|_| AdminTokenError::Malformed("claims are not JSON"))?;
        let exp = claims
            .exp
            .ok_or(AdminTokenError::Malformed("no exp claim"))?;
        let early = claims.iat.is_some_and(|iat| iat > now + SKEW);
        if now >= exp || early {
            return Err(AdminTokenError::Expired {
                now,
                iat: claims.iat,
                exp,
            });
        }
        Ok(())
    }
}

/// Signs admin tokens (the `cvm broker` admin commands' side).
pub struct AdminSigner(ed25519_dalek::SigningKey);

impl std::fmt::Debug for AdminSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminSigner(..)")
    }
}

impl AdminSigner {
    /// A fresh key.
    pub fn generate() -> Self {
        Self(ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng))
    }

    /// From a PEM `PRIVATE KEY` (PKCS#8) holding an Ed25519 key.
    pub fn from_pem(pem: &str) -> Result<Self, AdminTokenError> {
        use ed25519_dalek::pkcs8::DecodePrivateKey as _;
        ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
            .map(Self)
            .map_err(|_| AdminTokenError::Key)
    }

    /// The private key as PKCS#8 PEM (for the key file).
    pub fn to_pem(&self) -> Result<zeroize::Zeroizing<String>, AdminTokenError> {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        self.0
            .to_pkcs8_pem(Default::default())
            .map_err(|_| AdminTokenError::Key)
    }

    /// The public key as SubjectPublicKeyInfo PEM (what the broker is started with).
    pub fn public_pem(&self) -> Result<String, AdminTokenError> {
        use ed25519_dalek::pkcs8::EncodePublicKey as _;
        self.0
            .verifying_key()
            .to_public_key_pem(Default::default())
            .map_err(|_| AdminTokenError::Key)
    }

    /// A token valid from `now` for `lifetime` seconds.
    pub fn token(&self, now: u64, lifetime: u64) -> String {
        use ed25519_dalek::Signer as _;
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","typ":"JWT"}"#);
        let claims = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"iat":{now},"exp":{}}}"#,
            now.saturating_add(lifetime)
        ));
        let signed = format!("{header}.{claims}");
        let sig = self.0.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }
}
