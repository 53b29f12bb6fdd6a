//! A FAT32 file system written in one pass, for the EFI system partition: a fixed
//! volume id and label, every timestamp at the DOS epoch (1980-01-01 00:00), files and
//! folders laid out contiguously in path order. Only 8.3 upper-case names (all an ESP
//! needs: `EFI/BOOT/BOOTX64.EFI`), so no long-name entries. Checked with `fsck.vfat`
//! and `mtools` in the tests.

use std::collections::BTreeMap;

/// Bytes per sector (the only size UEFI firmware must support on disks).
pub const SECTOR: u64 = 512;
const RESERVED_SECTORS: u64 = 32;
const FATS: u64 = 2;
const ROOT_CLUSTER: u32 = 2;
/// The fewest and most clusters a FAT32 volume may have.
const MIN_CLUSTERS: u64 = 65_525;
const MAX_CLUSTERS: u64 = 0x0FFF_FFF5;
const END_OF_CHAIN: u32 = 0x0FFF_FFFF;
const ATTR_DIRECTORY: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_VOLUME_ID: u8 = 0x08;
/// 1980-01-01 in the FAT date format (day 1, month 1, year 0).
const DOS_EPOCH_DATE: u16 = (1 << 5) | 1;

/// A file system that cannot be written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FatError {
    /// Too small or too large for FAT32 with these clusters.
    #[error("a FAT32 volume of {0} MiB is outside 33 MiB to 2 TiB")]
    Size(u64),
    /// A path component that is not an upper-case 8.3 name.
    #[error("{0:?} is not an upper-case 8.3 file name")]
    Name(String),
    /// The same path twice, or a file where a folder is needed.
    #[error("{0:?} is given twice or is both a file and a folder")]
    Conflict(String),
    /// The files do not fit.
    #[error("the files need {need} bytes but the volume holds {have}")]
    Full {
        /// Bytes the files and folders take, in whole clusters.
        need: u64,
        /// Bytes of the data region.
        have: u64,
    },
}

/// How a volume is laid out.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    sectors: u64,
    per_cluster: u64,
    fat_sectors: u64,
    clusters: u64,
}

impl Geometry {
    fn new(bytes: u64) -> Result<Self, FatError> {
        let sectors = bytes / SECTOR;
        let mib = bytes >> 20;
        // Microsoft's FAT32 table of cluster sizes by volume size.
        let per_cluster = match mib {
            0..=260 => 1,
            261..=8192 => 8,
            8193..=16384 => 16,
            16385..=32768 => 32,
            _ => 64,
        };
        // Microsoft's FAT size formula (it may round up by a sector or two).
        let tmp1 = sectors.saturating_sub(RESERVED_SECTORS);
        let tmp2 = (256 * per_cluster + FATS) / 2;
        let fat_sectors = tmp1.div_ceil(tmp2);
        let data = sectors.saturating_sub(RESERVED_SECTORS + FATS * fat_sectors);
        let clusters = data / per_cluster;
        if !(MIN_CLUSTERS..MAX_CLUSTERS).contains(&clusters) || sectors > u64::from(u32::MAX) {
            return Err(FatError::Size(mib));
        }
        Ok(Self {
            sectors,
            per_cluster,
            fat_sectors,
            clusters,
        })
    }

    fn cluster_bytes(&self) -> u64 {
        self.per_cluster * SECTOR
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        (RESERVED_SECTORS + FATS * self.fat_sectors + (u64::from(cluster) - 2) * self.per_cluster)
            * SECTOR
    }
}

