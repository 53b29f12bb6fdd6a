//! The pinned SEV and TDX firmware from the local package copies (../shared/firmware):
//! fetched and verified, their metadata parsed, and tampered twins refused.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::PathBuf;

use cvm_ovmf::pinned::{AMDSEV, FetchOptions, INTELTDX, fetch};
use cvm_ovmf::{MetadataError, SevSectionKind, TdxSectionKind, parse_sev, parse_tdx, tdx};

/// Local copies of the pinned packages: $CVM_FIRMWARE_DEBS or ../shared/firmware. When
/// they are absent, fetch() downloads the pinned versions instead.
fn debs_dir() -> PathBuf {
    std::env::var_os("CVM_FIRMWARE_DEBS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/firmware"),
        PathBuf::from,
    )
}

fn local() -> FetchOptions {
    FetchOptions {
        download: true,
        local_dirs: vec![debs_dir()],
    }
}

/// A genuine .deb: the local copy, or the one fetch() downloaded into a cache.
fn good_deb(fw: &cvm_ovmf::pinned::PinnedFirmware, cache: &std::path::Path) -> PathBuf {
    let name = format!("{}_{}_all.deb", fw.package, fw.version);
    let local_copy = debs_dir().join(&name);
    if local_copy.exists() {
        return local_copy;
    }
    fetch(fw, cache, &local()).unwrap();
    cache.join("firmware/debs").join(name)
}

fn image(fw: &cvm_ovmf::pinned::PinnedFirmware) -> Vec<u8> {
    let cache = tempfile::tempdir().unwrap();
    let path = fetch(fw, cache.path(), &local()).unwrap();
    fs::read(path).unwrap()
}

#[test]
fn fetch_verifies_caches_and_refuses_tampered_copies() {
    let cache = tempfile::tempdir().unwrap();
    let path = fetch(&AMDSEV, cache.path(), &local()).unwrap();
    assert!(path.ends_with("OVMF.amdsev.fd"));
    // Cached: found again with no source at all.
    assert_eq!(
        fetch(&AMDSEV, cache.path(), &FetchOptions::default()).unwrap(),
        path
    );

    // A tampered cache entry is discarded, and with no good source the error says why.
    let mut bytes = fs::read(&path).unwrap();
    bytes[1000] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let err = fetch(&AMDSEV, cache.path(), &FetchOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("discarded") && err.contains("ovmf-amdsev 2026.08+ds-2"),
        "{err}"
    );

    // A tampered .deb is refused by its hash.
    let bad_dir = tempfile::tempdir().unwrap();
    let deb = format!("{}_{}_all.deb", INTELTDX.package, INTELTDX.version);
    let deb_cache = tempfile::tempdir().unwrap();
    let mut deb_bytes = fs::read(good_deb(&INTELTDX, deb_cache.path())).unwrap();
    let last = deb_bytes.len() - 1;
    deb_bytes[last] ^= 0xff;
    fs::write(bad_dir.path().join(&deb), &deb_bytes).unwrap();
    let opts = FetchOptions {
        download: false,
        local_dirs: vec![bad_dir.path().to_owned()],
    };
    let err = fetch(&INTELTDX, cache.path(), &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not the pinned 87123a9b"), "{err}");

    // The good copy repairs the cache.
    assert_eq!(fetch(&AMDSEV, cache.path(), &local()).unwrap(), path);
}

#[test]
fn amdsev_metadata() {
    let img = image(&AMDSEV);
    let m = parse_sev(&img).unwrap();
    let got: Vec<(u64, u64, SevSectionKind)> =
        m.sections.iter().map(|s| (s.gpa, s.size, s.kind)).collect();
    assert_eq!(
        got,
        [
            (0x800000, 0x9000, SevSectionKind::SnpSecMem),
            (0x80a000, 0x3000, SevSectionKind::SnpSecMem),
            (0x80d000, 0x1000, SevSectionKind::SnpSecrets),
            (0x80e000, 0x1000, SevSectionKind::Cpuid),
            (0x80f000, 0x1000, SevSectionKind::SvsmCaa),
            (0x811000, 0x1f000, SevSectionKind::SnpSecMem),
            (0x810000, 0x1000, SevSectionKind::KernelHashes),
        ]
    );
    assert_eq!(m.ap_reset_eip, 0x80b004);
    assert_eq!(m.hash_table, Some((0x810c00, 0x400)));
}

#[test]
fn inteltdx_metadata() {
    let img = image(&INTELTDX);
    let s = parse_tdx(&img).unwrap();
    assert_eq!(s.len(), 6);
    assert_eq!(
        (s[0].kind, s[0].gpa, s[0].raw_size, s[0].attributes),
        (
            TdxSectionKind::Bfv,
            0xffc84000,
            0x37c000,
            tdx::ATTR_MR_EXTEND
        )
    );
    assert_eq!(
        (s[1].kind, s[1].gpa, s[1].memory_size, s[1].attributes),
        (TdxSectionKind::Cfv, 0xffc00000, 0x84000, 0)
    );
    assert_eq!((s[4].kind, s[4].gpa), (TdxSectionKind::TdHob, 0x809000));
    // The TDX build carries no kernel hashes table; the SEV build is also TDX-capable.
    assert_eq!(parse_sev(&img).unwrap().hash_table, None);
    assert_eq!(parse_tdx(&image(&AMDSEV)).unwrap().len(), 7);
}

#[test]
fn tampered_twins_are_refused_by_name() {
    let img = image(&AMDSEV);
    let n = img.len();
    // No footer GUID.
    let mut t = img.clone();
    t[n - 32 - 16] ^= 1;
    assert!(matches!(parse_sev(&t), Err(MetadataError::NoGuidTable(_))));
    // Broken ASEV signature (the metadata sits 0x5c4 bytes before the end).
    let mut t = img.clone();
    t[n - 0x5c4] = b'X';
    assert_eq!(
        parse_sev(&t),
        Err(MetadataError::BadSevMetadata("no ASEV signature"))
    );
    // Broken TDVF signature.
    let mut t = img.clone();
    t[n - 0xa60] = b'X';
    assert_eq!(
        parse_tdx(&t),
        Err(MetadataError::BadTdxMetadata("no TDVF signature"))
    );
    // A section claiming 2^40 bytes of memory (section 0's memory size is at +16+16).
    let mut t = img.clone();
    let at = n - 0xa60 + 16 + 16;
    t[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert_eq!(
        parse_tdx(&t),
        Err(MetadataError::BadTdxMetadata(
            "section larger than 1 GiB or past 4 GiB"
        ))
    );
    // Truncated images and a plain OVMF without SEV metadata.
    assert!(parse_sev(&img[..n / 2]).is_err());
    assert!(parse_tdx(&img[..100]).is_err());
    assert!(parse_sev(&[]).is_err());
    let dev = fs::read("/usr/share/OVMF/OVMF_CODE_4M.fd").unwrap();
    assert!(parse_sev(&dev).is_err());
}

#[test]
fn corrupted_metadata_never_panics() {
    // Flip bytes across the GUID table and both metadata blocks: parsing either fails
    // with an error or yields a result, but never panics or reads out of bounds.
    let img = image(&AMDSEV);
    let n = img.len();
    let mut state: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..4000 {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pos = n - 1 - (state >> 33) as usize % 0xb00;
        let mut t = img.clone();
        t[pos] = (state >> 13) as u8;
        let _ = parse_sev(&t);
        let _ = parse_tdx(&t);
    }
}
