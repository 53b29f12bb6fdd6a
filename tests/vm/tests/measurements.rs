//! The reference values every build records (`measurements.json`), taken into the
//! broker straight from the image folder: each target's document arrives as recorded,
//! a shape the grid lacks is named with the command that computes it, and a
//! `measurements.json` changed after the build (the manifest no longer lists it) is
//! refused without touching the broker's registered values, as is a consistent forgery
//! (manifest rewritten too) when the approved image identity is given. That the recorded PCRs are
//! what a real vTPM reports is checked in `attest.rs` (direct boot) and `uefi.rs` (disk).

#![allow(clippy::unwrap_used)]

use cvm_vm_tests::workload::{fails, ok};
use cvm_vm_tests::{Broker, enabled, image, json_ok};
use serde_json::Value;

fn recorded() -> Value {
    serde_json::from_slice(&std::fs::read(image().join("measurements.json")).unwrap()).unwrap()
}

fn registered(broker: &Broker) -> Value {
    json_ok(&broker.admin(&["reference", "list"]))["references"].clone()
}

#[test]
fn recorded_reference_values_import_from_the_image_and_a_tampered_file_is_refused() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let img = image().to_str().unwrap();
    let rec = recorded();

    let import = |name: &str, extra: &[&str]| {
        let mut args = vec!["reference", "import", "--image", img, "--name", name];
        args.extend_from_slice(extra);
        broker.admin(&args)
    };
    ok(&import("direct", &["--target", "qemu"]));
    ok(&import("disk", &["--target", "qemu-disk"]));
    ok(&import(
        "snp",
        &[
            "--target",
            "snp",
            "--vcpus",
            "4",
            "--vcpu-type",
            "EPYC-Milan",
        ],
    ));
    ok(&import("tdx", &["--target", "tdx"]));
    let refs = registered(&broker);
    assert_eq!(refs["direct"], rec["qemu"]["reference"]);
    assert_eq!(refs["disk"], rec["qemu_disk"]["reference"]);
    for pcr in ["4", "9", "11", "15"] {
        assert!(refs["disk"]["pcrs"][pcr].is_string(), "{}", refs["disk"]);
    }
    let milan4 = rec["snp"]["launch_digests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["vcpus"] == 4 && d["vcpu_type"] == "EPYC-Milan")
        .unwrap();
    assert_eq!(refs["snp"]["platform"], "snp");
    assert_eq!(refs["snp"]["measurement"], milan4["measurement"]);
    assert_eq!(refs["tdx"]["mrtd"], rec["tdx"]["mrtd"]);
    // The clouds boot the same UKI: their predicted PCRs are the disk boot's.
    for cloud in ["azure", "gcp"] {
        assert_eq!(rec[cloud]["pcrs"], rec["qemu_disk"]["reference"]["pcrs"]);
        assert!(
            rec[cloud]["confirmation"]
                .as_str()
                .unwrap()
                .starts_with("unconfirmed")
        );
    }

    // A shape outside the grid: named, with the command that computes it.
    fails(
        &import("odd", &["--target", "snp", "--vcpus", "3"]),
        "cvm measure --platform snp --vcpus 3 --vcpu-type EPYC-v4",
    );

    // The tampered twin: one digest changed after the build. Refused, nothing registered.
    let twin = dir.path().join("twin");
    std::fs::create_dir(&twin).unwrap();
    std::fs::copy(image().join("manifest.json"), twin.join("manifest.json")).unwrap();
    let mut text = std::fs::read_to_string(image().join("measurements.json")).unwrap();
    let pcr4 = rec["qemu"]["reference"]["pcrs"]["4"].as_str().unwrap();
    let forged: String = pcr4
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    text = text.replace(pcr4, &forged);
    std::fs::write(twin.join("measurements.json"), text).unwrap();
    let o = broker.admin(&[
        "reference",
        "import",
        "--image",
        twin.to_str().unwrap(),
        "--target",
        "qemu",
        "--name",
        "forged",
    ]);
    fails(&o, "not the");
    fails(
        &o,
        "the image's manifest lists: refusing its reference values",
    );
    let after = registered(&broker);
    assert!(after.get("forged").is_none(), "{after}");
    assert_eq!(after, refs);

    // A consistent forgery (the manifest rewritten to list the forged file) is a
    // different image: with the approved identity (`cvm build` prints it) it is
    // refused, naming both; the real image imports under the same check.
    let sha256 = |p: &std::path::Path| {
        let out = std::process::Command::new("sha256sum")
            .arg(p)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_owned()
    };
    let manifest = std::fs::read_to_string(image().join("manifest.json")).unwrap();
    let listed = sha256(&image().join("measurements.json"));
    assert!(manifest.contains(&listed));
    let forged_sha = sha256(&twin.join("measurements.json"));
    std::fs::write(
        twin.join("manifest.json"),
        manifest.replace(&listed, &forged_sha),
    )
    .unwrap();
    let approved = sha256(&image().join("manifest.json"));
    let import_twin = |extra: &[&str]| {
        let mut args = vec![
            "reference",
            "import",
            "--image",
            twin.to_str().unwrap(),
            "--target",
            "qemu",
            "--name",
            "forged",
        ];
        args.extend_from_slice(extra);
        broker.admin(&args)
    };
    let o = import_twin(&["--identity", &approved]);
    fails(
        &o,
        &format!("not the approved {approved}: nothing registered"),
    );
    assert!(registered(&broker).get("forged").is_none());
    ok(&import(
        "approved",
        &["--target", "qemu", "--identity", &approved],
    ));
    assert_eq!(registered(&broker)["approved"], rec["qemu"]["reference"]);
}
