//! The UEFI path end to end: OVMF boots the UKI from the image's GPT disk (firmware →
//! systemd stub → kernel → PID1 → agent) with a real vTPM; the broker releases the state
//! key against the disk boot's predicted PCRs (4, 9, 11, 15, and 8 for the init-data);
//! PID1 creates the encrypted state on the disk's own `cvm-state` partition; and
//! `cvm attest` checks the same PCRs. Twins: the same guest checked against another
//! image's UKI fails on PCR 4 and 11, and a disk whose boot partition was changed is
//! refused before anything boots.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use cvm_vm_tests::workload::{fails, ok};
use cvm_vm_tests::{Broker, Guest, agent_get, cvm, enabled, image, json_ok};

fn layout(image: &Path) -> (u64, u64) {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.join("manifest.json")).unwrap()).unwrap();
    let l = &m["disk"]["layout"];
    (
        l["esp_mib"].as_u64().unwrap(),
        l["state_mib"].as_u64().unwrap(),
    )
}

#[test]
fn uefi_disk_boots_attests_and_keeps_its_state_on_its_own_partition() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    ok(&broker.admin(&["resource", "put", "cvm/state/key", "--random", "32"]));
    let init = dir.path().join("initdata.toml");
    ok(&cvm(&[
        "initdata",
        "--broker",
        &broker.guest_url(),
        "--broker-ca",
        broker.ca.to_str().unwrap(),
        "--out",
        init.to_str().unwrap(),
    ]));
    let img = image().to_str().unwrap();
    let reference = json_ok(&cvm(&[
        "measure",
        "--platform",
        "qemu",
        "--image",
        img,
        "--boot",
        "disk",
        "--initdata",
        init.to_str().unwrap(),
        "--json",
    ]));
    for pcr in ["4", "8", "9", "11", "15"] {
        assert!(
            reference["pcrs"][pcr].is_string(),
            "no PCR {pcr}: {reference}"
        );
    }
    assert_eq!(reference["inputs"]["boot"], "uki-disk");
    // measurements.json recorded the same values for this boot and for the clouds'
    // (the vTPM confirms them below, through the broker and `cvm attest`).
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image().join("measurements.json")).unwrap()).unwrap();
    for target in [
        &recorded["qemu_disk"]["reference"],
        &recorded["azure"],
        &recorded["gcp"],
    ] {
        for pcr in ["4", "9", "11", "15"] {
            assert_eq!(target["pcrs"][pcr], reference["pcrs"][pcr], "PCR {pcr}");
        }
    }
    let file = dir.path().join("reference.json");
    std::fs::write(&file, reference.to_string()).unwrap();
    ok(&broker.admin(&[
        "reference",
        "import",
        file.to_str().unwrap(),
        "--name",
        "disk",
    ]));

    // The disk is made from the image's on first use; the guest writes its state into
    // partition 2 of that copy.
    let disk = dir.path().join("disk.raw");
    let serial = dir.path().join("serial.log");
    let guest = Guest::boot(&[
        "--disk",
        disk.to_str().unwrap(),
        "--initdata",
        init.to_str().unwrap(),
        "--serial-log",
        serial.to_str().unwrap(),
    ]);
    let state = agent_get(&guest.agent, "/v1/state");
    assert_eq!(state["mounted"], true, "{state}");
    assert_eq!(state["record"]["boots"], 1, "{state}");

    let attested = ok(&cvm(&[
        "attest",
        "--to",
        &guest.agent,
        "--image",
        img,
        "--boot",
        "disk",
    ]));
    for pcr in ["4", "9", "11", "15"] {
        assert!(
            attested.contains(&format!("[ok] PCR {pcr} = reference")),
            "{attested}"
        );
    }
    // Another UKI (the escape image's: another initramfs) is not what booted.
    if let Some(other) = std::env::var_os("CVM_ESCAPE_IMAGE") {
        let o = cvm(&[
            "attest",
            "--to",
            &guest.agent,
            "--image",
            other.to_str().unwrap(),
            "--boot",
            "disk",
        ]);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(!o.status.success(), "{out}");
        assert!(out.contains("[FAIL] PCR 4 = reference"), "{out}");
        assert!(out.contains("[FAIL] PCR 11 = reference"), "{out}");
    }
    let (code, report) = guest.shutdown();
    assert_eq!(code, 0, "{report}");
    let console = std::fs::read_to_string(&serial).unwrap();
    assert!(
        console.contains("cvm-init: state: created (boot 1 of this volume)"),
        "{console}"
    );

    // Partition 2 is now a LUKS2 volume; the boot partition is as built.
    let (esp_mib, _) = layout(image());
    let bytes = std::fs::read(&disk).unwrap();
    let state_at = ((1 + esp_mib) << 20) as usize;
    assert!(
        bytes[state_at..].starts_with(b"LUKS\xba\xbe"),
        "partition 2 is not LUKS"
    );
    let built = std::fs::read(image().join("disk.raw")).unwrap();
    assert!(bytes[..state_at] == built[..state_at]);

    // One byte changed in the EFI system partition: refused before QEMU starts.
    let mut tampered = bytes;
    tampered[(1 << 20) + (esp_mib << 20) as usize / 2] ^= 0x01;
    let bad = dir.path().join("tampered.raw");
    std::fs::write(&bad, tampered).unwrap();
    let o = cvm(&["run", "--image", img, "--disk", bad.to_str().unwrap()]);
    fails(&o, "does not hold this image's boot partition");
}

#[test]
fn exports_and_builds_refuse_bad_input_and_keep_what_exists() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = image().to_str().unwrap();
    let out = dir.path().join("disk.vhd");
    let o = cvm(&[
        "export",
        "--format",
        "vmdk",
        "--image",
        img,
        "--out",
        out.to_str().unwrap(),
    ]);
    fails(&o, "unknown export format \"vmdk\"");
    assert!(!out.exists(), "an unknown format wrote something");

    let exported = json_ok(&cvm(&[
        "export",
        "--format",
        "azure-vhd",
        "--image",
        img,
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(exported["format"], "azure-vhd");
    let before = std::fs::read(&out).unwrap();
    let o = cvm(&[
        "export",
        "--format",
        "azure-vhd",
        "--image",
        img,
        "--out",
        out.to_str().unwrap(),
    ]);
    fails(&o, "pass --force");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    // No temporary files are left beside it.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("disk.vhd")]);

    // A missing stub: one clear error, and the image folder that exists is untouched.
    let target = dir.path().join("image");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    let kernel = image().join("bzImage");
    let o = cvm(&[
        "build",
        "--kernel",
        kernel.to_str().unwrap(),
        "--stub",
        "/nonexistent/linuxx64.efi.stub",
        "--out",
        target.to_str().unwrap(),
    ]);
    fails(&o, "read the EFI stub /nonexistent/linuxx64.efi.stub");
    fails(&o, "systemd-boot-efi");
    assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"x");
    // An ESP too small for FAT32 is named.
    let o = cvm(&[
        "build",
        "--kernel",
        kernel.to_str().unwrap(),
        "--esp-size",
        "16",
        "--out",
        target.to_str().unwrap(),
    ]);
    fails(&o, "16 MiB");
    assert_eq!(std::fs::read(target.join("keep")).unwrap(), b"x");
}
