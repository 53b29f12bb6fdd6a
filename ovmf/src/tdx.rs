//! TDX metadata (the TDVF descriptor) of an `OVMF.inteltdx` image: the sections the VMM
//! adds to the TD at launch, and which of them are measured into MRTD.
//!
//! Layout (TDX Virtual Firmware design guide, "TDVF metadata"): `"TDVF"`, u32 length,
//! u32 version (1), u32 section count, then 32-byte sections of u32 data offset, u32 raw
//! size, u64 memory address, u64 memory size, u32 type, u32 attributes.

use crate::MetadataError;
use crate::table::{GuidTable, TDX_METADATA, metadata_block, read_u32, read_u64};

/// Section types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TdxSectionKind {
    /// Boot firmware volume (code).
    Bfv,
    /// Configuration firmware volume (variables).
    Cfv,
    /// TD hand-off block.
    TdHob,
    /// Temporary memory.
    TempMem,
    /// Permanent memory.
    PermMem,
    /// Payload (kernel).
    Payload,
    /// Payload parameters.
    PayloadParam,
}

impl TdxSectionKind {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Bfv,
            1 => Self::Cfv,
            2 => Self::TdHob,
            3 => Self::TempMem,
            4 => Self::PermMem,
            5 => Self::Payload,
            6 => Self::PayloadParam,
            _ => return None,
        })
    }
}

/// Attribute bit: the section's pages are extended into MRTD.
pub const ATTR_MR_EXTEND: u32 = 1;
/// Attribute bit: the pages are added after launch (TDH.MEM.PAGE.AUG), not measured.
pub const ATTR_PAGE_AUG: u32 = 2;

/// One TDVF section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdxSection {
    /// Offset of the section's bytes in the firmware file.
    pub data_offset: u32,
    /// Number of bytes in the file.
    pub raw_size: u32,
    /// Guest physical address.
    pub gpa: u64,
    /// Size in guest memory.
    pub memory_size: u64,
    /// Section type.
    pub kind: TdxSectionKind,
    /// Attribute bits ([`ATTR_MR_EXTEND`], [`ATTR_PAGE_AUG`]).
    pub attributes: u32,
}

/// Largest section accepted: TDVF volumes and temporary memory are a few MiB, and an
/// untrusted descriptor must not make a measurement walk billions of pages.
pub const MAX_SECTION_SIZE: u64 = 1 << 30;
/// TDVF sections live below 4 GiB.
const FOUR_GIB: u64 = 1 << 32;

const SIGNATURE: &[u8; 4] = b"TDVF";
const ITEM: usize = 32;

/// Parse the TDVF descriptor of a whole firmware image.
pub fn parse(image: &[u8], table: &GuidTable) -> Result<Vec<TdxSection>, MetadataError> {
    let bad = MetadataError::BadTdxMetadata;
    let block = metadata_block(
        image,
        table,
        TDX_METADATA,
        SIGNATURE,
        ITEM,
        bad,
        "no TDVF signature",
    )?;
    if block.version != 1 {
        return Err(bad("unsupported TDVF version"));
    }
    let mut sections = Vec::with_capacity(block.items.len());
    for item in block.items {
        let field32 = |o| read_u32(item, o).ok_or(bad("truncated section"));
        let field64 = |o| read_u64(item, o).ok_or(bad("truncated section"));
        let section = TdxSection {
            data_offset: field32(0)?,
            raw_size: field32(4)?,
            gpa: field64(8)?,
            memory_size: field64(16)?,
            kind: TdxSectionKind::from_u32(field32(24)?).ok_or(bad("unknown section type"))?,
            attributes: field32(28)?,
        };
        if section.memory_size > MAX_SECTION_SIZE
            || section
                .gpa
                .checked_add(section.memory_size)
                .is_none_or(|end| end > FOUR_GIB)
        {
            return Err(bad("section larger than 1 GiB or past 4 GiB"));
        }
        let end = section.data_offset as u64 + section.raw_size as u64;
        if end > image.len() as u64 {
            return Err(bad("section data outside the image"));
        }
        if !section.gpa.is_multiple_of(4096)
            || !section.memory_size.is_multiple_of(4096)
            || (section.raw_size as u64) > section.memory_size
        {
            return Err(bad("section not page aligned or larger than its memory"));
        }
        sections.push(section);
    }
    Ok(sections)
}
