//! Owner keys: who may sign bundles. Ed25519 (COSE `EdDSA`, the default) or ECDSA P-256
//! (`ES256`). A key is named by its kid, the SHA-256 of its SubjectPublicKeyInfo DER,
//! which the bundle's protected header carries so the appliance can pick the key.

use ed25519_dalek::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use ed25519_dalek::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _};
use rand_core::OsRng;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::BundleError;

/// The signature algorithm of an owner key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerAlg {
    /// Ed25519.
    EdDsa,
    /// ECDSA P-256 with SHA-256.
    Es256,
}

/// An owner's signing key (the `cvm seal` side).
pub enum OwnerKey {
    /// Ed25519.
    Ed25519(ed25519_dalek::SigningKey),
    /// P-256.
    P256(p256::ecdsa::SigningKey),
}

impl std::fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OwnerKey({})", hex::encode(self.public().kid()))
    }
}

/// An owner's public key (the appliance side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnerPublic {
    /// Ed25519.
    Ed25519(ed25519_dalek::VerifyingKey),
    /// P-256.
    P256(p256::ecdsa::VerifyingKey),
}

fn key_error(e: impl std::fmt::Display) -> BundleError {
    BundleError::Key(e.to_string())
}

impl OwnerKey {
    /// A fresh key.
    pub fn generate(alg: OwnerAlg) -> Self {
        match alg {
            OwnerAlg::EdDsa => OwnerKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut OsRng)),
            OwnerAlg::Es256 => OwnerKey::P256(p256::ecdsa::SigningKey::random(&mut OsRng)),
        }
    }

    /// From PKCS#8 PEM (`PRIVATE KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, BundleError> {
        if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_pem(pem) {
            return Ok(OwnerKey::Ed25519(k));
        }
        p256::ecdsa::SigningKey::from_pkcs8_pem(pem)
            .map(OwnerKey::P256)
            .map_err(|_| key_error("not a PKCS#8 PEM Ed25519 or P-256 private key"))
    }

    /// As PKCS#8 PEM.
    pub fn to_pem(&self) -> Result<Zeroizing<String>, BundleError> {
        match self {
            OwnerKey::Ed25519(k) => k.to_pkcs8_pem(Default::default()).map_err(key_error),
            OwnerKey::P256(k) => p256::pkcs8::EncodePrivateKey::to_pkcs8_pem(k, Default::default())
                .map_err(key_error),
        }
    }

    /// Its algorithm.
    pub fn alg(&self) -> OwnerAlg {
        match self {
            OwnerKey::Ed25519(_) => OwnerAlg::EdDsa,
            OwnerKey::P256(_) => OwnerAlg::Es256,
        }
    }

    /// The public half.
    pub fn public(&self) -> OwnerPublic {
        match self {
            OwnerKey::Ed25519(k) => OwnerPublic::Ed25519(k.verifying_key()),
            OwnerKey::P256(k) => OwnerPublic::P256(*k.verifying_key()),
        }
    }

    /// Sign `data` (COSE: raw Ed25519, or r‖s for ES256).
    pub fn sign(&self, data: &[u8]) -> Vec<u8> {
        use ed25519_dalek::Signer as _;
        match self {
            OwnerKey::Ed25519(k) => k.sign(data).to_bytes().to_vec(),
            OwnerKey::P256(k) => {
                let sig: p256::ecdsa::Signature = p256::ecdsa::signature::Signer::sign(k, data);
                sig.to_bytes().to_vec()
            }
        }
    }
}

impl OwnerPublic {
    /// From SubjectPublicKeyInfo PEM (`PUBLIC KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, BundleError> {
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(OwnerPublic::Ed25519(k));
        }
        p256::ecdsa::VerifyingKey::from_public_key_pem(pem)
            .map(OwnerPublic::P256)
            .map_err(|_| key_error("not a PEM Ed25519 or P-256 public key"))
    }

    /// Its SubjectPublicKeyInfo DER.
    pub fn spki_der(&self) -> Vec<u8> {
        match self {
            OwnerPublic::Ed25519(k) => k
                .to_public_key_der()
                .map(|d| d.as_bytes().to_vec())
                .unwrap_or_default(),
            OwnerPublic::P256(k) => p256::pkcs8::EncodePublicKey::to_public_key_der(k)
                .map(|d| d.as_bytes().to_vec())
                .unwrap_or_default(),
        }
    }

    /// As SubjectPublicKeyInfo PEM.
    pub fn to_pem(&self) -> Result<String, BundleError> {
        match self {
            OwnerPublic::Ed25519(k) => k.to_public_key_pem(Default::default()).map_err(key_error),
            OwnerPublic::P256(k) => {
                p256::pkcs8::EncodePublicKey::to_public_key_pem(k, Default::default())
                    .map_err(key_error)
            }
        }
    }

    /// The key id: SHA-256 of the SubjectPublicKeyInfo DER.
    pub fn kid(&self) -> Vec<u8> {
        Sha256::digest(self.spki_der()).to_vec()
    }

    /// Its algorithm.
    pub fn alg(&self) -> OwnerAlg {
        match self {
            OwnerPublic::Ed25519(_) => OwnerAlg::EdDsa,
            OwnerPublic::P256(_) => OwnerAlg::Es256,
        }
    }

    /// Verify a COSE signature over `data`.
    pub fn verify(&self, data: &[u8], sig: &[u8]) -> Result<(), BundleError> {
        match self {
            OwnerPublic::Ed25519(k) => {
                let sig = ed25519_dalek::Signature::from_slice(sig)
                    .map_err(|_| BundleError::Signature)?;
                k.verify_strict(data, &sig)
                    .map_err(|_| BundleError::Signature)
            }
            OwnerPublic::P256(k) => {
                let sig =
                    p256::ecdsa::Signature::from_slice(sig).map_err(|_| BundleError::Signature)?;
                p256::ecdsa::signature::Verifier::verify(k, data, &sig)
                    .map_err(|_| BundleError::Signature)
            }
        }
    }
}

/// The owner keys an appliance trusts.
#[derive(Debug, Clone, Default)]
pub struct OwnerKeys(Vec<OwnerPublic>);

impl OwnerKeys {
    /// Every `PUBLIC KEY` block of a PEM bundle.
    pub fn from_pem_bundle(text: &str) -> Result<Self, BundleError> {
        const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
        const END: &str = "-----END PUBLIC KEY-----";
        let mut keys = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find(BEGIN) {
            let end = rest[start..]
                .find(END)
                .ok_or_else(|| key_error("unterminated PUBLIC KEY block"))?
                + start
                + END.len();
            keys.push(OwnerPublic::from_pem(&rest[start..end])?);
            rest = &rest[end..];
        }
        Ok(Self(keys))
    }

    /// A set of `keys`.
    pub fn new(keys: Vec<OwnerPublic>) -> Self {
        Self(keys)
    }

    /// The key with this kid.
    pub fn find(&self, kid: &[u8]) -> Option<&OwnerPublic> {
        self.0.iter().find(|k| k.kid() == kid)
    }

    /// Every key's kid.
    pub fn kids(&self) -> Vec<Vec<u8>> {
        self.0.iter().map(OwnerPublic::kid).collect()
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
