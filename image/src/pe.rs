//! PE/COFF headers, read from untrusted bytes: just what Authenticode hashing and UKI
//! assembly need (the COFF header, the optional header's layout fields, the data
//! directories and the section table). Never panics; every offset is checked.

/// A file that is not a PE image these helpers can work with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeError {
    /// The bytes end inside a header.
    #[error("PE image truncated in {0}")]
    Truncated(&'static str),
    /// No `MZ` or `PE\0\0` signature.
    #[error("not a PE image: {0}")]
    Signature(&'static str),
    /// An optional-header magic other than PE32 or PE32+.
    #[error("PE optional header magic {0:#x} is neither PE32 nor PE32+")]
    Magic(u16),
    /// A header or section points outside the file.
    #[error("PE {0} points outside the file")]
    OutOfBounds(&'static str),
}

/// One entry of the section table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The name, NULs trimmed (`.linux`).
    pub name: String,
    /// Bytes the loader maps.
    pub virtual_size: u32,
    /// Where the loader maps it, relative to the image base.
    pub virtual_address: u32,
    /// Bytes in the file (a multiple of the file alignment).
    pub raw_size: u32,
    /// Where those bytes start in the file.
    pub raw_ptr: u32,
}

impl Section {
    /// The section's bytes as the loader maps them: `virtual_size` bytes of the file
    /// data, or all of it when the section is shorter in the file (zero fill is not
    /// returned). This is what the systemd stub measures.
    pub fn data<'a>(&self, image: &'a [u8]) -> Result<&'a [u8], PeError> {
        let len = self.virtual_size.min(self.raw_size) as usize;
        let start = self.raw_ptr as usize;
        image
            .get(start..start.saturating_add(len))
            .ok_or(PeError::OutOfBounds("section"))
    }
}

/// Offsets and fields of a parsed PE image.
#[derive(Debug, Clone)]
pub struct Headers {
    /// Offset of the COFF file header (after `PE\0\0`).
    pub coff: usize,
    /// Offset of the optional header.
    pub opt: usize,
    /// Offset of the first data directory.
    pub dirs: usize,
    /// How many data directories the optional header has.
    pub n_dirs: usize,
    /// Offset of the section table.
    pub table: usize,
    /// `SizeOfHeaders`.
    pub size_of_headers: usize,
    /// `SectionAlignment`.
    pub section_alignment: u32,
    /// `FileAlignment`.
    pub file_alignment: u32,
    /// The sections, in table order.
    pub sections: Vec<Section>,
}

/// Offset of `CheckSum` in the optional header (same for PE32 and PE32+).
pub const CHECKSUM: usize = 64;
/// Offset of `SizeOfImage` in the optional header.
pub const SIZE_OF_IMAGE: usize = 56;
/// Offset of `SizeOfInitializedData` in the optional header.
pub const SIZE_OF_INITIALIZED_DATA: usize = 8;
/// Offset of `NumberOfSections` in the COFF header.
pub const NUMBER_OF_SECTIONS: usize = 2;
/// Index of the certificate-table data directory.
pub const CERTIFICATE_DIRECTORY: usize = 4;
/// Size of one section-table entry.
pub const SECTION_ENTRY: usize = 40;

pub(crate) fn u16_at(b: &[u8], at: usize, what: &'static str) -> Result<u16, PeError> {
    let s = b
        .get(at..at.saturating_add(2))
        .ok_or(PeError::Truncated(what))?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

pub(crate) fn u32_at(b: &[u8], at: usize, what: &'static str) -> Result<u32, PeError> {
    let s = b
        .get(at..at.saturating_add(4))
        .ok_or(PeError::Truncated(what))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl Headers {
    /// Parses the headers of `image`.
    pub fn parse(image: &[u8]) -> Result<Self, PeError> {
        if image.get(..2) != Some(b"MZ") {
            return Err(PeError::Signature("no MZ header"));
        }
        let pe = u32_at(image, 0x3c, "e_lfanew")? as usize;
        if image.get(pe..pe.saturating_add(4)) != Some(b"PE\0\0") {
            return Err(PeError::Signature("no PE signature"));
        }
        let coff = pe + 4;
        let n_sections = u16_at(image, coff + NUMBER_OF_SECTIONS, "NumberOfSections")? as usize;
        let opt_size = u16_at(image, coff + 16, "SizeOfOptionalHeader")? as usize;
        let opt = coff + 20;
        // The data directories start at 96 (PE32) or 112 (PE32+), preceded by
        // NumberOfRvaAndSizes.
        let dirs = match u16_at(image, opt, "optional header magic")? {
            0x10b => opt + 96,
            0x20b => opt + 112,
            m => return Err(PeError::Magic(m)),
        };
        let section_alignment = u32_at(image, opt + 32, "SectionAlignment")?;
        let file_alignment = u32_at(image, opt + 36, "FileAlignment")?;
        let size_of_headers = u32_at(image, opt + 60, "SizeOfHeaders")? as usize;
        let n_dirs = u32_at(image, dirs - 4, "NumberOfRvaAndSizes")? as usize;
        if size_of_headers > image.len() || opt + CHECKSUM + 4 > size_of_headers {
            return Err(PeError::OutOfBounds("SizeOfHeaders"));
        }
        let table = opt + opt_size;
        let mut sections = Vec::with_capacity(n_sections.min(96));
        for i in 0..n_sections {
            let s = table + i * SECTION_ENTRY;
            let name = image
                .get(s..s + 8)
                .ok_or(PeError::Truncated("section table"))?;
            let name = String::from_utf8_lossy(name)
                .trim_end_matches('\0')
                .to_owned();
            let section = Section {
                name,
                virtual_size: u32_at(image, s + 8, "VirtualSize")?,
                virtual_address: u32_at(image, s + 12, "VirtualAddress")?,
                raw_size: u32_at(image, s + 16, "SizeOfRawData")?,
                raw_ptr: u32_at(image, s + 20, "PointerToRawData")?,
            };
            let end = (section.raw_ptr as usize).checked_add(section.raw_size as usize);
            if section.raw_size != 0 && end.is_none_or(|end| end > image.len()) {
                return Err(PeError::OutOfBounds("section"));
            }
            sections.push(section);
        }
        Ok(Self {
            coff,
            opt,
            dirs,
            n_dirs,
            table,
            size_of_headers,
            section_alignment,
            file_alignment,
            sections,
        })
    }

    /// The (file offset, size) of data directory `index`, if the header has it.
    pub fn directory(&self, image: &[u8], index: usize) -> Result<Option<(u32, u32)>, PeError> {
        if index >= self.n_dirs {
            return Ok(None);
        }
        let at = self.dirs + index * 8;
        Ok(Some((
            u32_at(image, at, "data directory")?,
            u32_at(image, at + 4, "data directory")?,
        )))
    }
}

/// The PE checksum (the `CheckSum` field's algorithm, as `pefile` and the Windows image
/// loader compute it): a 16-bit folded sum of the file's 16-bit words with the checksum
/// field itself taken as zero, plus the file length.
pub fn checksum(image: &[u8], checksum_at: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, pair) in image.chunks(2).enumerate() {
        let at = i * 2;
        if at >= checksum_at && at < checksum_at + 4 {
            continue;
        }
        let word = u16::from_le_bytes([pair[0], pair.get(1).copied().unwrap_or(0)]);
        sum += u64::from(word);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(image.len() as u32)
}
