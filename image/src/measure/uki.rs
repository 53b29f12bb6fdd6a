//! PCR 11 of a unified kernel image (UKI): the systemd EFI stub measures each UKI
//! section it finds, in its fixed order, as two extends: sha256 of the section name
//! with its NUL, then sha256 of the section's contents. `.pcrsig` is never measured
//! (it holds signatures over these very values). Checked against `systemd-measure`.
//!
//! PCR 4 of a UKI boot is the Authenticode hash of the UKI file (see
//! [`super::authenticode`]); where it sits among the firmware's PCR 4 events depends on
//! the boot path and is confirmed by booting the UKI.

use sha2::{Digest as _, Sha256};

/// The sections the stub measures, in the order it measures them (systemd ≥ 254; the
/// 252 stub knows all but `.uname` and `.sbat`, in the same relative order).
pub const MEASURED_SECTIONS: [&str; 9] = [
    ".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".uname", ".sbat", ".pcrpkey",
];

/// A section that the stub would not measure, or given twice.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UkiError {
    /// Not one of [`MEASURED_SECTIONS`].
    #[error("UKI section {0} is not one the stub measures")]
    Unknown(String),
    /// The same section twice.
    #[error("UKI section {0} given twice")]
    Duplicate(String),
}

/// The PCR 11 value after the stub measured `sections` (name, contents), from zero.
pub fn pcr11(sections: &[(&str, &[u8])]) -> Result<[u8; 32], UkiError> {
    for (i, (name, _)) in sections.iter().enumerate() {
        if !MEASURED_SECTIONS.contains(name) {
            return Err(UkiError::Unknown((*name).to_owned()));
        }
        if sections[..i].iter().any(|(n, _)| n == name) {
            return Err(UkiError::Duplicate((*name).to_owned()));
        }
    }
    let mut pcr = [0u8; 32];
    let mut extend = |digest: &[u8]| {
        let mut h = Sha256::new();
        h.update(pcr);
        h.update(digest);
        pcr = h.finalize().into();
    };
    for wanted in MEASURED_SECTIONS {
        if let Some((name, data)) = sections.iter().find(|(n, _)| *n == wanted) {
            let mut with_nul = name.as_bytes().to_vec();
            with_nul.push(0);
            extend(&Sha256::digest(&with_nul));
            extend(&Sha256::digest(data));
        }
    }
    Ok(pcr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_the_stubs_not_the_callers() {
        let a = pcr11(&[(".linux", b"k"), (".cmdline", b"c")]).unwrap();
        let b = pcr11(&[(".cmdline", b"c"), (".linux", b"k")]).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, pcr11(&[(".linux", b"k")]).unwrap());
    }

    #[test]
    fn unknown_and_duplicate_sections_are_named() {
        assert_eq!(
            pcr11(&[(".pcrsig", b"")]),
            Err(UkiError::Unknown(".pcrsig".into()))
        );
        assert_eq!(
            pcr11(&[(".linux", b""), (".linux", b"")]),
            Err(UkiError::Duplicate(".linux".into()))
        );
    }
}
