//! COSE_Encrypt0 with AES-256-GCM, as both sealed formats use it (the bundle's Wasm,
//! a migration's snapshot): a fresh 96-bit IV in the unprotected header, the algorithm
//! in the protected one, and the caller's external AAD.

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{Aead as _, Payload};
use coset::{CoseEncrypt0, CoseEncrypt0Builder, HeaderBuilder, iana};
use rand_core::RngCore as _;

/// Why an Encrypt0 did not open.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// Not A256GCM (the algorithm found).
    Algorithm(String),
    /// The IV is not 12 bytes.
    Iv,
    /// The key is not 32 bytes (its length).
    KeyLength(usize),
    /// Another key, another AAD, or changed bytes.
    Decrypt,
}

/// Encrypt `plaintext` under `cipher` bound to `aad`; `None` only if AES-GCM fails.
pub(crate) fn seal(cipher: &Aes256Gcm, plaintext: &[u8], aad: &[u8]) -> Option<CoseEncrypt0> {
    let mut iv = [0u8; 12];
    rand_core::OsRng.fill_bytes(&mut iv);
    let built = CoseEncrypt0Builder::new()
        .protected(
            HeaderBuilder::new()
                .algorithm(iana::Algorithm::A256GCM)
                .build(),
        )
        .unprotected(HeaderBuilder::new().iv(iv.to_vec()).build())
        .try_create_ciphertext(plaintext, aad, |pt, enc_structure| {
            cipher.encrypt(
                aes_gcm::Nonce::from_slice(&iv),
                Payload {
                    msg: pt,
                    aad: enc_structure,
                },
            )
        })
        .ok()?;
    Some(built.build())
}

/// Decrypt `encrypt0` under the 32-byte `key` with `aad` (the header is checked before
/// the key).
pub(crate) fn open(encrypt0: &CoseEncrypt0, key: &[u8], aad: &[u8]) -> Result<Vec<u8>, OpenError> {
    use aes_gcm::KeyInit as _;
    if encrypt0.protected.header.alg != Some(coset::Algorithm::Assigned(iana::Algorithm::A256GCM)) {
        return Err(OpenError::Algorithm(format!(
            "{:?}",
            encrypt0.protected.header.alg
        )));
    }
    let iv = &encrypt0.unprotected.iv;
    if iv.len() != 12 {
        return Err(OpenError::Iv);
    }
    let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| OpenError::KeyLength(key.len()))?;
    encrypt0.decrypt_ciphertext(
        aad,
        || OpenError::Decrypt,
        |ct, enc_structure| {
            cipher
                .decrypt(
                    aes_gcm::Nonce::from_slice(iv),
                    Payload {
                        msg: ct,
                        aad: enc_structure,
                    },
                )
                .map_err(|_| OpenError::Decrypt)
        },
    )
}
