//! SEV metadata of an `OVMF.amdsev` image: the guest memory ranges the VMM must
//! pre-validate or fill before launch, which shape the SNP launch digest.
//!
//! Layout (edk2 `OvmfPkg/ResetVector`, `SevMetadata`): `"ASEV"`, u32 length, u32 version,
//! u32 item count, then items of u32 GPA, u32 size, u32 type.

use crate::MetadataError;
use crate::table::{
    GuidTable, SEV_ES_RESET_BLOCK, SEV_HASH_TABLE, SEV_METADATA, metadata_block, read_u32,
};

/// What the VMM puts into a metadata range before launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SevSectionKind {
    /// Pre-validated zero pages (`SNP_SEC_MEM`, type 1).
    SnpSecMem,
    /// The SNP secrets page (type 2).
    SnpSecrets,
    /// The CPUID page (type 3).
    Cpuid,
    /// The SVSM calling-area page (type 4).
    SvsmCaa,
    /// The page holding the kernel/initrd/cmdline hashes table (type 0x10).
    KernelHashes,
}

impl SevSectionKind {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::SnpSecMem,
            2 => Self::SnpSecrets,
            3 => Self::Cpuid,
            4 => Self::SvsmCaa,
            0x10 => Self::KernelHashes,
            _ => return None,
        })
    }
}

/// One metadata range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevSection {
    /// Guest physical address.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// What goes there.
    pub kind: SevSectionKind,
}

/// Everything an SNP launch measurement needs from the firmware besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SevMetadata {
    /// The metadata ranges, in firmware order (empty ranges dropped).
    pub sections: Vec<SevSection>,
    /// Guest address of the AP reset vector (SEV-ES reset block).
    pub ap_reset_eip: u32,
    /// Guest address and size of the kernel hashes table, when the firmware has one.
    pub hash_table: Option<(u64, u64)>,
}

const SIGNATURE: &[u8; 4] = b"ASEV";
const ITEM: usize = 12;

/// Parse the SEV metadata of a whole firmware image.
pub fn parse(image: &[u8], table: &GuidTable) -> Result<SevMetadata, MetadataError> {
    let bad = MetadataError::BadSevMetadata;
    let block = metadata_block(
        image,
        table,
        SEV_METADATA,
        SIGNATURE,
        ITEM,
        bad,
        "no ASEV signature",
    )?;
    let mut sections = Vec::with_capacity(block.items.len());
    for item in block.items {
        let (gpa, size, kind) = (read_u32(item, 0), read_u32(item, 4), read_u32(item, 8));
        let (Some(gpa), Some(size), Some(kind)) = (gpa, size, kind) else {
            return Err(bad("truncated section"));
        };
        if size == 0 {
            continue; // a range this build leaves out (e.g. no SVSM)
        }
        let kind = SevSectionKind::from_u32(kind).ok_or(bad("unknown section type"))?;
        if !gpa.is_multiple_of(4096) || !size.is_multiple_of(4096) {
            return Err(bad("section not page aligned"));
        }
        sections.push(SevSection {
            gpa: gpa.into(),
            size: size.into(),
            kind,
        });
    }
    let ap_reset_eip = table.u32_at(SEV_ES_RESET_BLOCK, 0)?;
    let hash_table = match table.get(SEV_HASH_TABLE) {
        Some(_) => {
            let gpa = table.u32_at(SEV_HASH_TABLE, 0)?;
            let size = table.u32_at(SEV_HASH_TABLE, 4)?;
            (size != 0).then_some((gpa.into(), size.into()))
        }
        None => None,
    };
    Ok(SevMetadata {
        sections,
        ap_reset_eip,
        hash_table,
    })
}
