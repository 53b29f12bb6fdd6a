//! Per-workload encryption of a folder on the state volume with the kernel's fscrypt
//! (policy v2: AES-256-XTS contents, AES-256-CTS names, per-file keys derived by the
//! kernel with HKDF-SHA512). The master key lives only in the filesystem's keyring in
//! guest memory; removing it makes the folder's files unreadable again.
//!
//! The four ioctls are declared here from `include/uapi/linux/fscrypt.h` (the `libc`
//! crate does not carry them); every call passes a buffer of exactly the layout the
//! kernel reads and writes, which is what makes the `unsafe` blocks sound.
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsRawFd as _;
use std::path::Path;

use zeroize::Zeroize as _;

/// Bytes of a master key (AES-256-XTS needs 64).
pub const KEY_LEN: usize = 64;
/// The kernel's identifier of a master key.
pub type KeyId = [u8; 16];

const POLICY_V2: u8 = 2;
const MODE_AES_256_XTS: u8 = 1;
const MODE_AES_256_CTS: u8 = 4;
const POLICY_FLAGS_PAD_32: u8 = 0x03;
const KEY_SPEC_TYPE_IDENTIFIER: u32 = 2;
const REMOVAL_FILES_BUSY: u32 = 1;

// _IOC(dir, 'f', nr, size): dir 2 = read, 3 = read|write.
const FS_IOC_SET_ENCRYPTION_POLICY: libc::c_ulong = 0x800c_6613;
const FS_IOC_GET_ENCRYPTION_POLICY_EX: libc::c_ulong = 0xc009_6616;
const FS_IOC_ADD_ENCRYPTION_KEY: libc::c_ulong = 0xc050_6617;
const FS_IOC_REMOVE_ENCRYPTION_KEY: libc::c_ulong = 0xc040_6618;

#[repr(C)]
#[derive(Default)]
struct KeySpec {
    kind: u32,
    reserved: u32,
    u: [u8; 32],
}

#[repr(C)]
struct AddKey {
    spec: KeySpec,
    raw_size: u32,
    key_id: u32,
    reserved: [u32; 8],
    raw: [u8; KEY_LEN],
}

#[repr(C)]
struct RemoveKey {
    spec: KeySpec,
    status: u32,
    reserved: [u32; 5],
}

#[repr(C)]
#[derive(Default, Clone, Copy)]
struct PolicyV2 {
    version: u8,
    contents: u8,
    filenames: u8,
    flags: u8,
    log2_data_unit_size: u8,
    reserved: [u8; 3],
    identifier: KeyId,
}

#[repr(C)]
struct GetPolicyEx {
    size: u64,
    policy: PolicyV2,
}

/// An fscrypt operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FscryptError {
    /// The kernel or the file system has no fscrypt.
    #[error(
        "the state volume does not support per-workload encryption (kernel without fscrypt, or an ext4 without the encrypt feature)"
    )]
    Unsupported,
    /// The folder is encrypted with another key.
    #[error("{path} is encrypted with key {found}, not this workload's state key {expected}")]
    OtherKey {
        /// The folder.
        path: String,
        /// Its key identifier.
        found: String,
        /// The identifier of the key the broker released.
        expected: String,
    },
    /// The folder is not encrypted.
    #[error("{0} is not encrypted")]
    NotEncrypted(String),
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What.
        op: &'static str,
        /// Where.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FscryptError {
    let path = path.display().to_string();
    move |source| match source.raw_os_error() {
        Some(libc::ENOTTY | libc::EOPNOTSUPP) => FscryptError::Unsupported,
        _ => FscryptError::Io { op, path, source },
    }
}

fn open_dir(path: &Path) -> Result<File, FscryptError> {
    File::open(path).map_err(io("open", path))
}

/// Add `key` to the keyring of the file system holding `mount`; returns its identifier.
/// Adding a key that is already there only takes another reference to it.
pub fn add_key(mount: &Path, key: &[u8; KEY_LEN]) -> Result<KeyId, FscryptError> {
    let dir = open_dir(mount)?;
    let mut arg = AddKey {
        spec: KeySpec {
            kind: KEY_SPEC_TYPE_IDENTIFIER,
            ..KeySpec::default()
        },
        raw_size: KEY_LEN as u32,
        key_id: 0,
        reserved: [0; 8],
        raw: *key,
    };
    // SAFETY: `arg` is a live, writable `fscrypt_add_key_arg` followed by `raw_size`
    // bytes of key, the layout FS_IOC_ADD_ENCRYPTION_KEY reads and (the identifier)
    // writes; the fd stays open for the call.
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), FS_IOC_ADD_ENCRYPTION_KEY, &mut arg) };
    let err = std::io::Error::last_os_error();
    arg.raw.zeroize();
    if rc != 0 {
        return Err(io("add the state key for", mount)(err));
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&arg.spec.u[..16]);
    Ok(id)
}

