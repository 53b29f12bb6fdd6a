//! The digests every runtime event carries, one per hash bank we extend.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256, Sha384};

/// A hash algorithm of a measurement bank, spelled as in the TCG canonical event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlg {
    /// SHA-256: TPM PCR bank used by verifiers.
    Sha256,
    /// SHA-384: TPM bank where allocated, and the TDX RTMR algorithm.
    Sha384,
}

impl HashAlg {
    /// The bank's name, as in the event log and in sysfs (`pcr-<name>`).
    pub const fn name(self) -> &'static str {
        match self {
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
        }
    }

    /// Size of a digest of this algorithm in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
        }
    }

    /// Hash `data` with this algorithm.
    pub fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha256 => Sha256::digest(data).to_vec(),
            HashAlg::Sha384 => Sha384::digest(data).to_vec(),
        }
    }

    /// One extend step: `H(register ‖ digest)`.
    pub fn extend(self, register: &[u8], digest: &[u8]) -> Vec<u8> {
        match self {
            HashAlg::Sha256 => Sha256::new()
                .chain_update(register)
                .chain_update(digest)
                .finalize()
                .to_vec(),
            HashAlg::Sha384 => Sha384::new()
                .chain_update(register)
                .chain_update(digest)
                .finalize()
                .to_vec(),
        }
    }
}

/// The digests of one measured object, in every bank we extend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// SHA-256 of the measured bytes.
    pub sha256: [u8; 32],
    /// SHA-384 of the measured bytes.
    pub sha384: [u8; 48],
}

impl Digests {
    /// Measure `data` in every bank.
    pub fn of(data: &[u8]) -> Self {
        Digests {
            sha256: Sha256::digest(data).into(),
            sha384: Sha384::digest(data).into(),
        }
    }

    /// The digest for one algorithm.
    pub fn get(&self, alg: HashAlg) -> &[u8] {
        match alg {
            HashAlg::Sha256 => &self.sha256,
            HashAlg::Sha384 => &self.sha384,
        }
    }
}
