//! The UKI, the GPT disk and every export read back by tools that do not share our
//! code: `pesign` and `systemd-measure` (UKI), `sgdisk` (partition table), `fsck.vfat`
//! and `mtools` (the EFI system partition), `qemu-img` (qcow2 and VHD) and GNU `tar`
//! (the GCE archive). They run on the image `./scripts/test` built (`CVM_TEST_IMAGE`).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

use cvm_image::export::{self, Format};
use cvm_image::measure::authenticode::authenticode;
use cvm_image::measure::uki::pcr11;
use cvm_image::uki::measured_sections;
use sha2::{Digest as _, Sha256};

mod common;
use common::test_image;

fn manifest(image: &Path) -> cvm_image::Manifest {
    serde_json::from_slice(&std::fs::read(image.join("manifest.json")).unwrap()).unwrap()
}

fn run(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e} (run ./scripts/setup)"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn uki_holds_the_image_and_measures_as_systemd_and_pesign_say() {
    let Some(image) = test_image() else { return };
    let uki_path = image.join("uki.efi");
    let uki = std::fs::read(&uki_path).unwrap();
    let sections = measured_sections(&uki).unwrap();
    let get = |name: &str| {
        sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .unwrap_or_else(|| panic!("UKI has no {name} section"))
    };
    assert_eq!(get(".linux"), std::fs::read(image.join("bzImage")).unwrap());
    assert_eq!(
        get(".initrd"),
        std::fs::read(image.join("initramfs.cpio.zst")).unwrap()
    );
    assert_eq!(
        get(".cmdline"),
        std::fs::read(image.join("cmdline")).unwrap()
    );
    let m = manifest(&image);
    let recorded = m.uki.as_ref().unwrap();
    assert_eq!(get(".osrel"), recorded.osrel.as_bytes());
    assert_eq!(
        Some(String::from_utf8(get(".uname")).unwrap()),
        recorded.uname
    );

    // Authenticode (PCR 4 of the UKI) as pesign computes it.
    let ours = hex::encode(authenticode::<Sha256>(&uki).unwrap());
    let theirs = text(&run("pesign", &["-h", "-i", uki_path.to_str().unwrap()]));
    assert_eq!(theirs.trim().strip_prefix("hash: ").unwrap(), ours);

    // PCR 11 of the sections bookworm's systemd-measure knows (252: not .uname or
    // .sbat; those two are confirmed by the UEFI boot test), from the UKI's bytes.
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["calculate".to_owned()];
    let mut known: Vec<(&str, &[u8])> = Vec::new();
    for (name, data) in &sections {
        let flag = name.trim_start_matches('.');
        if !["linux", "osrel", "cmdline", "initrd"].contains(&flag) {
            continue;
        }
        let path = dir.path().join(flag);
        std::fs::write(&path, data).unwrap();
        args.push(format!("--{flag}={}", path.display()));
        known.push((name.as_str(), data.as_slice()));
    }
    args.extend(["--bank=sha256".into(), "--phase=enter-initrd".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = text(&run("/usr/lib/systemd/systemd-measure", &args));
    let theirs = out
        .lines()
        .find_map(|l| l.strip_prefix("11:sha256="))
        .unwrap();
    // systemd-measure adds systemd-pcrphase's extend of the phase name.
    let mut h = Sha256::new();
    h.update(pcr11(&known).unwrap());
    h.update(Sha256::digest(b"enter-initrd"));
    assert_eq!(hex::encode(h.finalize()), theirs);
}

#[test]
fn disk_table_and_esp_read_back_with_sgdisk_fsck_and_mtools() {
    let Some(image) = test_image() else { return };
    let disk = image.join("disk.raw");
    let d = disk.to_str().unwrap();
    let m = manifest(&image);
    let info = &m.disk.as_ref().unwrap().info;

    let verify = text(&run("sgdisk", &["--verify", d]));
    assert!(verify.contains("No problems found"), "{verify}");
    let table = text(&run("sgdisk", &["--print", d]));
    assert!(
        table.contains(&format!("Disk identifier (GUID): {}", info.disk_guid)),
        "{table}"
    );
    for (n, code, name, guid) in [
        (1, "EF00", "cvm-esp", &info.esp_guid),
        (2, "8309", "cvm-state", &info.state_guid),
    ] {
        let part = text(&run("sgdisk", &[&format!("--info={n}"), d]));
        assert!(
            part.contains(&format!("Partition unique GUID: {guid}")),
            "{part}"
        );
        assert!(
            part.contains(&format!("Partition name: '{name}'")),
            "{part}"
        );
        let typed = text(&run("sgdisk", &["--print", d]));
        assert!(
            typed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(&n.to_string()) && l.contains(code)),
            "partition {n} is not of type {code}: {typed}"
        );
    }

    // The ESP alone, as fsck.vfat reads a partition.
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp.img");
    let bytes = std::fs::read(&disk).unwrap();
    let esp_bytes = &bytes[1 << 20..(1 << 20) + (info.layout.esp_mib << 20) as usize];
    std::fs::write(&esp, esp_bytes).unwrap();
    let fsck = run("fsck.vfat", &["-n", "-v", esp.to_str().unwrap()]);
    let report = text(&fsck);
    assert!(report.contains("2 FATs, 32 bit entries"), "{report}");
    assert!(report.contains("2048 hidden sectors"), "{report}");
    let listing = text(&run("mdir", &["-i", esp.to_str().unwrap(), "::/EFI/BOOT"]));
    assert!(listing.contains("BOOTX64  EFI"), "{listing}");
    let copied = dir.path().join("BOOTX64.EFI");
    run(
        "mcopy",
        &[
            "-i",
            esp.to_str().unwrap(),
            "::/EFI/BOOT/BOOTX64.EFI",
            copied.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(copied).unwrap(),
        std::fs::read(image.join("uki.efi")).unwrap()
    );
    // And a cut cluster chain is something fsck notices (the check can fail): clusters
    // 2, 3 and 4 are the root, EFI and BOOT folders, so 5 starts the UKI; end its chain
    // there, in both FATs.
    let mut bad = esp_bytes.to_vec();
    let fat_len = u32::from_le_bytes(bad[36..40].try_into().unwrap()) as usize * 512;
    for fat in [32 * 512, 32 * 512 + fat_len] {
        bad[fat + 5 * 4..fat + 6 * 4].copy_from_slice(&0x0FFF_FFFFu32.to_le_bytes());
    }
    let bad_path = dir.path().join("bad.img");
    std::fs::write(&bad_path, bad).unwrap();
    let out = Command::new("timeout")
        .args(["60", "fsck.vfat", "-n", bad_path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "fsck.vfat did not report the cut chain: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn exports_read_back_with_qemu_img_and_tar() {
    let Some(image) = test_image() else { return };
    let disk = image.join("disk.raw");
    let size = std::fs::metadata(&disk).unwrap().len();
    assert_eq!(size % (1 << 20), 0, "disk is not whole MiB");
    let dir = tempfile::tempdir().unwrap();
    let out = |f: Format| dir.path().join(f.default_file());
    let id = [0x11; 16];
    for (_, f) in Format::ALL {
        export::export(&disk, f, &out(f), false, 1_700_000_000, id).unwrap();
    }

    assert_eq!(
        std::fs::read(out(Format::Raw)).unwrap(),
        std::fs::read(&disk).unwrap()
    );
    let d = disk.to_str().unwrap();
    run(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "qcow2",
            d,
            out(Format::Qcow2).to_str().unwrap(),
        ],
    );
    let vhd = out(Format::AzureVhd);
    assert_eq!(std::fs::metadata(&vhd).unwrap().len(), size + 512);
    // qemu reads the size from the footer, not from CHS geometry, when told to (what
    // Azure does).
    let opts = format!(
        "driver=vpc,force_size_calc=current_size,file.filename={}",
        vhd.display()
    );
    let info: serde_json::Value = serde_json::from_str(&text(&run(
        "qemu-img",
        &["info", "--output=json", "--image-opts", &opts],
    )))
    .unwrap();
    assert_eq!(info["virtual-size"], size);
    assert_eq!(info["format"], "vpc");
    run(
        "qemu-img",
        &[
            "compare",
            "--image-opts",
            &format!("driver=raw,file.filename={d}"),
            &opts,
        ],
    );

    let tgz = out(Format::GcpTar);
    let listing = text(&run("tar", &["-tvzf", tgz.to_str().unwrap()]));
    let line = listing.lines().next().unwrap();
    assert!(line.ends_with(" disk.raw"), "{listing}");
    assert!(line.contains(&size.to_string()), "{listing}");
    assert_eq!(listing.lines().count(), 1, "{listing}");
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir(&unpacked).unwrap();
    run(
        "tar",
        &[
            "-xzSf",
            tgz.to_str().unwrap(),
            "-C",
            unpacked.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(unpacked.join("disk.raw")).unwrap(),
        std::fs::read(&disk).unwrap()
    );
    let features: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("disk.guest-os-features.json")).unwrap(),
    )
    .unwrap();
    let types: Vec<&str> = features["guestOsFeatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, export::GCP_GUEST_OS_FEATURES);

    // Same inputs, same bytes; and an existing file is never replaced unasked.
    let again = dir.path().join("again.tar.gz");
    export::export(&disk, Format::GcpTar, &again, false, 1_700_000_000, id).unwrap();
    assert_eq!(std::fs::read(&again).unwrap(), std::fs::read(&tgz).unwrap());
    let before = std::fs::read(&vhd).unwrap();
    let err = export::export(&disk, Format::AzureVhd, &vhd, false, 0, id).unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    assert_eq!(std::fs::read(&vhd).unwrap(), before);
}
