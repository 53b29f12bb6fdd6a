//! Firmware for the guest.
//!
//! Trust-chain place: host side. The firmware is the root of the measured boot (it
//! measures the kernel, initramfs and command line), so the exact image used is recorded
//! with every build and every reference value.
//!
//! - The `qemu` platform's firmware: Debian's `ovmf` package (OVMF with TPM 2.0 measured
//!   boot, no Secure Boot), located and sanity-checked ([`dev_firmware`]).
//! - The SEV-SNP and TDX firmware, pinned by package version and sha256 ([`pinned`]).
//! - The metadata those images publish for launch measurements: the footer GUID table
//!   ([`table`]), the SEV metadata sections ([`sev`]) and the TDVF descriptor ([`tdx`]).
//!   Parsers take untrusted bytes and never panic; every failure names what was wrong.
//!
//! Non-goals: computing launch digests (that is `cvm-image`'s job, on top of these types).

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod guid;
pub mod pinned;
pub mod sev;
pub mod table;
pub mod tdx;

pub use guid::Guid;
pub use sev::{SevMetadata, SevSection, SevSectionKind};
pub use table::GuidTable;
pub use tdx::{TdxSection, TdxSectionKind};

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

/// Where Debian's `ovmf` package installs its images.
pub const DEBIAN_OVMF_DIR: &str = "/usr/share/OVMF";
/// The code image: 4 MiB flash layout, no Secure Boot, no SMM requirement.
pub const DEV_CODE: &str = "OVMF_CODE_4M.fd";
/// The variable store template matching [`DEV_CODE`].
pub const DEV_VARS: &str = "OVMF_VARS_4M.fd";

/// The firmware `cvm run` boots the `qemu` platform with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevFirmware {
    /// Read-only code image (pflash unit 0).
    pub code: PathBuf,
    /// Variable store template; each VM gets a writable copy (pflash unit 1).
    pub vars_template: PathBuf,
    /// Lower-case hex SHA-256 of the code image.
    pub code_sha256: String,
    /// `ovmf <version>` when the images come from the Debian package, else `local`.
    pub package: String,
}

/// Firmware that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FirmwareError {
    /// The file does not exist or cannot be read.
    #[error("firmware {path} cannot be read (install the ovmf package: run ./scripts/setup)")]
    Missing {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not an OVMF flash image.
    #[error("firmware {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Firmware metadata that is missing or malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    /// The image has no usable GUID table.
    #[error("firmware has no OVMF GUID table: {0}")]
    NoGuidTable(&'static str),
    /// A table entry is malformed.
    #[error("firmware GUID table entry {guid} is malformed: {reason}")]
    BadEntry {
        /// The entry.
        guid: Guid,
        /// What is wrong.
        reason: &'static str,
    },
    /// A required entry is absent (e.g. SEV metadata in a non-SEV build).
    #[error("firmware GUID table has no entry {0}")]
    MissingEntry(Guid),
    /// The SEV metadata is malformed.
    #[error("firmware SEV metadata is malformed: {0}")]
    BadSevMetadata(&'static str),
    /// The TDVF descriptor is malformed.
    #[error("firmware TDX metadata (TDVF) is malformed: {0}")]
    BadTdxMetadata(&'static str),
}

/// Parse the SEV metadata of a firmware image.
pub fn parse_sev(image: &[u8]) -> Result<SevMetadata, MetadataError> {
    sev::parse(image, &GuidTable::parse(image)?)
}

/// Parse the TDVF sections of a firmware image.
pub fn parse_tdx(image: &[u8]) -> Result<Vec<TdxSection>, MetadataError> {
    tdx::parse(image, &GuidTable::parse(image)?)
}

/// Find and check the dev firmware in `dir` (normally [`DEBIAN_OVMF_DIR`]).
pub fn dev_firmware(dir: &Path) -> Result<DevFirmware, FirmwareError> {
    let code = dir.join(DEV_CODE);
    let vars_template = dir.join(DEV_VARS);
    let code_bytes = read(&code)?;
    check_flash_image(&code, &code_bytes)?;
    let vars_bytes = read(&vars_template)?;
    check_flash_image(&vars_template, &vars_bytes)?;
    let package = if dir == Path::new(DEBIAN_OVMF_DIR) {
        debian_version("ovmf").map_or_else(|| "local".to_owned(), |v| format!("ovmf {v}"))
    } else {
        "local".to_owned()
    };
    Ok(DevFirmware {
        code,
        vars_template,
        code_sha256: hex::encode(Sha256::digest(&code_bytes)),
        package,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, FirmwareError> {
    fs::read(path).map_err(|source| FirmwareError::Missing {
        path: path.to_owned(),
        source,
    })
}

/// A UEFI flash image is a sequence of firmware volumes: the first one starts at offset
/// 0 with the `_FVH` signature at byte 40 (PI spec vol. 3, EFI_FIRMWARE_VOLUME_HEADER),
/// and pflash needs a size that is a multiple of 4 KiB.
pub fn check_flash_image(path: &Path, bytes: &[u8]) -> Result<(), FirmwareError> {
    let corrupt = |reason| FirmwareError::Corrupt {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() < 64 * 1024 || !bytes.len().is_multiple_of(4096) {
        return Err(corrupt(
            "size is not a multiple of 4 KiB of at least 64 KiB",
        ));
    }
    if &bytes[40..44] != b"_FVH" {
        return Err(corrupt("no firmware volume header (_FVH) at offset 40"));
    }
    let fv_len = u64::from_le_bytes(bytes[32..40].try_into().unwrap_or_default());
    if fv_len == 0 || fv_len > bytes.len() as u64 {
        return Err(corrupt("first firmware volume length exceeds the file"));
    }
    Ok(())
}

fn debian_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .output()
        .ok()?;
    let v = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_fv(len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[32..40].copy_from_slice(&(len as u64).to_le_bytes());
        b[40..44].copy_from_slice(b"_FVH");
        b
    }

    #[test]
    fn accepts_volume_and_rejects_garbage() {
        let p = Path::new("x.fd");
        check_flash_image(p, &fake_fv(128 * 1024)).unwrap();
        let mut bad = fake_fv(128 * 1024);
        bad[40] = b'X';
        assert!(matches!(
            check_flash_image(p, &bad),
            Err(FirmwareError::Corrupt { .. })
        ));
        assert!(check_flash_image(p, &fake_fv(128 * 1024)[..100_000]).is_err());
    }

    #[test]
    fn missing_dir_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = dev_firmware(dir.path()).unwrap_err();
        assert!(err.to_string().contains(DEV_CODE), "{err}");
    }

    #[test]
    fn debian_firmware_passes_when_installed() {
        // The real images are an oracle for the header check; ./scripts/setup installs them.
        let dir = Path::new(DEBIAN_OVMF_DIR);
        if !dir.join(DEV_CODE).exists() {
            panic!("{DEBIAN_OVMF_DIR}/{DEV_CODE} missing: run ./scripts/setup");
        }
        let fw = dev_firmware(dir).unwrap();
        assert!(fw.package.starts_with("ovmf "), "{}", fw.package);
    }
}
