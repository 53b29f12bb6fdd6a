//! The bootable disk: a GPT disk whose EFI system partition (FAT32) holds the UKI as
//! `EFI/BOOT/BOOTX64.EFI` (the removable-media path every UEFI firmware boots without
//! boot entries), followed by an empty partition for the guest's encrypted state
//! (labelled `cvm-state`; PID1 formats it on the first boot). Written without loop
//! devices or root, and reproducible: the disk and partition GUIDs and the FAT volume
//! id are derived from the UKI's digest and the layout.

pub mod fat;
pub mod gpt;

use std::fs::File;
use std::io::{Seek as _, SeekFrom, Write as _};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use fat::{FatError, SECTOR};
use gpt::{GptError, Guid, Partition};

/// Where the firmware looks for a boot loader on removable media (x86-64).
pub const BOOT_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// The state partition's GPT name, which PID1 finds it by.
pub const STATE_LABEL: &str = "cvm-state";
/// The ESP's GPT name.
pub const ESP_LABEL: &str = "cvm-esp";
/// Partitions start on 1 MiB boundaries.
const ALIGN: u64 = 1 << 20;

/// Partition sizes.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DiskLayout {
    /// EFI system partition, MiB.
    pub esp_mib: u64,
    /// State partition, MiB.
    pub state_mib: u64,
}

impl Default for DiskLayout {
    fn default() -> Self {
        Self {
            esp_mib: 64,
            state_mib: 256,
        }
    }
}

/// What a written disk is.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DiskInfo {
    /// The disk's GUID.
    pub disk_guid: String,
    /// The ESP's GUID.
    pub esp_guid: String,
    /// The state partition's GUID.
    pub state_guid: String,
    /// The partition sizes.
    pub layout: DiskLayout,
}

/// A disk that cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// The UKI does not fit the ESP.
    #[error(
        "the UKI ({uki} bytes) does not fit a {esp_mib} MiB EFI system partition; give a larger --esp-size"
    )]
    EspTooSmall {
        /// UKI bytes.
        uki: u64,
        /// ESP size.
        esp_mib: u64,
    },
    /// The state partition is too small for a LUKS2 volume with integrity.
    #[error("a state partition of {0} MiB is too small (at least 32 MiB)")]
    StateTooSmall(u64),
    /// The FAT file system.
    #[error("EFI system partition")]
    Fat(#[from] FatError),
    /// The partition table.
    #[error("partition table")]
    Gpt(#[from] GptError),
    /// Writing the file.
    #[error("write {path}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn derived(uki_digest: &[u8; 32], layout: &DiskLayout, role: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"cvm disk\0");
    h.update(uki_digest);
    h.update(layout.esp_mib.to_le_bytes());
    h.update(layout.state_mib.to_le_bytes());
    h.update(role.as_bytes());
    h.finalize().into()
}

/// Writes the disk holding `uki` to `path` (which must not exist: the caller writes to
/// a temporary name and renames).
pub fn write(path: &Path, uki: &[u8], layout: DiskLayout) -> Result<DiskInfo, DiskError> {
    if layout.state_mib < 32 {
        return Err(DiskError::StateTooSmall(layout.state_mib));
    }
    let uki_digest: [u8; 32] = Sha256::digest(uki).into();
    let esp_bytes = layout.esp_mib << 20;
    let volume = derived(&uki_digest, &layout, "esp volume");
    let fat_volume = fat::build(
        esp_bytes,
        (ALIGN / SECTOR) as u32,
        u32::from_le_bytes([volume[0], volume[1], volume[2], volume[3]]),
        "CVM-ESP",
        &[(BOOT_PATH, uki)],
    )
    .map_err(|e| match e {
        FatError::Full { .. } => DiskError::EspTooSmall {
            uki: uki.len() as u64,
            esp_mib: layout.esp_mib,
        },
        FatError::Size(_) if uki.len() as u64 >= esp_bytes => DiskError::EspTooSmall {
            uki: uki.len() as u64,
            esp_mib: layout.esp_mib,
        },
        e => DiskError::Fat(e),
    })?;

    let size = ALIGN + esp_bytes + (layout.state_mib << 20) + ALIGN;
    let sectors = size / SECTOR;
    let esp_first = ALIGN / SECTOR;
    let state_first = esp_first + esp_bytes / SECTOR;
    let guid = |role| Guid::derived(&derived(&uki_digest, &layout, role));
    let (disk_guid, esp_guid, state_guid) = (guid("disk"), guid("esp"), guid("state"));
    let parts = [
        Partition {
            type_guid: Guid::ESP,
            guid: esp_guid,
            first_lba: esp_first,
            last_lba: state_first - 1,
            name: ESP_LABEL.to_owned(),
        },
        Partition {
            type_guid: Guid::LINUX_LUKS,
            guid: state_guid,
            first_lba: state_first,
            last_lba: state_first + (layout.state_mib << 20) / SECTOR - 1,
            name: STATE_LABEL.to_owned(),
        },
    ];
    let mut pieces = gpt::write(sectors, disk_guid, &parts)?;
    pieces.push((ALIGN, fat_volume));

    let io = |source| DiskError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = File::options()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io)?;
    f.set_len(size).map_err(io)?;
    for (offset, bytes) in &pieces {
        write_sparse(&mut f, *offset, bytes).map_err(io)?;
    }
    f.sync_all().map_err(io)?;
    Ok(DiskInfo {
        disk_guid: disk_guid.to_string(),
        esp_guid: esp_guid.to_string(),
        state_guid: state_guid.to_string(),
        layout,
    })
}

