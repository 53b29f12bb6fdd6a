//! The GUID table at the end of an OVMF image (edk2 `ResetVector`): entries of
//! `data ‖ u16 size ‖ GUID`, read backwards from a footer entry that sits 32 bytes before
//! the end of the file. SEV and TDX firmware publish their metadata locations here.

use crate::MetadataError;
use crate::guid::Guid;

/// The footer entry's GUID.
pub const FOOTER: Guid = Guid::from_fields(
    0x96b582de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);
/// Entry: u32 offset from the end of the file of the SEV metadata (`ASEV`).
pub const SEV_METADATA: Guid = Guid::from_fields(
    0xdc886566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);
/// Entry: u32 offset from the end of the file of the TDX metadata (`TDVF`).
pub const TDX_METADATA: Guid = Guid::from_fields(
    0xe47a6535,
    0x984a,
    0x4798,
    [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2],
);
/// Entry: u32 guest address of the SEV-ES AP reset vector.
pub const SEV_ES_RESET_BLOCK: Guid = Guid::from_fields(
    0x00f771de,
    0x1a7e,
    0x4fcb,
    [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
);
/// Entry: u32 guest address and u32 size of the kernel hashes table (`kernel-hashes=on`).
pub const SEV_HASH_TABLE: Guid = Guid::from_fields(
    0x7255371f,
    0x3a3b,
    0x4b04,
    [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
);

const ENTRY_HEADER: usize = 18; // u16 size + GUID
const FOOTER_FROM_END: usize = 32;

/// The parsed table: (GUID, data) in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuidTable {
    entries: Vec<(Guid, Vec<u8>)>,
}

impl GuidTable {
    /// Parse the table of a whole firmware image.
    pub fn parse(image: &[u8]) -> Result<GuidTable, MetadataError> {
        let footer_at = image
            .len()
            .checked_sub(FOOTER_FROM_END + ENTRY_HEADER)
            .ok_or(MetadataError::NoGuidTable(
                "image is smaller than the footer",
            ))?;
        let (size, guid) = header(image, footer_at)?;
        if guid != FOOTER {
            return Err(MetadataError::NoGuidTable(
                "no footer GUID 32 bytes before the end",
            ));
        }
        let table_len = size
            .checked_sub(ENTRY_HEADER)
            .ok_or(MetadataError::NoGuidTable(
                "footer size is smaller than its header",
            ))?;
        let start = footer_at
            .checked_sub(table_len)
            .ok_or(MetadataError::NoGuidTable("footer size exceeds the image"))?;
        let mut rest = &image[start..footer_at];
        let mut entries = Vec::new();
        while rest.len() >= ENTRY_HEADER {
            let (size, guid) = header(rest, rest.len() - ENTRY_HEADER)?;
            if size < ENTRY_HEADER || size > rest.len() {
                return Err(MetadataError::BadEntry {
                    guid,
                    reason: "size out of range",
                });
            }
            let data = rest[rest.len() - size..rest.len() - ENTRY_HEADER].to_vec();
            entries.push((guid, data));
            rest = &rest[..rest.len() - size];
        }
        entries.reverse();
        Ok(GuidTable { entries })
    }

    /// The data of entry `guid`, if present.
    pub fn get(&self, guid: Guid) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|(g, _)| *g == guid)
            .map(|(_, d)| d.as_slice())
    }

    /// Entry `guid` read as a little-endian u32 at `offset`.
    pub fn u32_at(&self, guid: Guid, offset: usize) -> Result<u32, MetadataError> {
        let data = self.get(guid).ok_or(MetadataError::MissingEntry(guid))?;
        read_u32(data, offset).ok_or(MetadataError::BadEntry {
            guid,
            reason: "too short",
        })
    }
}

/// A metadata block that a GUID-table entry locates by its offset from the end of the
/// image: a 16-byte header (signature, u32 length, u32 version, u32 item count) and the
/// items that follow it.
pub(crate) struct MetadataBlock<'a> {
    /// The header's version field.
    pub version: u32,
    /// The items, each `item_len` bytes.
    pub items: Vec<&'a [u8]>,
}

/// Most items a metadata block may declare.
const MAX_ITEMS: usize = 64;

/// Locate and split the block of `guid`; `bad` wraps a reason in the caller's error,
/// `no_signature` is the reason given when `signature` is absent.
pub(crate) fn metadata_block<'a>(
    image: &'a [u8],
    table: &GuidTable,
    guid: Guid,
    signature: &[u8; 4],
    item_len: usize,
    bad: fn(&'static str) -> MetadataError,
    no_signature: &'static str,
) -> Result<MetadataBlock<'a>, MetadataError> {
    const HEADER: usize = 16;
    let from_end = table.u32_at(guid, 0)? as usize;
    let start = image
        .len()
        .checked_sub(from_end)
        .ok_or(bad("offset points before the image"))?;
    let header = image
        .get(start..start + HEADER)
        .ok_or(bad("header outside the image"))?;
    if &header[..4] != signature {
        return Err(bad(no_signature));
    }
    let version = read_u32(header, 8).ok_or(bad("truncated header"))?;
    let count = read_u32(header, 12).ok_or(bad("truncated header"))? as usize;
    if count > MAX_ITEMS {
        return Err(bad("more than 64 sections"));
    }
    let items = (0..count)
        .map(|i| {
            let at = start + HEADER + i * item_len;
            image
                .get(at..at + item_len)
                .ok_or(bad("section list outside the image"))
        })
        .collect::<Result<_, _>>()?;
    Ok(MetadataBlock { version, items })
}

fn header(bytes: &[u8], at: usize) -> Result<(usize, Guid), MetadataError> {
    let h = bytes
        .get(at..at + ENTRY_HEADER)
        .ok_or(MetadataError::NoGuidTable("entry header outside the image"))?;
    let size = u16::from_le_bytes([h[0], h[1]]) as usize;
    let mut g = [0u8; 16];
    g.copy_from_slice(&h[2..]);
    Ok((size, Guid(g)))
}

/// Little-endian u32 at `offset`, if in bounds.
pub fn read_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Little-endian u64 at `offset`, if in bounds.
pub fn read_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    let b = bytes.get(offset..offset.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    Some(u64::from_le_bytes(a))
}
