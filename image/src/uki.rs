//! Unified kernel image (UKI) assembly: the systemd EFI stub (Debian's
//! `systemd-boot-efi`) with the kernel, initramfs, command line, os-release and kernel
//! release appended as PE sections, the way `ukify` lays them out. Deterministic: the
//! output depends only on the inputs' bytes (the stub's own timestamp is kept).
//!
//! At boot the stub measures every section it knows into PCR 11 (see
//! [`crate::measure::uki`]) and hands the kernel its initrd through the
//! `LINUX_INITRD_MEDIA` device path, so the kernel's EFI stub measures the initrd and
//! the command line into PCR 9 as in a direct boot.

use std::path::{Path, PathBuf};

use crate::pe::{
    CERTIFICATE_DIRECTORY, CHECKSUM, Headers, NUMBER_OF_SECTIONS, PeError, SECTION_ENTRY,
    SIZE_OF_IMAGE, SIZE_OF_INITIALIZED_DATA, checksum, u32_at,
};

/// Where Debian's `systemd-boot-efi` puts the x86-64 stub.
pub const DEFAULT_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Initialized, readable data: what `ukify` marks every added section as.
const DATA_SECTION: u32 = 0x4000_0040;

/// The parts a UKI is made of, besides the stub.
#[derive(Debug, Clone, Copy)]
pub struct UkiParts<'a> {
    /// The bzImage (a PE with the kernel's own EFI stub).
    pub kernel: &'a [u8],
    /// The initramfs.
    pub initrd: &'a [u8],
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The os-release file of the appliance.
    pub osrel: &'a str,
    /// The kernel release (`uname -r`), when the kernel says it.
    pub uname: Option<&'a str>,
}

/// A UKI that cannot be assembled.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    /// The stub file is missing or unreadable.
    #[error("read the EFI stub {path} (install systemd-boot-efi from bookworm-backports)")]
    ReadStub {
        /// The stub's path.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The stub or the kernel is not a PE image.
    #[error("{what} is not a usable PE image")]
    Pe {
        /// `stub` or `kernel`.
        what: &'static str,
        /// Why.
        #[source]
        source: PeError,
    },
    /// The stub carries a signature; appending sections would invalidate it.
    #[error("the EFI stub is signed; give the unsigned stub and sign the UKI instead")]
    SignedStub,
    /// The stub already has one of the sections we add.
    #[error("the EFI stub already has a {0} section")]
    StubHasSection(String),
    /// The stub's header area cannot hold the extra section headers.
    #[error("the EFI stub has no room for {0} more section headers")]
    NoHeaderRoom(usize),
    /// The result would not fit the 32-bit PE fields.
    #[error("the UKI would exceed the PE format's 4 GiB limit")]
    TooLarge,
    /// Signing the UKI failed.
    #[error("sign the UKI with {key}: {detail}")]
    Sign {
        /// The signing key file.
        key: String,
        /// What went wrong (the signer's own message when it ran).
        detail: String,
    },
}

/// A Secure Boot signing key and its certificate (PEM files), user-supplied.
#[derive(Debug, Clone)]
pub struct Signing {
    /// Private key.
    pub key: PathBuf,
    /// Certificate (the one enrolled in the firmware's `db`, or issued under it).
    pub cert: PathBuf,
}

