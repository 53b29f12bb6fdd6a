//! Handing released resources to the agent through memory: a sealed memfd (no file
//! on any disk, unchangeable once written) that the agent inherits, named by
//! `--secrets-fd N`. PID1 keeps it open so a restarted agent gets the same secrets.
//!
//! The content is [`cvm_proto::agent::Secrets`] as JSON: resource path → standard
//! base64 of the bytes.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::fd::{AsRawFd as _, OwnedFd};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use zeroize::Zeroizing;

/// The memfd could not be made.
#[derive(Debug, thiserror::Error)]
#[error("hand secrets to the agent: {0}")]
pub struct SecretsError(String);

/// A sealed memfd holding the secrets; inherited by children spawned after it.
#[derive(Debug)]
pub struct SecretsFd(OwnedFd);

impl SecretsFd {
    /// Write `resources` into a new sealed memfd.
    pub fn new(resources: &BTreeMap<String, Zeroizing<Vec<u8>>>) -> Result<Self, SecretsError> {
        let err = |e: &dyn std::fmt::Display| SecretsError(e.to_string());
        // No MFD_CLOEXEC: the agent must inherit it (PID1 spawns nothing else after).
        let fd = memfd_create("cvm-secrets", MFdFlags::MFD_ALLOW_SEALING).map_err(|e| err(&e))?;
        let secrets = cvm_proto::agent::Secrets {
            resources: resources
                .iter()
                .map(|(k, v)| (k.clone(), STANDARD.encode(v.as_slice())))
                .collect(),
        };
        let json = Zeroizing::new(serde_json::to_vec(&secrets).map_err(|e| err(&e))?);
        let mut file = std::fs::File::from(fd);
        file.write_all(&json).map_err(|e| err(&e))?;
        fcntl(
            &file,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_WRITE
                    | SealFlag::F_SEAL_GROW
                    | SealFlag::F_SEAL_SHRINK
                    | SealFlag::F_SEAL_SEAL,
            ),
        )
        .map_err(|e| err(&e))?;
        Ok(Self(OwnedFd::from(file)))
    }

    /// The descriptor number the agent is told.
    pub fn raw(&self) -> i32 {
        self.0.as_raw_fd()
    }
}