/// The 11-byte directory name of an 8.3 component.
fn short_name(component: &str) -> Result<[u8; 11], FatError> {
    let bad = || FatError::Name(component.to_owned());
    let (base, ext) = component.split_once('.').unwrap_or((component, ""));
    let ok = |s: &str, max: usize| {
        s.len() <= max
            && s.bytes().all(|b| {
                b.is_ascii_uppercase() || b.is_ascii_digit() || b"_-~!#$%&'()@^{}".contains(&b)
            })
    };
    if base.is_empty() || !ok(base, 8) || !ok(ext, 3) {
        return Err(bad());
    }
    let mut name = [b' '; 11];
    name[..base.len()].copy_from_slice(base.as_bytes());
    name[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Ok(name)
}

enum Node<'a> {
    Dir(BTreeMap<String, Node<'a>>),
    File(&'a [u8]),
}

fn insert<'a>(
    root: &mut BTreeMap<String, Node<'a>>,
    path: &str,
    data: &'a [u8],
) -> Result<(), FatError> {
    let conflict = || FatError::Conflict(path.to_owned());
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let (file, dirs) = parts.split_last().ok_or_else(conflict)?;
    let mut dir = root;
    for part in dirs {
        short_name(part)?;
        let node = dir
            .entry((*part).to_owned())
            .or_insert_with(|| Node::Dir(BTreeMap::new()));
        dir = match node {
            Node::Dir(children) => children,
            Node::File(_) => return Err(conflict()),
        };
    }
    short_name(file)?;
    if dir.insert((*file).to_owned(), Node::File(data)).is_some() {
        return Err(conflict());
    }
    Ok(())
}

fn entry(name: [u8; 11], attr: u8, cluster: u32, size: u32) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(&name);
    e[11] = attr;
    if attr != ATTR_VOLUME_ID {
        // Created and accessed dates; times stay zero (midnight).
        e[16..18].copy_from_slice(&DOS_EPOCH_DATE.to_le_bytes());
        e[18..20].copy_from_slice(&DOS_EPOCH_DATE.to_le_bytes());
    }
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[24..26].copy_from_slice(&DOS_EPOCH_DATE.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// Writes the volume into `out` (its whole size, zeros beyond what is written).
struct Writer<'g> {
    geo: &'g Geometry,
    out: Vec<u8>,
    fat: Vec<u32>,
    next: u32,
}

impl Writer<'_> {
    /// Allocates a contiguous chain for `bytes` (at least one cluster) and returns its
    /// first cluster.
    fn allocate(&mut self, bytes: u64) -> Result<u32, FatError> {
        let count = bytes.div_ceil(self.geo.cluster_bytes()).max(1);
        let first = self.next;
        let end = u64::from(first) + count;
        if end > self.geo.clusters + 2 {
            return Err(FatError::Full {
                need: (end - 2) * self.geo.cluster_bytes(),
                have: self.geo.clusters * self.geo.cluster_bytes(),
            });
        }
        for c in first..end as u32 {
            self.fat[c as usize] = if u64::from(c) + 1 == end {
                END_OF_CHAIN
            } else {
                c + 1
            };
        }
        self.next = end as u32;
        Ok(first)
    }

    fn write_at(&mut self, cluster: u32, data: &[u8]) {
        let at = self.geo.cluster_offset(cluster) as usize;
        self.out[at..at + data.len()].copy_from_slice(data);
    }

    /// Writes a folder and everything below it into `cluster` (already allocated for
    /// its entries, `extra` leading entries included).
    fn dir(
        &mut self,
        cluster: u32,
        leading: Vec<[u8; 32]>,
        children: &BTreeMap<String, Node<'_>>,
    ) -> Result<(), FatError> {
        let mut entries = leading;
        for (name, node) in children {
            let short = short_name(name)?;
            match node {
                Node::File(data) => {
                    let size = u32::try_from(data.len()).map_err(|_| FatError::Full {
                        need: data.len() as u64,
                        have: u64::from(u32::MAX),
                    })?;
                    let first = if data.is_empty() {
                        0
                    } else {
                        let first = self.allocate(data.len() as u64)?;
                        self.write_at(first, data);
                        first
                    };
                    entries.push(entry(short, ATTR_ARCHIVE, first, size));
                }
                Node::Dir(grandchildren) => {
                    let sub = self.allocate(32 * (grandchildren.len() as u64 + 2))?;
                    entries.push(entry(short, ATTR_DIRECTORY, sub, 0));
                    // ".." of a folder in the root points at cluster 0, not the root's.
                    let parent = if cluster == ROOT_CLUSTER { 0 } else { cluster };
                    let dots = vec![
                        entry(*b".          ", ATTR_DIRECTORY, sub, 0),
                        entry(*b"..         ", ATTR_DIRECTORY, parent, 0),
                    ];
                    self.dir(sub, dots, grandchildren)?;
                }
            }
        }
        let bytes: Vec<u8> = entries.concat();
        self.write_at(cluster, &bytes);
        Ok(())
    }
}