/// Sign `uki` for Secure Boot: an Authenticode SHA-256 signature by `signing`, with
/// `signing_time` (seconds since the epoch, `SOURCE_DATE_EPOCH`) as its signing time, so
/// the same inputs give the same signed bytes. The Authenticode digest, which the
/// firmware measures into PCR 4, leaves the signature out and so does not change.
///
/// `osslsigncode` signs: it is packaged in Debian and, unlike `sbsign`, lets the signing
/// time be fixed.
pub fn sign(uki: &[u8], signing: &Signing, signing_time: u64) -> Result<Vec<u8>, UkiError> {
    let fail = |detail: String| UkiError::Sign {
        key: signing.key.display().to_string(),
        detail,
    };
    for (what, path) in [("key", &signing.key), ("certificate", &signing.cert)] {
        if !path.is_file() {
            return Err(fail(format!("signing {what} {} not found", path.display())));
        }
    }
    let dir = tempfile::tempdir().map_err(|e| fail(format!("temporary folder: {e}")))?;
    let (unsigned, signed) = (dir.path().join("uki.efi"), dir.path().join("signed.efi"));
    std::fs::write(&unsigned, uki)
        .map_err(|e| fail(format!("write {}: {e}", unsigned.display())))?;
    let out = std::process::Command::new("osslsigncode")
        .args(["sign", "-h", "sha256", "-time", &signing_time.to_string()])
        .arg("-key")
        .arg(&signing.key)
        .arg("-certs")
        .arg(&signing.cert)
        .arg("-in")
        .arg(&unsigned)
        .arg("-out")
        .arg(&signed)
        .output()
        .map_err(|e| {
            fail(format!(
                "run osslsigncode ({e}): install it (./scripts/setup)"
            ))
        })?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let text = if text.trim().is_empty() {
            String::from_utf8_lossy(&out.stdout)
        } else {
            text
        };
        return Err(fail(format!("osslsigncode failed: {}", text.trim())));
    }
    std::fs::read(&signed).map_err(|e| fail(format!("read {}: {e}", signed.display())))
}

fn align(value: u64, to: u32) -> u64 {
    let to = u64::from(to.max(1));
    value.div_ceil(to) * to
}

/// Reads the stub at `path`.
pub fn read_stub(path: &Path) -> Result<Vec<u8>, UkiError> {
    std::fs::read(path).map_err(|source| UkiError::ReadStub {
        path: path.display().to_string(),
        source,
    })
}

/// The kernel release string of a bzImage (`uname -r` of the kernel it boots), from
/// the setup header's `kernel_version` pointer.
pub fn kernel_release(kernel: &[u8]) -> Option<String> {
    let ptr = u16::from_le_bytes([*kernel.get(0x20e)?, *kernel.get(0x20f)?]);
    let start = usize::from(ptr) + 0x200;
    let rest = kernel.get(start..)?;
    let end = rest.iter().position(|b| *b == 0 || *b == b' ')?;
    let release = std::str::from_utf8(&rest[..end]).ok()?;
    (!release.is_empty()).then(|| release.to_owned())
}

