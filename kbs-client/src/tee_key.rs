//! The TEE key: generated in the guest for one handshake, sent to the broker as a JWK
//! inside the runtime data (so the report binds it), and used to decrypt the resources
//! the broker encrypts to it. The private part never leaves memory and is zeroised on
//! drop by the key types themselves.

use kbs_types::TeePubKey;
use rand_core::OsRng;
use zeroize::Zeroizing;

use crate::jwe::{self, ALG_ECDH, ALG_RSA, Jwe, JweError};

/// A TEE key pair.
pub enum TeeKey {
    /// P-256 for ECDH-ES+A256KW (the Trustee client's default).
    P256(p256::SecretKey),
    /// RSA for RSA-OAEP-256.
    Rsa(Box<rsa::RsaPrivateKey>),
}

impl std::fmt::Debug for TeeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        match self {
            TeeKey::P256(_) => f.write_str("TeeKey::P256(..)"),
            TeeKey::Rsa(_) => f.write_str("TeeKey::Rsa(..)"),
        }
    }
}

impl TeeKey {
    /// A fresh P-256 key.
    pub fn generate_p256() -> Self {
        TeeKey::P256(p256::SecretKey::random(&mut OsRng))
    }

    /// An existing P-256 key (PKCS#8 DER): the agent's TLS key, so the broker's token
    /// names the key peers reach over TLS. Only attest with it: resources are fetched
    /// in sessions with fresh keys, so the TLS key is never used for ECDH.
    pub fn from_p256_pkcs8(der: &[u8]) -> Result<Self, JweError> {
        use p256::pkcs8::DecodePrivateKey as _;
        p256::SecretKey::from_pkcs8_der(der)
            .map(TeeKey::P256)
            .map_err(|e| JweError::Recipient(format!("not a P-256 PKCS#8 key: {e}")))
    }

    /// A fresh RSA key of `bits` (at least 2048).
    pub fn generate_rsa(bits: usize) -> Result<Self, JweError> {
        if bits < 2048 {
            return Err(JweError::Recipient(
                "RSA keys under 2048 bits are refused".into(),
            ));
        }
        rsa::RsaPrivateKey::new(&mut OsRng, bits)
            .map(|k| TeeKey::Rsa(Box::new(k)))
            .map_err(|e| JweError::Recipient(e.to_string()))
    }

    /// The public key as the runtime data carries it.
    pub fn public(&self) -> TeePubKey {
        match self {
            TeeKey::P256(k) => {
                let j = jwe::ec_jwk(&k.public_key());
                TeePubKey::EC {
                    crv: j.crv,
                    alg: ALG_ECDH.into(),
                    x: j.x,
                    y: j.y,
                }
            }
            TeeKey::Rsa(k) => {
                let (n, e) = jwe::rsa_jwk_parts(&k.to_public_key());
                TeePubKey::RSA {
                    alg: ALG_RSA.into(),
                    k_mod: n,
                    k_exp: e,
                }
            }
        }
    }

    /// Decrypt a JWE the broker made for this key.
    pub fn decrypt(&self, jwe_json: &[u8]) -> Result<Zeroizing<Vec<u8>>, JweError> {
        let parsed = Jwe::parse(jwe_json)?;
        match self {
            TeeKey::P256(k) => jwe::decrypt_ec(&parsed, k),
            TeeKey::Rsa(k) => jwe::decrypt_rsa(&parsed, k),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_twins_both_key_types() {
        for key in [TeeKey::generate_p256(), TeeKey::generate_rsa(2048).unwrap()] {
            let secret = b"the state volume key, 32 bytes!!";
            let jwe = jwe::encrypt(&key.public(), secret).unwrap();
            assert_eq!(key.decrypt(jwe.as_bytes()).unwrap().as_slice(), secret);
            // Another key of the same type cannot open it.
            let other = match key {
                TeeKey::P256(_) => TeeKey::generate_p256(),
                TeeKey::Rsa(_) => TeeKey::generate_rsa(2048).unwrap(),
            };
            assert_eq!(other.decrypt(jwe.as_bytes()), Err(JweError::Unwrap));
            // A flipped ciphertext byte, tag byte or header byte is refused.
            let v: serde_json::Value = serde_json::from_str(&jwe).unwrap();
            for field in ["ciphertext", "tag", "iv"] {
                let mut t = v.clone();
                let s = t[field].as_str().unwrap().to_owned();
                let (first, rest) = s.split_at(1);
                let flipped = format!("{}{rest}", if first == "A" { "B" } else { "A" });
                t[field] = flipped.into();
                assert_eq!(
                    key.decrypt(t.to_string().as_bytes()),
                    Err(JweError::Decrypt),
                    "{field}"
                );
            }
            assert!(format!("{key:?}").ends_with("(..)"));
        }
    }

    #[test]
    fn malformed_jwe_is_named() {
        let key = TeeKey::generate_p256();
        assert!(matches!(key.decrypt(b"{}"), Err(JweError::Format(_))));
        assert_eq!(
            key.decrypt(&vec![b' '; jwe::MAX_JWE + 1]),
            Err(JweError::TooLarge)
        );
        let rsa_jwe = jwe::encrypt(&TeeKey::generate_rsa(2048).unwrap().public(), b"x").unwrap();
        assert_eq!(
            key.decrypt(rsa_jwe.as_bytes()),
            Err(JweError::KeyMismatch("RSA-OAEP-256".into()))
        );
    }
}
