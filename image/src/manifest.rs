//! `manifest.json`: what an image folder holds, with the sha256 of every artifact and of
//! every file inside the initramfs, and the versions of its inputs.

use serde::{Deserialize, Serialize};

/// Bumped on incompatible changes of this format.
pub const MANIFEST_SCHEMA: u32 = 1;

/// The manifest of one image folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_SCHEMA`].
    pub schema: u32,
    /// The timestamp every archive entry carries (`SOURCE_DATE_EPOCH`).
    pub source_date_epoch: u64,
    /// The kernel.
    pub kernel: Artifact,
    /// Where the kernel came from: `linux-source-6.12 <debian version>` or `prebuilt`.
    pub kernel_source: String,
    /// SHA-256 of the kernel `.config` when the kernel was built here.
    pub kernel_config_sha256: Option<String>,
    /// The compressed initramfs.
    pub initramfs: Artifact,
    /// The kernel command line file (no trailing newline).
    pub cmdline: Artifact,
    /// The command line itself.
    pub cmdline_text: String,
    /// The firmware the image is meant to boot with on the `qemu` platform.
    pub firmware: Option<FirmwareInfo>,
    /// Every regular file inside the initramfs.
    pub initramfs_files: Vec<FileEntry>,
    /// The unified kernel image, when the build made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uki: Option<UkiArtifact>,
    /// The GPT disk holding the UKI, when the build made one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskArtifact>,
    /// The reference values of every target (`measurements.json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measurements: Option<Artifact>,
}

/// The UKI and what went into it besides the kernel, initramfs and command line.
// No deny_unknown_fields: serde does not support it together with flatten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UkiArtifact {
    /// The file.
    #[serde(flatten)]
    pub artifact: Artifact,
    /// SHA-256 of the systemd EFI stub it was assembled from.
    pub stub_sha256: String,
    /// Its `.osrel` section.
    pub osrel: String,
    /// Its `.uname` section, when the kernel states its release.
    pub uname: Option<String>,
    /// sha256 of the certificate file whose key signed it for Secure Boot, if signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_cert_sha256: Option<String>,
}

/// The disk and its layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskArtifact {
    /// The file.
    #[serde(flatten)]
    pub artifact: Artifact,
    /// GUIDs and partition sizes.
    #[serde(flatten)]
    pub info: crate::disk::DiskInfo,
}

/// One file of the image folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// File name inside the image folder.
    pub file: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// One file inside the initramfs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Absolute path in the guest.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// The firmware an image was built for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareInfo {
    /// Package and version it comes from.
    pub package: String,
    /// SHA-256 of the code image.
    pub code_sha256: String,
}

impl Manifest {
    /// The manifest entry of an initramfs file.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.initramfs_files.iter().find(|f| f.path == path)
    }
}