/// The UKI: `stub` with the parts appended as sections, in `ukify`'s order (the kernel
/// last).
pub fn assemble(stub: &[u8], parts: &UkiParts<'_>) -> Result<Vec<u8>, UkiError> {
    let pe = |what| move |source| UkiError::Pe { what, source };
    Headers::parse(parts.kernel).map_err(pe("kernel"))?;
    let h = Headers::parse(stub).map_err(pe("stub"))?;
    if h.directory(stub, CERTIFICATE_DIRECTORY)
        .map_err(pe("stub"))?
        .is_some_and(|(_, size)| size != 0)
    {
        return Err(UkiError::SignedStub);
    }
    let mut added: Vec<(&str, &[u8])> = vec![
        (".osrel", parts.osrel.as_bytes()),
        (".cmdline", parts.cmdline.as_bytes()),
    ];
    if let Some(uname) = parts.uname {
        added.push((".uname", uname.as_bytes()));
    }
    added.extend([(".initrd", parts.initrd), (".linux", parts.kernel)]);
    if let Some((name, _)) = added
        .iter()
        .find(|(name, _)| h.sections.iter().any(|s| s.name == *name))
    {
        return Err(UkiError::StubHasSection((*name).to_owned()));
    }
    let table_end = h.table + (h.sections.len() + added.len()) * SECTION_ENTRY;
    let first_data = h
        .sections
        .iter()
        .filter(|s| s.raw_size != 0)
        .map(|s| s.raw_ptr as usize)
        .min()
        .unwrap_or(h.size_of_headers);
    if table_end > h.size_of_headers.min(first_data) {
        return Err(UkiError::NoHeaderRoom(added.len()));
    }

    let mut out = stub.to_vec();
    let mut va = h
        .sections
        .iter()
        .map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size.max(s.raw_size)))
        .max()
        .unwrap_or(0);
    let mut initialized = u64::from(
        u32_at(
            stub,
            h.opt + SIZE_OF_INITIALIZED_DATA,
            "SizeOfInitializedData",
        )
        .map_err(pe("stub"))?,
    );
    for (i, (name, data)) in added.iter().enumerate() {
        va = align(va, h.section_alignment);
        let raw_ptr = align(out.len() as u64, h.file_alignment);
        let raw_size = align(data.len() as u64, h.file_alignment);
        let fits = |v: u64| u32::try_from(v).map_err(|_| UkiError::TooLarge);
        let mut entry = [0u8; SECTION_ENTRY];
        entry[..name.len()].copy_from_slice(name.as_bytes());
        entry[8..12].copy_from_slice(&fits(data.len() as u64)?.to_le_bytes());
        entry[12..16].copy_from_slice(&fits(va)?.to_le_bytes());
        entry[16..20].copy_from_slice(&fits(raw_size)?.to_le_bytes());
        entry[20..24].copy_from_slice(&fits(raw_ptr)?.to_le_bytes());
        entry[36..40].copy_from_slice(&DATA_SECTION.to_le_bytes());
        let at = h.table + (h.sections.len() + i) * SECTION_ENTRY;
        out[at..at + SECTION_ENTRY].copy_from_slice(&entry);

        out.resize(raw_ptr as usize, 0);
        out.extend_from_slice(data);
        out.resize((raw_ptr + raw_size) as usize, 0);
        va += data.len() as u64;
        initialized += raw_size;
        fits(out.len() as u64)?;
    }
    let count = u16::try_from(h.sections.len() + added.len()).map_err(|_| UkiError::TooLarge)?;
    put(&mut out, h.coff + NUMBER_OF_SECTIONS, &count.to_le_bytes());
    let size_of_image =
        u32::try_from(align(va, h.section_alignment)).map_err(|_| UkiError::TooLarge)?;
    put(
        &mut out,
        h.opt + SIZE_OF_IMAGE,
        &size_of_image.to_le_bytes(),
    );
    let initialized = u32::try_from(initialized).map_err(|_| UkiError::TooLarge)?;
    put(
        &mut out,
        h.opt + SIZE_OF_INITIALIZED_DATA,
        &initialized.to_le_bytes(),
    );
    let sum = checksum(&out, h.opt + CHECKSUM);
    put(&mut out, h.opt + CHECKSUM, &sum.to_le_bytes());
    Ok(out)
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    out[at..at + bytes.len()].copy_from_slice(bytes);
}

/// The sections of a UKI the stub measures, with the bytes it measures, in file order.
pub fn measured_sections(uki: &[u8]) -> Result<Vec<(String, Vec<u8>)>, PeError> {
    let h = Headers::parse(uki)?;
    h.sections
        .iter()
        .filter(|s| crate::measure::uki::MEASURED_SECTIONS.contains(&s.name.as_str()))
        .map(|s| Ok((s.name.clone(), s.data(uki)?.to_vec())))
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn release_comes_from_the_setup_header() {
        let mut k = vec![0u8; 0x400];
        k[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        k[0x300..0x317].copy_from_slice(b"6.12.57-cvm (root@b) #1");
        assert_eq!(kernel_release(&k).as_deref(), Some("6.12.57-cvm"));
        assert_eq!(kernel_release(&k[..0x300]), None);
    }

    #[test]
    fn non_pe_kernel_is_named() {
        let parts = UkiParts {
            kernel: b"not a kernel",
            initrd: b"",
            cmdline: "",
            osrel: "",
            uname: None,
        };
        let err = assemble(b"MZ", &parts).unwrap_err();
        assert!(err.to_string().contains("kernel"), "{err}");
    }
}
