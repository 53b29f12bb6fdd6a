//! The JWE a KBS returns a resource in (RFC 7516 flattened JSON serialisation, as
//! Trustee's KBS writes it): `{"protected","encrypted_key","iv","ciphertext","tag"}`,
//! base64url without padding; content encryption A256GCM with the ASCII `protected`
//! string as AAD; the CEK wrapped with `ECDH-ES+A256KW` (P-256, Concat KDF with
//! SHA-256, empty PartyU/PartyV) or `RSA-OAEP-256`.
//!
//! Decryption uses the `protected` string exactly as received for the AAD; encryption
//! writes the header in the byte form a `kbs-types` client regenerates (keys `alg`,
//! `enc`, `epk`, and `epk`'s keys sorted), so either side interoperates with Trustee.

use aes_gcm::aead::{Aead as _, Payload};
use aes_gcm::{Aes256Gcm, KeyInit as _, Nonce};
use aes_kw::KekAes256;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kbs_types::TeePubKey;
use p256::elliptic_curve::sec1::{FromEncodedPoint as _, ToEncodedPoint as _};
use rand_core::{OsRng, RngCore as _};
use rsa::traits::PublicKeyParts as _;
use rsa::{BigUint, Oaep, RsaPrivateKey, RsaPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Largest JWE accepted (a resource is a key or a small secret).
pub const MAX_JWE: usize = 1 << 20;
/// Key wrapping with ECDH on P-256.
pub const ALG_ECDH: &str = "ECDH-ES+A256KW";
/// Key wrapping with RSA-OAEP (SHA-256).
pub const ALG_RSA: &str = "RSA-OAEP-256";
/// The only content encryption in use.
pub const ENC: &str = "A256GCM";

/// A JWE that does not parse or does not decrypt.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JweError {
    /// Larger than [`MAX_JWE`].
    #[error("JWE is larger than {MAX_JWE} bytes")]
    TooLarge,
    /// Not the flattened JSON serialisation.
    #[error("JWE is not flattened JSON: {0}")]
    Format(String),
    /// A field is not base64url.
    #[error("JWE field {0} is not base64url")]
    Base64(&'static str),
    /// An algorithm other than the ones above.
    #[error(
        "JWE algorithm {alg}/{enc} is not supported (expected {ALG_ECDH} or {ALG_RSA} with {ENC})"
    )]
    Algorithm {
        /// Key management algorithm.
        alg: String,
        /// Content encryption.
        enc: String,
    },
    /// The JWE was made for another key type than ours.
    #[error("JWE uses {0}, but the TEE key is of another type")]
    KeyMismatch(String),
    /// The ephemeral key is not a P-256 point.
    #[error("JWE ephemeral key (epk) is not a P-256 point")]
    EphemeralKey,
    /// The wrapped key does not unwrap (another recipient, or tampered).
    #[error("JWE content key does not unwrap with the TEE key")]
    Unwrap,
    /// The ciphertext, tag, IV or header was changed.
    #[error("JWE content does not decrypt: tampered or not for this key")]
    Decrypt,
    /// The recipient key is not usable.
    #[error("recipient key is malformed: {0}")]
    Recipient(String),
}

/// An EC public key in JWK form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcJwk {
    /// Curve (`P-256`).
    pub crv: String,
    /// Key type (`EC`).
    pub kty: String,
    /// base64url of the x coordinate.
    pub x: String,
    /// base64url of the y coordinate.
    pub y: String,
}

/// The protected header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Key management algorithm.
    pub alg: String,
    /// Content encryption.
    pub enc: String,
    /// The sender's ephemeral key (ECDH-ES).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epk: Option<EcJwk>,
}

#[derive(Deserialize)]
struct Wire {
    protected: String,
    /// The per-recipient unprotected header (RFC 7516 §7.2.2), where some JOSE
    /// libraries put the ephemeral key.
    #[serde(default)]
    header: Option<Unprotected>,
    #[serde(default)]
    encrypted_key: String,
    iv: String,
    ciphertext: String,
    tag: String,
}

#[derive(Deserialize)]
struct Unprotected {
    #[serde(default)]
    epk: Option<EcJwk>,
}

/// A parsed JWE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwe {
    /// The `protected` field exactly as received (it is the AAD).
    pub protected: String,
    /// Its decoded header.
    pub header: Header,
    /// The wrapped content key.
    pub encrypted_key: Vec<u8>,
    /// The 12-byte IV.
    pub iv: Vec<u8>,
    /// The ciphertext.
    pub ciphertext: Vec<u8>,
    /// The 16-byte tag.
    pub tag: Vec<u8>,
}

fn b64(field: &'static str, v: &str) -> Result<Vec<u8>, JweError> {
    URL_SAFE_NO_PAD
        .decode(v.trim_end_matches('='))
        .map_err(|_| JweError::Base64(field))
}

