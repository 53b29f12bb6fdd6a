//! Bad input on the host side: each gives one error naming the thing and a non-zero exit,
//! before anything boots, and leaves what was stored intact.

#![allow(clippy::unwrap_used)]

use cvm_vm_tests::{cvm, enabled, image};
use std::fs;

fn copy_image() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["bzImage", "initramfs.cpio.zst", "cmdline", "manifest.json"] {
        fs::copy(image().join(f), dir.path().join(f)).unwrap();
    }
    dir
}

fn fails_naming(args: &[&str], needle: &str) {
    let o = cvm(args);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: {stderr:?} does not name {needle:?}"
    );
}

#[test]
fn corrupt_or_missing_image_files_are_named() {
    if !enabled() {
        return;
    }
    let img = copy_image();
    let p = img.path().to_str().unwrap();
    let initramfs = img.path().join("initramfs.cpio.zst");
    let mut bytes = fs::read(&initramfs).unwrap();
    bytes.truncate(bytes.len() / 2);
    fs::write(&initramfs, &bytes).unwrap();
    fails_naming(&["run", "--image", p], "initramfs.cpio.zst is corrupt");
    fs::remove_file(&initramfs).unwrap();
    fails_naming(&["run", "--image", p], "initramfs.cpio.zst is missing");
    fs::remove_file(img.path().join("manifest.json")).unwrap();
    fails_naming(&["run", "--image", p], "manifest.json");
}

#[test]
fn missing_or_corrupt_firmware_is_named() {
    if !enabled() {
        return;
    }
    let fw = tempfile::tempdir().unwrap();
    let image = image().to_str().unwrap();
    fails_naming(
        &[
            "run",
            "--image",
            image,
            "--firmware",
            fw.path().to_str().unwrap(),
        ],
        "OVMF_CODE_4M.fd",
    );
    fs::write(fw.path().join("OVMF_CODE_4M.fd"), vec![0u8; 1 << 20]).unwrap();
    fails_naming(
        &[
            "run",
            "--image",
            image,
            "--firmware",
            fw.path().to_str().unwrap(),
        ],
        "is corrupt",
    );
}

#[test]
fn bad_kernel_is_named_and_the_previous_image_survives() {
    if !enabled() {
        return;
    }
    let img = copy_image();
    let out = img.path().to_str().unwrap();
    let before = fs::read(img.path().join("manifest.json")).unwrap();
    let garbage = img.path().join("not-a-kernel");
    fs::write(&garbage, vec![7u8; 8192]).unwrap();
    fails_naming(
        &["build", "--kernel", garbage.to_str().unwrap(), "--out", out],
        "is not a bzImage",
    );
    fails_naming(
        &["build", "--kernel", "/nonexistent/bzImage", "--out", out],
        "/nonexistent/bzImage",
    );
    fails_naming(
        &[
            "build",
            "--kernel",
            img.path().join("bzImage").to_str().unwrap(),
            "--init",
            "/nonexistent/init",
            "--out",
            out,
        ],
        "/nonexistent/init",
    );
    assert_eq!(
        fs::read(img.path().join("manifest.json")).unwrap(),
        before,
        "a failed build touched the image"
    );
}
