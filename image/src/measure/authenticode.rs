//! The Authenticode hash of a PE/COFF image (Microsoft's "Windows Authenticode Portable
//! Executable Signature Format"): what UEFI firmware extends into PCR 4 for every EFI
//! application it starts, and what `pesign -h` prints. The checksum field, the
//! certificate-table directory entry and the certificate table itself are left out;
//! sections are hashed in file order. Untrusted bytes: never panics.

use sha2::Digest;

/// A file that is not a PE image this hash can be computed for.
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

fn u16_at(b: &[u8], at: usize, what: &'static str) -> Result<u16, PeError> {
    let s = b.get(at..at + 2).ok_or(PeError::Truncated(what))?;
    Ok(u16::from_le_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize, what: &'static str) -> Result<u32, PeError> {
    let s = b.get(at..at + 4).ok_or(PeError::Truncated(what))?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// The Authenticode digest of `image` with hash `D`.
pub fn authenticode<D: Digest>(image: &[u8]) -> Result<Vec<u8>, PeError> {
    if image.get(..2) != Some(b"MZ") {
        return Err(PeError::Signature("no MZ header"));
    }
    let pe = u32_at(image, 0x3c, "e_lfanew")? as usize;
    if image.get(pe..pe + 4) != Some(b"PE\0\0") {
        return Err(PeError::Signature("no PE signature"));
    }
    let coff = pe + 4;
    let sections = u16_at(image, coff + 2, "NumberOfSections")? as usize;
    let opt_size = u16_at(image, coff + 16, "SizeOfOptionalHeader")? as usize;
    let opt = coff + 20;
    let magic = u16_at(image, opt, "optional header magic")?;
    // Offsets inside the optional header: the data directories start at 96 (PE32) or
    // 112 (PE32+), preceded by NumberOfRvaAndSizes.
    let dirs = match magic {
        0x10b => opt + 96,
        0x20b => opt + 112,
        m => return Err(PeError::Magic(m)),
    };
    let checksum = opt + 64;
    let size_of_headers = u32_at(image, opt + 60, "SizeOfHeaders")? as usize;
    let n_dirs = u32_at(image, dirs - 4, "NumberOfRvaAndSizes")? as usize;
    if size_of_headers > image.len() || checksum + 4 > size_of_headers {
        return Err(PeError::OutOfBounds("SizeOfHeaders"));
    }

    let mut h = D::new();
    h.update(&image[..checksum]);
    let (cert_size, after_checksum) = if n_dirs > 4 {
        // Directory 4 is the certificate table: skip its entry, and later its data.
        let cert_dir = dirs + 4 * 8;
        if cert_dir + 8 > size_of_headers {
            return Err(PeError::OutOfBounds("certificate directory"));
        }
        h.update(&image[checksum + 4..cert_dir]);
        let size = u32_at(image, cert_dir + 4, "certificate table size")? as usize;
        (size, cert_dir + 8)
    } else {
        (0, checksum + 4)
    };
    h.update(&image[after_checksum..size_of_headers]);

    let table = opt
        .checked_add(opt_size)
        .ok_or(PeError::OutOfBounds("section table"))?;
    let mut raw: Vec<(usize, usize)> = Vec::with_capacity(sections.min(96));
    for i in 0..sections {
        let s = table + i * 40;
        let size = u32_at(image, s + 16, "SizeOfRawData")? as usize;
        let ptr = u32_at(image, s + 20, "PointerToRawData")? as usize;
        if size == 0 {
            continue;
        }
        if ptr.checked_add(size).is_none_or(|end| end > image.len()) {
            return Err(PeError::OutOfBounds("section"));
        }
        raw.push((ptr, size));
    }
    raw.sort_unstable();
    let mut hashed = size_of_headers;
    for (ptr, size) in raw {
        h.update(&image[ptr..ptr + size]);
        hashed += size;
    }
    // Data after the last section that is not the certificate table.
    let end = image.len().saturating_sub(cert_size);
    if end > hashed {
        h.update(&image[hashed..end]);
    }
    Ok(h.finalize().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Sha256;

    #[test]
    fn non_pe_input_is_named() {
        assert_eq!(
            authenticode::<Sha256>(b"hello"),
            Err(PeError::Signature("no MZ header"))
        );
        let mut mz = vec![0u8; 0x40];
        mz[..2].copy_from_slice(b"MZ");
        mz[0x3c] = 0xff;
        assert_eq!(
            authenticode::<Sha256>(&mz),
            Err(PeError::Signature("no PE signature"))
        );
    }
}
