//! A GUID partition table (UEFI 2.10 §5.3): protective MBR, primary header and entry
//! array at the start, their backup at the end. GUIDs are given by the caller (derived
//! from the inputs, so the table is reproducible). Checked with `sgdisk` in the tests.

use crate::disk::fat::SECTOR;

/// Entries in the array (the minimum the specification allows, 16 KiB).
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors the entry array takes.
const ARRAY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;
const HEADER_SIZE: u32 = 92;

/// A GUID in its textual byte order (as printed: `C12A7328-F81F-...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    /// The EFI system partition type.
    pub const ESP: Guid = Guid([
        0xC1, 0x2A, 0x73, 0x28, 0xF8, 0x1F, 0x11, 0xD2, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9,
        0x3B,
    ]);
    /// A LUKS volume (the Discoverable Partitions Specification's "Linux LUKS").
    pub const LINUX_LUKS: Guid = Guid([
        0xCA, 0x7D, 0x7C, 0xCB, 0x63, 0xED, 0x4C, 0x53, 0x86, 0x1C, 0x17, 0x42, 0x53, 0x60, 0x59,
        0xCC,
    ]);

    /// A version-8 (RFC 9562, vendor-defined) GUID from the first 16 bytes of `digest`.
    pub fn derived(digest: &[u8; 32]) -> Self {
        let mut g = [0u8; 16];
        g.copy_from_slice(&digest[..16]);
        g[6] = (g[6] & 0x0F) | 0x80;
        g[8] = (g[8] & 0x3F) | 0x80;
        Guid(g)
    }

    /// The on-disk (mixed-endian) bytes: the first three fields little-endian.
    pub fn to_disk(self) -> [u8; 16] {
        let g = self.0;
        let mut d = g;
        d[..4].copy_from_slice(&[g[3], g[2], g[1], g[0]]);
        d[4..6].copy_from_slice(&[g[5], g[4]]);
        d[6..8].copy_from_slice(&[g[7], g[6]]);
        d
    }
}

impl std::fmt::Display for Guid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = hex::encode_upper(self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }
}

/// One partition.
#[derive(Debug, Clone)]
pub struct Partition {
    /// Its type.
    pub type_guid: Guid,
    /// Its own GUID.
    pub guid: Guid,
    /// First sector.
    pub first_lba: u64,
    /// Last sector (inclusive).
    pub last_lba: u64,
    /// Its name (at most 36 UTF-16 units).
    pub name: String,
}

/// A table that cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GptError {
    /// A partition outside the usable sectors or overlapping another.
    #[error("partition {0:?} lies outside the disk's usable sectors or overlaps another")]
    Placement(String),
    /// A name longer than 36 UTF-16 units.
    #[error("partition name {0:?} is longer than 36 characters")]
    Name(String),
}

/// The first sector a partition may use.
pub fn first_usable() -> u64 {
    2 + ARRAY_SECTORS
}

/// The last sector a partition may use on a disk of `sectors`.
pub fn last_usable(sectors: u64) -> u64 {
    sectors - 2 - ARRAY_SECTORS
}

/// The table's sectors: `(offset, bytes)` pieces to write into a disk of `sectors`.
pub fn write(
    sectors: u64,
    disk_guid: Guid,
    parts: &[Partition],
) -> Result<Vec<(u64, Vec<u8>)>, GptError> {
    let mut array = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    let mut sorted: Vec<&Partition> = parts.iter().collect();
    sorted.sort_by_key(|p| p.first_lba);
    for pair in sorted.windows(2) {
        if pair[0].last_lba >= pair[1].first_lba {
            return Err(GptError::Placement(pair[1].name.clone()));
        }
    }
    for (i, p) in parts.iter().enumerate() {
        if p.first_lba < first_usable()
            || p.last_lba > last_usable(sectors)
            || p.last_lba < p.first_lba
        {
            return Err(GptError::Placement(p.name.clone()));
        }
        let name: Vec<u16> = p.name.encode_utf16().collect();
        if name.len() > 36 {
            return Err(GptError::Name(p.name.clone()));
        }
        let e = &mut array[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[..16].copy_from_slice(&p.type_guid.to_disk());
        e[16..32].copy_from_slice(&p.guid.to_disk());
        e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
        e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
        for (j, unit) in name.iter().enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
        }
    }
    let array_crc = crc32fast::hash(&array);
    let last = sectors - 1;
    let header = |current: u64, backup: u64, array_lba: u64| {
        let mut h = [0u8; SECTOR as usize];
        h[..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        h[24..32].copy_from_slice(&current.to_le_bytes());
        h[32..40].copy_from_slice(&backup.to_le_bytes());
        h[40..48].copy_from_slice(&first_usable().to_le_bytes());
        h[48..56].copy_from_slice(&last_usable(sectors).to_le_bytes());
        h[56..72].copy_from_slice(&disk_guid.to_disk());
        h[72..80].copy_from_slice(&array_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..HEADER_SIZE as usize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h.to_vec()
    };
    let backup_array = last - ARRAY_SECTORS;
    Ok(vec![
        (0, protective_mbr(sectors).to_vec()),
        (SECTOR, header(1, last, 2)),
        (2 * SECTOR, array.clone()),
        (backup_array * SECTOR, array),
        (last * SECTOR, header(last, 1, backup_array)),
    ])
}

fn protective_mbr(sectors: u64) -> [u8; 512] {
    let mut m = [0u8; 512];
    let e = &mut m[446..462];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    let size = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
    e[12..16].copy_from_slice(&size.to_le_bytes());
    m[510..512].copy_from_slice(&[0x55, 0xAA]);
    m
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn guid_text_and_disk_order() {
        assert_eq!(
            Guid::ESP.to_string(),
            "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
        );
        assert_eq!(&Guid::ESP.to_disk()[..4], &[0x28, 0x73, 0x2A, 0xC1]);
        let g = Guid::derived(&[0xFF; 32]);
        assert_eq!(g.0[6] >> 4, 8, "version 8");
        assert_eq!(g.0[8] >> 6, 0b10, "RFC variant");
    }

    #[test]
    fn overlaps_and_long_names_are_refused() {
        let p = |first, last, name: &str| Partition {
            type_guid: Guid::ESP,
            guid: Guid([1; 16]),
            first_lba: first,
            last_lba: last,
            name: name.into(),
        };
        let err = write(
            10_000,
            Guid([0; 16]),
            &[p(2048, 4000, "a"), p(4000, 5000, "b")],
        );
        assert_eq!(err.unwrap_err(), GptError::Placement("b".into()));
        let err = write(10_000, Guid([0; 16]), &[p(2048, 9990, "c")]);
        assert_eq!(err.unwrap_err(), GptError::Placement("c".into()));
        let long = "x".repeat(37);
        let err = write(10_000, Guid([0; 16]), &[p(2048, 4000, &long)]);
        assert_eq!(err.unwrap_err(), GptError::Name(long));
    }
}
