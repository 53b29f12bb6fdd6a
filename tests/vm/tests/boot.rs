//! Boot the image under QEMU TCG with a swtpm vTPM and check, from the host, what PID1
//! and the agent did: health, measurements, PCR replay, orderly power-off.

#![allow(clippy::unwrap_used)]

use cvm_vm_tests::{Guest, cvm, enabled, guest_bin, image, json_ok, repo_root};
use serde_json::Value;
use sha2::{Digest as _, Sha256, Sha384};
use std::fs;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[test]
fn boots_measures_serves_and_powers_off() {
    if !enabled() {
        return;
    }
    let guest = Guest::boot(&[]);

    let health = json_ok(&cvm(&["status", "--to", &guest.agent, "--json"]));
    assert_eq!(health["status"], "ok");

    // The CLI's own verification (replay + digests against the image manifest).
    let verified = cvm(&[
        "eventlog",
        "--to",
        &guest.agent,
        "--json",
        "--verify",
        "--image",
        image().to_str().unwrap(),
    ]);
    let report = json_ok(&verified);
    for check in report["checks"].as_array().unwrap() {
        assert_eq!(check["ok"], true, "{check}");
    }

    // Independent checks: digests of the files that went into the image, computed here.
    let records = report["log"]["records"].as_array().unwrap();
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["content"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "init-binary",
            "init-config",
            "kernel-params",
            "agent-binary",
            "enforcement-baseline"
        ]
    );
    // The baseline's record is its document's digest, which its subject names.
    let baseline = &records[4];
    let subject = baseline["content"]["subject"].as_str().unwrap();
    let named = subject
        .strip_prefix("sha256:")
        .and_then(|s| s.split(' ').next())
        .unwrap();
    let sha256 = baseline["digests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["hashAlg"] == "sha256")
        .unwrap()["digest"]
        .as_str()
        .unwrap();
    assert_eq!(named, sha256, "{subject}");
    assert!(subject.contains("hooks=file_open,"), "{subject}");
    let expected = [
        fs::read(guest_bin("cvm-init")).unwrap(),
        fs::read(repo_root().join("image/files/init.json")).unwrap(),
        Vec::new(), // no cvm.* parameters on this boot
        fs::read(guest_bin("cvm-agent")).unwrap(),
        baseline_document(),
    ];
    for (record, data) in records.iter().zip(&expected) {
        assert_eq!(record["pcr"], 15);
        assert_eq!(record["digests"][0]["hashAlg"], "sha256");
        assert_eq!(record["digests"][0]["digest"], sha256_hex(data), "{record}");
    }

    // Replay written here (not attest's), compared with the PCR the guest kernel read
    // from the vTPM.
    let mut pcr256 = [0u8; 32].to_vec();
    let mut pcr384 = [0u8; 48].to_vec();
    for data in &expected {
        pcr256 = Sha256::new()
            .chain_update(&pcr256)
            .chain_update(Sha256::digest(data))
            .finalize()
            .to_vec();
        pcr384 = Sha384::new()
            .chain_update(&pcr384)
            .chain_update(Sha384::digest(data))
            .finalize()
            .to_vec();
    }
    let values = report["register_values"].as_array().unwrap();
    let value = |alg: &str| {
        values
            .iter()
            .find(|v| v["hashAlg"] == alg)
            .map(|v| v["value"].as_str().unwrap().to_owned())
    };
    assert_eq!(value("sha256"), Some(hex::encode(&pcr256)));
    assert_eq!(value("sha384"), Some(hex::encode(&pcr384)));

    let (code, report) = guest.shutdown();
    assert_eq!(report["outcome"], "poweroff-ok", "{report}");
    assert_eq!(code, 0);
}

#[test]
fn kernel_parameters_are_measured() {
    if !enabled() {
        return;
    }
    let guest = Guest::boot(&["--append", "cvm.log=debug cvm.tpm=required"]);
    let report = json_ok(&cvm(&[
        "eventlog",
        "--to",
        &guest.agent,
        "--json",
        "--verify",
    ]));
    let params = &report["log"]["records"][2];
    assert_eq!(params["content"]["kind"], "kernel-params");
    assert_eq!(
        params["content"]["subject"],
        "cvm.log=debug cvm.tpm=required"
    );
    assert_eq!(
        params["digests"][0]["digest"],
        sha256_hex(b"cvm.log=debug cvm.tpm=required")
    );
    let (code, _) = guest.shutdown();
    assert_eq!(code, 0);
}

/// Boot with `append`, expect PID1 to power off with a fatal line containing `needle`.
fn expect_fatal(extra: &[&str], needle: &str) {
    let (code, report) = Guest::start(extra).wait();
    assert_eq!(report["outcome"], "fatal", "{report}");
    let detail = report["detail"].as_str().unwrap();
    assert!(
        detail.contains(needle),
        "{detail:?} does not name {needle:?}"
    );
    assert_eq!(code, 3, "cvm run exits 3 when the guest fails");
    assert!(
        report["ready_after_ms"].is_null(),
        "the agent must never have started"
    );
}

#[test]
fn missing_agent_binary_powers_off_with_the_reason() {
    if !enabled() {
        return;
    }
    expect_fatal(
        &["--append", "cvm.agent=/usr/bin/missing"],
        "agent binary /usr/bin/missing",
    );
}

#[test]
fn malformed_kernel_parameter_powers_off_with_its_name() {
    if !enabled() {
        return;
    }
    expect_fatal(&["--append", "cvm.tpm=maybe"], "cvm.tpm=maybe");
}

#[test]
fn missing_tpm_when_required_powers_off() {
    if !enabled() {
        return;
    }
    expect_fatal(&["--no-tpm"], "TPM required");
}

/// The enforcement baseline's document for the test image, from the image manifest's
/// file list: its exec allowlist is every file beneath /init, /usr/bin and /usr/sbin.
fn baseline_document() -> Vec<u8> {
    let manifest: Value =
        serde_json::from_slice(&fs::read(image().join("manifest.json")).unwrap()).unwrap();
    let exec: Vec<String> = manifest["initramfs_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .filter(|p| p == "/init" || p.starts_with("/usr/bin/") || p.starts_with("/usr/sbin/"))
        .collect();
    let doc = cvm_attest::baseline::document(&exec);
    // The allowlist is what PID1 and the agent need, and nothing writable.
    assert!(doc.contains("\"/usr/bin/cvm-agent\""), "{doc}");
    doc.into_bytes()
}