/// Remove the key `id` from the keyring of `mount`'s file system. Returns false when
/// files were still open (the kernel then removes it once they are closed).
pub fn remove_key(mount: &Path, id: &KeyId) -> Result<bool, FscryptError> {
    let dir = open_dir(mount)?;
    let mut arg = RemoveKey {
        spec: KeySpec {
            kind: KEY_SPEC_TYPE_IDENTIFIER,
            ..KeySpec::default()
        },
        status: 0,
        reserved: [0; 5],
    };
    arg.spec.u[..16].copy_from_slice(id);
    // SAFETY: `arg` is a live, writable `fscrypt_remove_key_arg`, the layout
    // FS_IOC_REMOVE_ENCRYPTION_KEY reads and writes (the status flags).
    let rc = unsafe { libc::ioctl(dir.as_raw_fd(), FS_IOC_REMOVE_ENCRYPTION_KEY, &mut arg) };
    if rc != 0 {
        return Err(io("remove the state key from", mount)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(arg.status & REMOVAL_FILES_BUSY == 0)
}

/// The key identifier `dir` is encrypted with, `None` if it is not encrypted.
pub fn policy_key(dir: &Path) -> Result<Option<KeyId>, FscryptError> {
    let f = open_dir(dir)?;
    let mut arg = GetPolicyEx {
        size: std::mem::size_of::<PolicyV2>() as u64,
        policy: PolicyV2::default(),
    };
    // SAFETY: `arg` is a live, writable `fscrypt_get_policy_ex_arg` whose `size` says
    // how many policy bytes follow; the kernel writes at most that many.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_GET_ENCRYPTION_POLICY_EX, &mut arg) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(io("read the encryption policy of", dir)(e)),
        };
    }
    if arg.policy.version != POLICY_V2 {
        return Err(FscryptError::OtherKey {
            path: dir.display().to_string(),
            found: format!("(a version {} policy)", arg.policy.version),
            expected: "a version 2 policy".into(),
        });
    }
    Ok(Some(arg.policy.identifier))
}

/// Encrypt the empty folder `dir` with key `id` (already added).
pub fn set_policy(dir: &Path, id: &KeyId) -> Result<(), FscryptError> {
    let f = open_dir(dir)?;
    let policy = PolicyV2 {
        version: POLICY_V2,
        contents: MODE_AES_256_XTS,
        filenames: MODE_AES_256_CTS,
        flags: POLICY_FLAGS_PAD_32,
        log2_data_unit_size: 0,
        reserved: [0; 3],
        identifier: *id,
    };
    // SAFETY: `policy` is a live `fscrypt_policy_v2`; FS_IOC_SET_ENCRYPTION_POLICY reads
    // its version byte and then the v2 layout, and writes nothing.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_SET_ENCRYPTION_POLICY, &policy) };
    if rc != 0 {
        return Err(io("encrypt", dir)(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Make sure `dir` is encrypted with `id`: an empty, unencrypted folder gets the policy;
/// an encrypted one must already have it.
pub fn ensure_policy(dir: &Path, id: &KeyId) -> Result<(), FscryptError> {
    match policy_key(dir)? {
        Some(found) if &found == id => Ok(()),
        Some(found) => Err(FscryptError::OtherKey {
            path: dir.display().to_string(),
            found: hex::encode(found),
            expected: hex::encode(id),
        }),
        None => {
            let empty = std::fs::read_dir(dir)
                .map_err(io("list", dir))?
                .next()
                .is_none();
            if !empty {
                return Err(FscryptError::NotEncrypted(dir.display().to_string()));
            }
            set_policy(dir, id)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The ioctl numbers encode the sizes of these structs: a layout change here would
    // send the kernel a buffer of the wrong size.
    #[test]
    fn layouts_match_the_kernel_headers() {
        assert_eq!(std::mem::size_of::<KeySpec>(), 40);
        assert_eq!(std::mem::size_of::<AddKey>() - KEY_LEN, 80);
        assert_eq!(std::mem::size_of::<RemoveKey>(), 64);
        assert_eq!(std::mem::size_of::<PolicyV2>(), 24);
        let size = |req: libc::c_ulong| (req >> 16) & 0x3fff;
        assert_eq!(size(FS_IOC_ADD_ENCRYPTION_KEY), 80);
        assert_eq!(size(FS_IOC_REMOVE_ENCRYPTION_KEY), 64);
        assert_eq!(size(FS_IOC_SET_ENCRYPTION_POLICY), 12);
        assert_eq!(size(FS_IOC_GET_ENCRYPTION_POLICY_EX), 9);
    }

    #[test]
    fn a_folder_that_is_not_on_fscrypt_reads_as_unencrypted_or_unsupported() {
        let dir = std::env::temp_dir();
        match policy_key(&dir) {
            Ok(None) | Err(FscryptError::Unsupported) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
