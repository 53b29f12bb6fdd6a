//! TPMT_PUBLIC (TPM 2.0 Part 2 §12.2.4), RSA keys only: the public area of the
//! attestation key, whose hash is the key's TPM name. A verifier needs it to check what
//! kind of key signed a quote (restricted, fixed to its TPM) and to bind the key to the
//! endorsement key through credential activation. Untrusted bytes: never panics.

use sha2::{Digest as _, Sha256};

use super::quote::{ALG_SHA256, QuoteParseError, Reader};

/// TPM_ALG_RSA.
pub const ALG_RSA: u16 = 0x0001;
/// TPM_ALG_NULL.
pub const ALG_NULL: u16 = 0x0010;

/// TPMA_OBJECT bits a verifier looks at.
pub mod attr {
    /// The key cannot be duplicated out of its TPM.
    pub const FIXED_TPM: u32 = 1 << 1;
    /// The key cannot be moved to another parent.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// The TPM generated the private part.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// Signs only structures the TPM made (quotes), never caller-chosen digests
    /// that look like them.
    pub const RESTRICTED: u32 = 1 << 16;
    /// A decryption (storage) key.
    pub const DECRYPT: u32 = 1 << 17;
    /// A signing key.
    pub const SIGN: u32 = 1 << 18;
}

/// A parsed RSA TPMT_PUBLIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmPublic {
    /// The name algorithm (TPM_ALG_ID).
    pub name_alg: u16,
    /// TPMA_OBJECT.
    pub attributes: u32,
    /// The key's policy digest.
    pub auth_policy: Vec<u8>,
    /// Symmetric algorithm of a storage key (TPM_ALG_NULL for a signing key).
    pub symmetric: u16,
    /// The signing or encryption scheme (TPM_ALG_NULL when any is allowed).
    pub scheme: u16,
    /// The scheme's hash algorithm, when the scheme has one.
    pub scheme_hash: Option<u16>,
    /// Key size in bits.
    pub key_bits: u16,
    /// Public exponent (0 in the structure means 65537).
    pub exponent: u32,
    /// Big-endian modulus.
    pub modulus: Vec<u8>,
    /// The TPM name: nameAlg ‖ H(TPMT_PUBLIC).
    pub name: Vec<u8>,
}

/// Parse a marshalled TPMT_PUBLIC of an RSA key whose name algorithm is sha256.
pub fn parse_public(bytes: &[u8]) -> Result<TpmPublic, QuoteParseError> {
    let mut r = Reader(bytes);
    let kind = r.u16("type")?;
    if kind != ALG_RSA {
        return Err(QuoteParseError::KeyType(kind));
    }
    let name_alg = r.u16("nameAlg")?;
    if name_alg != ALG_SHA256 {
        return Err(QuoteParseError::NameAlg(name_alg));
    }
    let attributes = r.u32("objectAttributes")?;
    let auth_policy = r.sized("authPolicy")?.to_vec();
    let symmetric = r.u16("parameters.symmetric.algorithm")?;
    if symmetric != ALG_NULL {
        r.take(4, "parameters.symmetric.keyBits/mode")?;
    }
    let scheme = r.u16("parameters.scheme")?;
    // Every RSA scheme but NULL and RSAES (0x0015) carries a hash algorithm.
    let scheme_hash = match scheme {
        ALG_NULL | 0x0015 => None,
        _ => Some(r.u16("parameters.scheme.hashAlg")?),
    };
    let key_bits = r.u16("parameters.keyBits")?;
    let exponent = r.u32("parameters.exponent")?;
    let modulus = r.sized("unique.rsa")?.to_vec();
    r.end()?;
    let mut name = ALG_SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(&Sha256::digest(bytes));
    Ok(TpmPublic {
        name_alg,
        attributes,
        auth_policy,
        symmetric,
        scheme,
        scheme_hash,
        key_bits,
        exponent: if exponent == 0 { 65_537 } else { exponent },
        modulus,
        name,
    })
}

impl TpmPublic {
    /// Whether this is a key that can only sign TPM-made structures and never leaves its
    /// TPM: what an attestation key must be.
    pub fn is_attestation_key(&self) -> bool {
        let required = attr::FIXED_TPM
            | attr::FIXED_PARENT
            | attr::SENSITIVE_DATA_ORIGIN
            | attr::RESTRICTED
            | attr::SIGN;
        self.attributes & required == required && self.attributes & attr::DECRYPT == 0
    }
}