/// A FAT32 volume of `size` bytes holding `files` (path with `/`, contents), with
/// volume id `volume_id` and an 11-character `label`, starting at sector `start` of
/// its disk (the boot sector's "hidden sectors").
pub fn build(
    size: u64,
    start: u32,
    volume_id: u32,
    label: &str,
    files: &[(&str, &[u8])],
) -> Result<Vec<u8>, FatError> {
    let geo = Geometry::new(size)?;
    let mut root = BTreeMap::new();
    for (path, data) in files {
        insert(&mut root, path, data)?;
    }
    let mut label11 = [b' '; 11];
    for (d, s) in label11.iter_mut().zip(label.bytes()) {
        *d = s.to_ascii_uppercase();
    }

    let mut w = Writer {
        geo: &geo,
        out: vec![0u8; (geo.sectors * SECTOR) as usize],
        fat: vec![0u32; geo.clusters as usize + 2],
        next: ROOT_CLUSTER,
    };
    w.fat[0] = 0x0FFF_FFF8; // media descriptor
    w.fat[1] = END_OF_CHAIN;
    let root_cluster = w.allocate(32 * (root.len() as u64 + 1))?;
    w.dir(
        root_cluster,
        vec![entry(label11, ATTR_VOLUME_ID, 0, 0)],
        &root,
    )?;

    let used = u64::from(w.next) - 2;
    let boot = boot_sector(&geo, start, volume_id, &label11);
    let info = fs_info(geo.clusters - used, w.next);
    let mut out = w.out;
    for base in [0usize, 6 * SECTOR as usize] {
        out[base..base + 512].copy_from_slice(&boot);
        out[base + 512..base + 1024].copy_from_slice(&info);
        // The third boot sector only carries the signature.
        out[base + 1024 + 510..base + 1024 + 512].copy_from_slice(&[0x55, 0xAA]);
    }
    let fat_bytes: Vec<u8> = w.fat.iter().flat_map(|e| e.to_le_bytes()).collect();
    for i in 0..FATS {
        let at = ((RESERVED_SECTORS + i * geo.fat_sectors) * SECTOR) as usize;
        out[at..at + fat_bytes.len()].copy_from_slice(&fat_bytes);
    }
    Ok(out)
}

fn boot_sector(geo: &Geometry, start: u32, volume_id: u32, label: &[u8; 11]) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    b[3..11].copy_from_slice(b"CVM     ");
    b[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes());
    b[13] = geo.per_cluster as u8;
    b[14..16].copy_from_slice(&(RESERVED_SECTORS as u16).to_le_bytes());
    b[16] = FATS as u8;
    b[21] = 0xF8; // fixed disk
    b[24..26].copy_from_slice(&32u16.to_le_bytes()); // sectors per track (unused)
    b[26..28].copy_from_slice(&64u16.to_le_bytes()); // heads (unused)
    b[28..32].copy_from_slice(&start.to_le_bytes());
    b[32..36].copy_from_slice(&(geo.sectors as u32).to_le_bytes());
    b[36..40].copy_from_slice(&(geo.fat_sectors as u32).to_le_bytes());
    b[44..48].copy_from_slice(&ROOT_CLUSTER.to_le_bytes());
    b[48..50].copy_from_slice(&1u16.to_le_bytes()); // FSInfo sector
    b[50..52].copy_from_slice(&6u16.to_le_bytes()); // backup boot sector
    b[64] = 0x80; // drive number
    b[66] = 0x29; // extended boot signature
    b[67..71].copy_from_slice(&volume_id.to_le_bytes());
    b[71..82].copy_from_slice(label);
    b[82..90].copy_from_slice(b"FAT32   ");
    // Not bootable from BIOS: the code is an endless loop, never reached under UEFI.
    b[90..92].copy_from_slice(&[0xEB, 0xFE]);
    b[510..512].copy_from_slice(&[0x55, 0xAA]);
    b
}

fn fs_info(free: u64, next: u32) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    b[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    b[488..492].copy_from_slice(&(free as u32).to_le_bytes());
    b[492..496].copy_from_slice(&next.to_le_bytes());
    b[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_are_checked() {
        assert_eq!(&short_name("BOOTX64.EFI").unwrap(), b"BOOTX64 EFI");
        assert_eq!(&short_name("EFI").unwrap(), b"EFI        ");
        for bad in ["bootx64.efi", "TOOLONGNAME", "A.EFIX", "", ".EFI", "A B"] {
            assert_eq!(short_name(bad), Err(FatError::Name(bad.into())), "{bad}");
        }
    }

    #[test]
    fn sizes_outside_fat32_are_refused() {
        assert_eq!(Geometry::new(16 << 20).unwrap_err(), FatError::Size(16));
        assert!(Geometry::new(64 << 20).is_ok());
    }

    #[test]
    fn conflicts_and_overflow_are_named() {
        let r = build(64 << 20, 0, 1, "ESP", &[("A/B", b"x"), ("A/B/C", b"y")]);
        assert_eq!(r.unwrap_err(), FatError::Conflict("A/B/C".into()));
        let big = vec![1u8; 65 << 20];
        assert!(matches!(
            build(64 << 20, 0, 1, "ESP", &[("BIG", &big)]),
            Err(FatError::Full { .. })
        ));
    }

    #[test]
    fn same_inputs_same_bytes() {
        let files: [(&str, &[u8]); 2] = [("EFI/BOOT/BOOTX64.EFI", b"pe"), ("EFI/X", b"")];
        assert_eq!(
            build(40 << 20, 0, 7, "ESP", &files).unwrap(),
            build(40 << 20, 0, 7, "ESP", &files).unwrap()
        );
    }
}
