//! Our PE and UKI measurements against the tools users already trust: `pesign -h` for
//! the Authenticode hash (of the image's bzImage, unsigned and signed), and
//! `systemd-measure calculate` for PCR 11. Both run on every `./scripts/test`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use cvm_image::measure::authenticode::authenticode;
use cvm_image::measure::uki::pcr11;
use sha2::{Digest as _, Sha256};

mod common;
use common::test_image;

fn pesign_hash(path: &Path) -> String {
    let out = Command::new("pesign")
        .args(["-h", "-i"])
        .arg(path)
        .output()
        .expect("pesign (run ./scripts/setup)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.trim().strip_prefix("hash: ").unwrap().to_owned()
}

#[test]
fn authenticode_matches_pesign_unsigned_and_signed() {
    let Some(image) = test_image() else { return };
    let kernel = image.join("bzImage");
    let bytes = std::fs::read(&kernel).unwrap();
    assert_eq!(
        hex::encode(authenticode::<Sha256>(&bytes).unwrap()),
        pesign_hash(&kernel)
    );

    // Signed with a throwaway key: the certificate table is left out of the hash.
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = throwaway_cert(dir.path(), "test");
    let signed = dir.path().join("signed.efi");
    let ok = Command::new("osslsigncode")
        .args(["sign", "-certs"])
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .arg("-in")
        .arg(&kernel)
        .arg("-out")
        .arg(&signed)
        .output()
        .expect("osslsigncode (run ./scripts/setup)");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let signed_bytes = std::fs::read(&signed).unwrap();
    assert_ne!(signed_bytes, bytes);
    assert_eq!(
        hex::encode(authenticode::<Sha256>(&signed_bytes).unwrap()),
        pesign_hash(&signed)
    );
}

#[test]
fn uki_pcr11_matches_systemd_measure() {
    let Some(image) = test_image() else { return };
    let dir = tempfile::tempdir().unwrap();
    let linux = std::fs::read(image.join("bzImage")).unwrap();
    let initrd = std::fs::read(image.join("initramfs.cpio.zst")).unwrap();
    let cmdline = std::fs::read(image.join("cmdline")).unwrap();
    let osrel = b"ID=cvm\nVERSION_ID=1\n".to_vec();
    let osrel_path = dir.path().join("os-release");
    std::fs::write(&osrel_path, &osrel).unwrap();
    let out = Command::new("/usr/lib/systemd/systemd-measure")
        .arg("calculate")
        .arg(format!("--linux={}", image.join("bzImage").display()))
        .arg(format!(
            "--initrd={}",
            image.join("initramfs.cpio.zst").display()
        ))
        .arg(format!("--cmdline={}", image.join("cmdline").display()))
        .arg(format!("--osrel={}", osrel_path.display()))
        .args(["--bank=sha256", "--phase=enter-initrd"])
        .output()
        .expect("systemd-measure (systemd)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let theirs = text
        .lines()
        .find_map(|l| l.strip_prefix("11:sha256="))
        .unwrap()
        .to_owned();
    // systemd-measure models a systemd boot: after the sections, systemd-pcrphase
    // extends the phase name. Our PID1 extends no phase, so ours stops before it.
    let sections = pcr11(&[
        (".linux", &linux),
        (".osrel", &osrel),
        (".cmdline", &cmdline),
        (".initrd", &initrd),
    ])
    .unwrap();
    let mut h = Sha256::new();
    h.update(sections);
    h.update(Sha256::digest(b"enter-initrd"));
    assert_eq!(hex::encode(h.finalize()), theirs);
}

fn throwaway_cert(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (key, cert) = (
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pem")),
    );
    let o = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
        ])
        .arg(format!("/CN={name}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success());
    (key, cert)
}

fn sbverify(cert: &Path, efi: &Path) -> bool {
    Command::new("sbverify")
        .arg("--cert")
        .arg(cert)
        .arg(efi)
        .output()
        .expect("sbverify (sbsigntool, ./scripts/setup)")
        .status
        .success()
}

#[test]
fn signed_uki_verifies_is_reproducible_and_measures_as_unsigned() {
    use cvm_image::uki::{Signing, sign};
    let Some(image) = test_image() else { return };
    let dir = tempfile::tempdir().unwrap();
    let unsigned = std::fs::read(image.join("uki.efi")).unwrap();
    let (key, cert) = throwaway_cert(dir.path(), "db");
    let (_, other) = throwaway_cert(dir.path(), "other");
    let signing = Signing {
        key: key.clone(),
        cert: cert.clone(),
    };
    let signed = sign(&unsigned, &signing, 1_700_000_000).unwrap();
    assert_eq!(signed, sign(&unsigned, &signing, 1_700_000_000).unwrap());
    let path = dir.path().join("signed.efi");
    std::fs::write(&path, &signed).unwrap();
    assert!(sbverify(&cert, &path));
    // Twins: another certificate, and a signed UKI with one byte of the kernel changed.
    assert!(!sbverify(&other, &path));
    let mut tampered = signed.clone();
    let at = signed.len() / 2;
    tampered[at] ^= 1;
    let tampered_path = dir.path().join("tampered.efi");
    std::fs::write(&tampered_path, &tampered).unwrap();
    assert!(!sbverify(&cert, &tampered_path));
    // What the firmware and the stub measure does not include the signature.
    assert_eq!(pesign_hash(&path), pesign_hash(&image.join("uki.efi")));
    let (a, b) = (
        cvm_image::measure::qemu::uki_events(&unsigned).unwrap(),
        cvm_image::measure::qemu::uki_events(&signed).unwrap(),
    );
    assert_eq!(a.events, b.events);
    // A missing key is named.
    let missing = Signing {
        key: dir.path().join("nope.key"),
        cert,
    };
    let err = sign(&unsigned, &missing, 0).unwrap_err().to_string();
    assert!(err.contains("nope.key"), "{err}");
}
