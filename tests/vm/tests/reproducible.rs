//! Two image builds from the same inputs are byte-identical.

#![allow(clippy::unwrap_used)]

use cvm_vm_tests::{cvm, enabled, image};
use std::fs;

#[test]
fn image_build_is_reproducible() {
    if !enabled() {
        return;
    }
    let kernel = image().join("bzImage");
    let dir = tempfile::tempdir().unwrap();
    let outs = [dir.path().join("a"), dir.path().join("b")];
    for out in &outs {
        let o = cvm(&[
            "build",
            "--kernel",
            kernel.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for file in [
        "initramfs.cpio.zst",
        "manifest.json",
        "cmdline",
        "bzImage",
        "uki.efi",
        "disk.raw",
        "measurements.json",
    ] {
        let a = fs::read(outs[0].join(file)).unwrap();
        let b = fs::read(outs[1].join(file)).unwrap();
        assert!(
            a == b,
            "{file} differs between two builds of the same inputs"
        );
    }
    // And the inputs matter: another command line gives another manifest.
    let c = dir.path().join("c");
    let o = cvm(&[
        "build",
        "--kernel",
        kernel.to_str().unwrap(),
        "--out",
        c.to_str().unwrap(),
        "--cmdline",
        "console=ttyS0",
    ]);
    assert!(o.status.success());
    assert_ne!(
        fs::read(c.join("manifest.json")).unwrap(),
        fs::read(outs[0].join("manifest.json")).unwrap()
    );
}