/// Writes `bytes` at `offset`, skipping all-zero blocks so the file stays sparse.
fn write_sparse(f: &mut File, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    const BLOCK: usize = 64 << 10;
    for (i, block) in bytes.chunks(BLOCK).enumerate() {
        if block.iter().all(|b| *b == 0) {
            continue;
        }
        f.seek(SeekFrom::Start(offset + (i * BLOCK) as u64))?;
        f.write_all(block)?;
    }
    Ok(())
}

/// Whether `disk` holds the same protective MBR, primary GPT and EFI system partition
/// as `built` (the state partition and the backup table at the end are not compared:
/// the guest writes the one, and the other only mirrors the primary).
pub fn same_boot_partition(
    built: &Path,
    disk: &Path,
    layout: &DiskLayout,
) -> std::io::Result<bool> {
    use std::io::Read as _;
    let len = ALIGN + (layout.esp_mib << 20);
    let (mut a, mut b) = (File::open(built)?, File::open(disk)?);
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut left = len;
    while left > 0 {
        let n = left.min(x.len() as u64) as usize;
        a.read_exact(&mut x[..n])?;
        if b.read_exact(&mut y[..n]).is_err() || x[..n] != y[..n] {
            return Ok(false);
        }
        left -= n as u64;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_uki_larger_than_the_esp_is_named_and_nothing_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let uki = vec![1u8; 40 << 20];
        let layout = DiskLayout {
            esp_mib: 34,
            state_mib: 64,
        };
        let err = write(&path, &uki, layout).unwrap_err();
        assert!(
            matches!(err, DiskError::EspTooSmall { esp_mib: 34, .. }),
            "{err}"
        );
        assert!(!path.exists());
        let err = write(
            &path,
            b"MZ",
            DiskLayout {
                esp_mib: 64,
                state_mib: 8,
            },
        )
        .unwrap_err();
        assert!(matches!(err, DiskError::StateTooSmall(8)), "{err}");
    }

    #[test]
    fn the_boot_region_comparison_sees_one_byte() {
        let dir = tempfile::tempdir().unwrap();
        let layout = DiskLayout {
            esp_mib: 34,
            state_mib: 32,
        };
        let a = dir.path().join("a.raw");
        write(&a, b"MZ uki", layout).unwrap();
        let b = dir.path().join("b.raw");
        std::fs::copy(&a, &b).unwrap();
        assert!(same_boot_partition(&a, &b, &layout).unwrap());
        // The state partition is the guest's to change.
        let mut bytes = std::fs::read(&b).unwrap();
        bytes[((1 + 34) << 20) + 10] ^= 1;
        std::fs::write(&b, &bytes).unwrap();
        assert!(same_boot_partition(&a, &b, &layout).unwrap());
        bytes[(1 << 20) + 512 * 3000] ^= 1;
        std::fs::write(&b, &bytes).unwrap();
        assert!(!same_boot_partition(&a, &b, &layout).unwrap());
    }
}
