//! TPM2_MakeCredential done by the verifier, in software (TPM 2.0 Part 1 §24): a secret
//! sealed so that only the TPM holding the endorsement key, and only for a loaded object
//! with the given name, can recover it with TPM2_ActivateCredential. When the guest
//! returns the secret, the verifier knows the attestation key lives in the TPM its EK
//! certificate vouches for.
//!
//! Assumes the EK is the TCG default RSA-2048 template (nameAlg sha256, AES-128-CFB),
//! which is what every vTPM we target provisions.

use aes::Aes128;
use cfb_mode::Encryptor;
use cfb_mode::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
use hmac::{Hmac, Mac as _};
use rand_core::{OsRng, RngCore as _};
use rsa::{Oaep, RsaPublicKey};
use sha2::Sha256;

/// Size of the seed and of the integrity key: the sha256 digest size.
const DIGEST: usize = 32;
/// AES-128 key size of the default EK template.
const SYM_KEY: usize = 16;
/// Largest credential TPM2_ActivateCredential returns (a TPM2B_DIGEST).
pub const MAX_SECRET: usize = 32;

/// The two inputs of TPM2_ActivateCredential, as TPM2B buffer contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeCredential {
    /// TPM2B_ID_OBJECT contents: integrity HMAC (as TPM2B_DIGEST) ‖ encrypted identity.
    pub credential_blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents: the seed, RSA-OAEP encrypted to the EK.
    pub encrypted_secret: Vec<u8>,
}

/// MakeCredential failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    /// The secret does not fit a TPM2B_DIGEST.
    #[error("credential secret must be 1 to {MAX_SECRET} bytes, got {0}")]
    SecretSize(usize),
    /// RSA-OAEP encryption to the EK failed.
    #[error("encrypt the seed to the endorsement key failed: {0}")]
    Encrypt(String),
}

/// SP 800-108 counter-mode KDF with HMAC-sha256, as TPM 2.0 Part 1 §11.4.10.2 defines
/// KDFa. `label` is used with its terminating NUL.
fn kdfa(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bytes: usize) -> Vec<u8> {
    let bits = u32::try_from(bytes * 8).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(bytes + DIGEST);
    let mut counter: u32 = 1;
    while out.len() < bytes {
        // HMAC accepts keys of any length: new_from_slice cannot fail for it.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
            break;
        };
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// Seal `secret` to the TPM holding `ek`, for the object named `ak_name`.
pub fn make_credential(
    ek: &RsaPublicKey,
    ak_name: &[u8],
    secret: &[u8],
) -> Result<MadeCredential, CredentialError> {
    if secret.is_empty() || secret.len() > MAX_SECRET {
        return Err(CredentialError::SecretSize(secret.len()));
    }
    let mut seed = [0u8; DIGEST];
    OsRng.fill_bytes(&mut seed);
    let encrypted_secret = ek
        .encrypt(
            &mut OsRng,
            Oaep::new_with_label::<Sha256, _>("IDENTITY\0"),
            &seed,
        )
        .map_err(|e| CredentialError::Encrypt(e.to_string()))?;

    let sym_key = kdfa(&seed, "STORAGE", ak_name, &[], SYM_KEY);
    let hmac_key = kdfa(&seed, "INTEGRITY", &[], &[], DIGEST);
    // The encrypted identity is the marshalled TPM2B_DIGEST of the secret.
    let mut identity = (secret.len() as u16).to_be_bytes().to_vec();
    identity.extend_from_slice(secret);
    let iv = [0u8; 16];
    let Ok(cipher) = Encryptor::<Aes128>::new_from_slices(&sym_key, &iv) else {
        // Key and IV lengths are the constants above.
        return Err(CredentialError::Encrypt("AES-128-CFB key setup".into()));
    };
    cipher.encrypt(&mut identity);

    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&hmac_key) else {
        return Err(CredentialError::Encrypt("HMAC key setup".into()));
    };
    mac.update(&identity);
    mac.update(ak_name);
    let integrity = mac.finalize().into_bytes();
    let mut credential_blob = (DIGEST as u16).to_be_bytes().to_vec();
    credential_blob.extend_from_slice(&integrity);
    credential_blob.extend_from_slice(&identity);
    Ok(MadeCredential {
        credential_blob,
        encrypted_secret,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_lengths_and_labels() {
        let a = kdfa(b"seed", "STORAGE", b"name", &[], 16);
        let b = kdfa(b"seed", "INTEGRITY", b"name", &[], 16);
        assert_eq!(a.len(), 16);
        assert_ne!(a, b);
        // Longer outputs extend, but the bit length is an input, so prefixes differ.
        assert_eq!(kdfa(b"seed", "X", &[], &[], 80).len(), 80);
        assert_ne!(
            kdfa(b"seed", "X", &[], &[], 32)[..16],
            kdfa(b"seed", "X", &[], &[], 16)[..]
        );
    }

    #[test]
    fn secret_size_is_checked() {
        let key = rsa::RsaPrivateKey::new(&mut OsRng, 1024)
            .unwrap()
            .to_public_key();
        assert_eq!(
            make_credential(&key, b"name", &[]),
            Err(CredentialError::SecretSize(0))
        );
        assert_eq!(
            make_credential(&key, b"name", &[0; 33]),
            Err(CredentialError::SecretSize(33))
        );
        let c = make_credential(&key, b"name", &[7; 32]).unwrap();
        assert_eq!(c.credential_blob.len(), 2 + 32 + 2 + 32);
        assert_eq!(c.encrypted_secret.len(), 128);
    }
}
