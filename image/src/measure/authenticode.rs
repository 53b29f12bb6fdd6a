//! The Authenticode hash of a PE/COFF image (Microsoft's "Windows Authenticode Portable
//! Executable Signature Format"): what UEFI firmware extends into PCR 4 for every EFI
//! application it starts, and what `pesign -h` prints. The checksum field, the
//! certificate-table directory entry and the certificate table itself are left out;
//! sections are hashed in file order. Untrusted bytes: never panics.

use sha2::Digest;

pub use crate::pe::PeError;
use crate::pe::{CERTIFICATE_DIRECTORY, CHECKSUM, Headers};

/// The Authenticode digest of `image` with hash `D`.
pub fn authenticode<D: Digest>(image: &[u8]) -> Result<Vec<u8>, PeError> {
    let headers = Headers::parse(image)?;
    let checksum = headers.opt + CHECKSUM;
    let size_of_headers = headers.size_of_headers;

    let mut h = D::new();
    h.update(&image[..checksum]);
    let (cert_size, after_checksum) = match headers.directory(image, CERTIFICATE_DIRECTORY)? {
        // Skip the certificate table's directory entry, and later its data.
        Some((_, size)) => {
            let entry = headers.dirs + CERTIFICATE_DIRECTORY * 8;
            if entry + 8 > size_of_headers {
                return Err(PeError::OutOfBounds("certificate directory"));
            }
            h.update(&image[checksum + 4..entry]);
            (size as usize, entry + 8)
        }
        None => (0, checksum + 4),
    };
    h.update(&image[after_checksum..size_of_headers]);

    let mut raw: Vec<(usize, usize)> = headers
        .sections
        .iter()
        .filter(|s| s.raw_size != 0)
        .map(|s| (s.raw_ptr as usize, s.raw_size as usize))
        .collect();
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