impl Jwe {
    /// Parse the flattened JSON serialisation (untrusted bytes: bounded, never panics).
    pub fn parse(bytes: &[u8]) -> Result<Self, JweError> {
        if bytes.len() > MAX_JWE {
            return Err(JweError::TooLarge);
        }
        let w: Wire = serde_json::from_slice(bytes).map_err(|e| JweError::Format(e.to_string()))?;
        let mut header: Header = serde_json::from_slice(&b64("protected", &w.protected)?)
            .map_err(|e| JweError::Format(format!("protected header: {e}")))?;
        // An ephemeral key outside the protected header is still authenticated in
        // effect: another key derives another KEK and the unwrap fails.
        if header.epk.is_none() {
            header.epk = w.header.and_then(|h| h.epk);
        }
        if header.enc != ENC || (header.alg != ALG_ECDH && header.alg != ALG_RSA) {
            return Err(JweError::Algorithm {
                alg: header.alg,
                enc: header.enc,
            });
        }
        Ok(Self {
            protected: w.protected,
            header,
            encrypted_key: b64("encrypted_key", &w.encrypted_key)?,
            iv: b64("iv", &w.iv)?,
            ciphertext: b64("ciphertext", &w.ciphertext)?,
            tag: b64("tag", &w.tag)?,
        })
    }

    /// Decrypt the content with an unwrapped CEK.
    fn open(&self, cek: &[u8]) -> Result<Zeroizing<Vec<u8>>, JweError> {
        if self.iv.len() != 12 || self.tag.len() != 16 || cek.len() != 32 {
            return Err(JweError::Decrypt);
        }
        let cipher = Aes256Gcm::new_from_slice(cek).map_err(|_| JweError::Decrypt)?;
        let mut ct = self.ciphertext.clone();
        ct.extend_from_slice(&self.tag);
        cipher
            .decrypt(
                Nonce::from_slice(&self.iv),
                Payload {
                    msg: &ct,
                    aad: self.protected.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| JweError::Decrypt)
    }
}

/// Concat KDF (NIST SP 800-56A, as RFC 7518 §4.6.2 uses it) for a 256-bit key:
/// one round of SHA-256 over counter ‖ Z ‖ AlgorithmID ‖ PartyUInfo ‖ PartyVInfo ‖
/// SuppPubInfo, with empty PartyU/PartyV info.
fn concat_kdf(z: &[u8], alg: &str) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    h.update((alg.len() as u32).to_be_bytes());
    h.update(alg.as_bytes());
    h.update(0u32.to_be_bytes());
    h.update(0u32.to_be_bytes());
    h.update(256u32.to_be_bytes());
    Zeroizing::new(h.finalize().into())
}

fn ec_point(jwk: &EcJwk) -> Result<p256::PublicKey, JweError> {
    if jwk.kty != "EC" || jwk.crv != "P-256" {
        return Err(JweError::EphemeralKey);
    }
    let x = b64("epk.x", &jwk.x)?;
    let y = b64("epk.y", &jwk.y)?;
    if x.len() != 32 || y.len() != 32 {
        return Err(JweError::EphemeralKey);
    }
    let point = p256::EncodedPoint::from_affine_coordinates(
        x.as_slice().into(),
        y.as_slice().into(),
        false,
    );
    Option::from(p256::PublicKey::from_encoded_point(&point)).ok_or(JweError::EphemeralKey)
}

/// The JWK form of a P-256 public key.
pub fn ec_jwk(key: &p256::PublicKey) -> EcJwk {
    let point = key.to_encoded_point(false);
    let coord =
        |c: Option<&p256::FieldBytes>| c.map(|b| URL_SAFE_NO_PAD.encode(b)).unwrap_or_default();
    EcJwk {
        crv: "P-256".into(),
        kty: "EC".into(),
        x: coord(point.x()),
        y: coord(point.y()),
    }
}

/// Decrypt with a P-256 secret key.
pub fn decrypt_ec(jwe: &Jwe, secret: &p256::SecretKey) -> Result<Zeroizing<Vec<u8>>, JweError> {
    if jwe.header.alg != ALG_ECDH {
        return Err(JweError::KeyMismatch(jwe.header.alg.clone()));
    }
    let epk = ec_point(jwe.header.epk.as_ref().ok_or(JweError::EphemeralKey)?)?;
    let shared = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), epk.as_affine());
    let kek = concat_kdf(shared.raw_secret_bytes(), ALG_ECDH);
    let cek = KekAes256::from(*kek)
        .unwrap_vec(&jwe.encrypted_key)
        .map(Zeroizing::new)
        .map_err(|_| JweError::Unwrap)?;
    jwe.open(&cek)
}

