//! The Intel TDX MRTD of a TD launched with a TDVF firmware.
//!
//! MRTD is one SHA-384 stream over the TDX module's records of the launch (TDX module
//! spec, TDH.MEM.PAGE.ADD and TDH.MR.EXTEND): for every page of every TDVF section
//! (unless the section is PAGE_AUG) a 128-byte `MEM.PAGE.ADD` record with its guest
//! address; and for sections with MR_EXTEND, for every 256-byte chunk a 128-byte
//! `MR.EXTEND` record followed by the chunk's bytes. Upstream KVM/QEMU measure page by
//! page (add, then extend its chunks): [`PageOrder::SinglePass`]. Older TDX stacks added
//! every page first: [`PageOrder::TwoPass`].
//!
//! RTMR0 covers the TD HOB, the variable store and QEMU's ACPI tables, which depend on
//! the VM shape; it is captured from a golden boot, not computed here.

use sha2::{Digest as _, Sha384};

use cvm_ovmf::tdx::{ATTR_MR_EXTEND, ATTR_PAGE_AUG};
use cvm_ovmf::{MetadataError, TdxSection};

const PAGE: u64 = 4096;
const CHUNK: usize = 256;

/// Order of the page-add and extend operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageOrder {
    /// Add then extend, page by page (upstream KVM and QEMU ≥ 8.2 with TDX).
    SinglePass,
    /// All page adds first, then all extends (older TDX stacks).
    TwoPass,
}

/// Firmware that cannot be measured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TdxMeasureError {
    /// The TDVF descriptor is missing or malformed.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// A measured section's bytes are missing from the file.
    #[error("TDVF section at {0:#x} is measured but has no data in the firmware file")]
    NoData(u64),
}

fn record(op: &[u8], gpa: u64) -> [u8; 128] {
    let mut r = [0u8; 128];
    r[..op.len()].copy_from_slice(op);
    r[16..24].copy_from_slice(&gpa.to_le_bytes());
    r
}

/// Compute MRTD for a whole firmware image.
pub fn measure_mrtd(firmware: &[u8], order: PageOrder) -> Result<[u8; 48], TdxMeasureError> {
    let sections = cvm_ovmf::parse_tdx(firmware)?;
    let mut h = Sha384::new();
    let add = |h: &mut Sha384, s: &TdxSection| {
        if s.attributes & ATTR_PAGE_AUG == 0 {
            for page in 0..s.memory_size / PAGE {
                h.update(record(b"MEM.PAGE.ADD", s.gpa + page * PAGE));
            }
        }
    };
    let extend = |h: &mut Sha384,
                  s: &TdxSection,
                  pages: std::ops::Range<u64>|
     -> Result<(), TdxMeasureError> {
        if s.attributes & ATTR_MR_EXTEND == 0 {
            return Ok(());
        }
        let start = s.data_offset as usize;
        let data = firmware
            .get(start..start + s.raw_size as usize)
            .ok_or(TdxMeasureError::NoData(s.gpa))?;
        for page in pages {
            // Bytes past the section's data in the file are zero in the TD.
            let base = (page * PAGE) as usize;
            let mut buf = [0u8; PAGE as usize];
            let avail = data.get(base..).unwrap_or(&[]);
            let n = avail.len().min(buf.len());
            buf[..n].copy_from_slice(&avail[..n]);
            for (i, chunk) in buf.chunks(CHUNK).enumerate() {
                h.update(record(
                    b"MR.EXTEND",
                    s.gpa + base as u64 + (i * CHUNK) as u64,
                ));
                h.update(chunk);
            }
        }
        Ok(())
    };
    match order {
        PageOrder::SinglePass => {
            for s in &sections {
                if s.attributes & ATTR_PAGE_AUG != 0 {
                    continue;
                }
                for page in 0..s.memory_size / PAGE {
                    h.update(record(b"MEM.PAGE.ADD", s.gpa + page * PAGE));
                    extend(&mut h, s, page..page + 1)?;
                }
            }
        }
        PageOrder::TwoPass => {
            for s in &sections {
                add(&mut h, s);
            }
            for s in &sections {
                extend(&mut h, s, 0..s.memory_size / PAGE)?;
            }
        }
    }
    Ok(h.finalize().into())
}
