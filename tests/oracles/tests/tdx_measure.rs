//! Our MRTD against an independent Python implementation (its own TDVF parser).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use cvm_image::measure::tdx::{PageOrder, TdxMeasureError, measure_mrtd};
use cvm_ovmf::pinned::{AMDSEV, FetchOptions, INTELTDX, PinnedFirmware, fetch};

fn pinned(fw: &PinnedFirmware, cache: &Path) -> PathBuf {
    let debs = std::env::var_os("CVM_FIRMWARE_DEBS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/firmware"),
        PathBuf::from,
    );
    fetch(
        fw,
        cache,
        &FetchOptions {
            download: true,
            local_dirs: vec![debs],
        },
    )
    .unwrap()
}

fn python(fw: &Path, order: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("mrtd.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(fw)
        .arg(order)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn mrtd_matches_the_python_oracle() {
    let cache = tempfile::tempdir().unwrap();
    for fw in [INTELTDX, AMDSEV] {
        let path = pinned(&fw, cache.path());
        let bytes = std::fs::read(&path).unwrap();
        let single = hex::encode(measure_mrtd(&bytes, PageOrder::SinglePass).unwrap());
        let two = hex::encode(measure_mrtd(&bytes, PageOrder::TwoPass).unwrap());
        assert_eq!(single, python(&path, "single"), "{}", fw.package);
        assert_eq!(two, python(&path, "two"), "{}", fw.package);
        assert_ne!(single, two);
    }
}

#[test]
fn mrtd_depends_on_measured_bytes_only() {
    let cache = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(pinned(&INTELTDX, cache.path())).unwrap();
    let before = measure_mrtd(&bytes, PageOrder::SinglePass).unwrap();
    // A byte in the variable store (CFV, not MR_EXTEND) does not change MRTD ...
    bytes[0x1000] ^= 1;
    assert_eq!(measure_mrtd(&bytes, PageOrder::SinglePass).unwrap(), before);
    // ... a byte of the boot firmware volume (BFV, MR_EXTEND) does.
    bytes[0x84000 + 0x1000] ^= 1;
    assert_ne!(measure_mrtd(&bytes, PageOrder::SinglePass).unwrap(), before);
    // No TDVF metadata: named.
    let dev = std::fs::read("/usr/share/OVMF/OVMF_CODE_4M.fd").unwrap();
    assert!(matches!(
        measure_mrtd(&dev, PageOrder::SinglePass),
        Err(TdxMeasureError::Metadata(_))
    ));
}

#[test]
fn the_recorded_mrtd_matches_the_python_oracle() {
    let Some(image) = std::env::var_os("CVM_TEST_IMAGE").map(PathBuf::from) else {
        eprintln!("skipped: set CVM_TEST_IMAGE to an image folder (./scripts/test does)");
        return;
    };
    let recorded: cvm_image::measurements::Measurements =
        serde_json::from_slice(&std::fs::read(image.join("measurements.json")).unwrap()).unwrap();
    let tdx = recorded.tdx.expect("the build records the tdx target");
    assert_eq!(tdx.firmware.sha256, INTELTDX.sha256);
    let cache = tempfile::tempdir().unwrap();
    assert_eq!(tdx.mrtd, python(&pinned(&INTELTDX, cache.path()), "single"));
    assert_eq!(
        tdx.not_modelled.keys().collect::<Vec<_>>(),
        ["rtmr0", "rtmr1", "rtmr2"]
    );
}