/// Decrypt with an RSA private key.
pub fn decrypt_rsa(jwe: &Jwe, key: &RsaPrivateKey) -> Result<Zeroizing<Vec<u8>>, JweError> {
    if jwe.header.alg != ALG_RSA {
        return Err(JweError::KeyMismatch(jwe.header.alg.clone()));
    }
    let cek = key
        .decrypt(Oaep::new::<Sha256>(), &jwe.encrypted_key)
        .map(Zeroizing::new)
        .map_err(|_| JweError::Unwrap)?;
    jwe.open(&cek)
}

/// Encrypt `plaintext` to a TEE public key (what a broker does), as flattened JSON.
pub fn encrypt(recipient: &TeePubKey, plaintext: &[u8]) -> Result<String, JweError> {
    let mut cek = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(cek.as_mut());
    let (header, encrypted_key) = match recipient {
        TeePubKey::EC { crv, x, y, .. } => {
            let them = ec_point(&EcJwk {
                crv: crv.clone(),
                kty: "EC".into(),
                x: x.clone(),
                y: y.clone(),
            })
            .map_err(|e| JweError::Recipient(e.to_string()))?;
            let eph = p256::ecdh::EphemeralSecret::random(&mut OsRng);
            let shared = eph.diffie_hellman(&them);
            let kek = concat_kdf(shared.raw_secret_bytes(), ALG_ECDH);
            let wrapped = KekAes256::from(*kek)
                .wrap_vec(cek.as_ref())
                .map_err(|_| JweError::Recipient("AES key wrap".into()))?;
            let header = Header {
                alg: ALG_ECDH.into(),
                enc: ENC.into(),
                epk: Some(ec_jwk(&eph.public_key())),
            };
            (header, wrapped)
        }
        TeePubKey::RSA { k_mod, k_exp, .. } => {
            let n = BigUint::from_bytes_be(
                &b64("n", k_mod).map_err(|e| JweError::Recipient(e.to_string()))?,
            );
            let e = BigUint::from_bytes_be(
                &b64("e", k_exp).map_err(|e| JweError::Recipient(e.to_string()))?,
            );
            let key = RsaPublicKey::new(n, e).map_err(|e| JweError::Recipient(e.to_string()))?;
            if key.size() < 256 {
                return Err(JweError::Recipient(
                    "RSA keys under 2048 bits are refused".into(),
                ));
            }
            let wrapped = key
                .encrypt(&mut OsRng, Oaep::new::<Sha256>(), cek.as_ref())
                .map_err(|e| JweError::Recipient(e.to_string()))?;
            let header = Header {
                alg: ALG_RSA.into(),
                enc: ENC.into(),
                epk: None,
            };
            (header, wrapped)
        }
        TeePubKey::AKP { alg, .. } => {
            return Err(JweError::Recipient(format!("{alg} keys are not supported")));
        }
    };
    let protected = URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&header).map_err(|e| JweError::Recipient(e.to_string()))?);
    let mut iv = [0u8; 12];
    OsRng.fill_bytes(&mut iv);
    let cipher = Aes256Gcm::new_from_slice(cek.as_ref()).map_err(|_| JweError::Decrypt)?;
    let mut sealed = cipher
        .encrypt(
            Nonce::from_slice(&iv),
            Payload {
                msg: plaintext,
                aad: protected.as_bytes(),
            },
        )
        .map_err(|_| JweError::Decrypt)?;
    let tag = sealed.split_off(sealed.len() - 16);
    Ok(serde_json::json!({
        "protected": protected,
        "encrypted_key": URL_SAFE_NO_PAD.encode(encrypted_key),
        "iv": URL_SAFE_NO_PAD.encode(iv),
        "ciphertext": URL_SAFE_NO_PAD.encode(sealed),
        "tag": URL_SAFE_NO_PAD.encode(tag),
    })
    .to_string())
}

/// The `n`/`e` of an RSA key, base64url, as a JWK carries them.
pub fn rsa_jwk_parts(key: &RsaPublicKey) -> (String, String) {
    (
        URL_SAFE_NO_PAD.encode(key.n().to_bytes_be()),
        URL_SAFE_NO_PAD.encode(key.e().to_bytes_be()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client built on `kbs-types` (Trustee's guest-components) re-serialises the
    /// protected header to get the AAD: ours must come out byte-identical.
    #[test]
    fn kbs_types_regenerates_our_aad() {
        for key in [
            crate::tee_key::TeeKey::generate_p256(),
            crate::tee_key::TeeKey::generate_rsa(2048).unwrap(),
        ] {
            let json = encrypt(&key.public(), b"secret").unwrap();
            let theirs: kbs_types::Response = serde_json::from_str(&json).unwrap();
            let ours = Jwe::parse(json.as_bytes()).unwrap();
            assert_eq!(
                theirs.protected.generate_aad().unwrap(),
                ours.protected.as_bytes()
            );
            assert_eq!(theirs.ciphertext, ours.ciphertext);
        }
    }
}
