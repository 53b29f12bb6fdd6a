//! Attestation end to end on the real vTPM: the host predicts the PCRs offline
//! (`cvm measure --platform qemu`), boots the image, binds the guest's AK to its
//! certified EK, and verifies a fresh quote and both event logs against the prediction.
//! A twin image one byte apart in the initramfs, and an EK CA that did not sign this
//! vTPM, are rejected with the check that failed named.

#![allow(clippy::unwrap_used)]

use std::process::Command;

use cvm_vm_tests::{Guest, cvm, enabled, image, json_ok, repo_root};
use serde_json::Value;

fn measure(image: &std::path::Path) -> Value {
    json_ok(&cvm(&[
        "measure",
        "--platform",
        "qemu",
        "--image",
        image.to_str().unwrap(),
        "--json",
    ]))
}

fn failed_checks(report: &Value) -> Vec<(String, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["detail"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn quote_matches_the_offline_prediction_and_twins_are_named() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let reference = measure(image());

    // The twin: PID1's configuration with one more byte, so the initramfs differs.
    let mut config = std::fs::read(repo_root().join("image/files/init.json")).unwrap();
    config.push(b'\n');
    let twin_config = dir.path().join("init.json");
    std::fs::write(&twin_config, &config).unwrap();
    let twin = dir.path().join("twin");
    let built = cvm(&[
        "build",
        "--kernel",
        image().join("bzImage").to_str().unwrap(),
        "--init-config",
        twin_config.to_str().unwrap(),
        "--out",
        twin.to_str().unwrap(),
    ]);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let twin_reference = measure(&twin);
    assert_ne!(reference["pcrs"]["9"], twin_reference["pcrs"]["9"]);
    // PCR 4 may differ too: QEMU writes the initrd's size into the kernel header.

    let guest = Guest::boot(&[]);

    // Genuine: every check passes and the quoted PCRs are the predicted ones.
    let report = json_ok(&cvm(&[
        "attest",
        "--to",
        &guest.agent,
        "--image",
        image().to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(report["ok"], true, "{report:#}");
    // The quote answered the nonce bound to the TLS key this connection saw.
    let tls = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "tls key")
        .unwrap();
    assert_eq!(tls["ok"], true, "{tls}");
    assert_eq!(report["tls_key_sha256"].as_str().unwrap().len(), 64);
    for pcr in [4, 9, 15] {
        assert_eq!(
            report["pcrs"][pcr],
            reference["pcrs"][pcr.to_string()],
            "PCR {pcr} differs from the prediction"
        );
    }
    // The values the build recorded in measurements.json are the quoted ones too.
    let recorded: Value =
        serde_json::from_slice(&std::fs::read(image().join("measurements.json")).unwrap()).unwrap();
    for pcr in [4, 9, 15] {
        assert_eq!(
            report["pcrs"][pcr],
            recorded["qemu"]["reference"]["pcrs"][pcr.to_string()],
            "PCR {pcr} differs from measurements.json"
        );
    }

    // The twin's prediction disagrees with the quote, and the report says which PCR
    // and which event.
    let out = cvm(&[
        "attest",
        "--to",
        &guest.agent,
        "--image",
        twin.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = failed_checks(&serde_json::from_slice(&out.stdout).unwrap());
    let names: Vec<&str> = failed.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.ends_with(&["PCR 9 = reference", "PCR 15 = reference"])
            && names.len() <= 3
            && names.iter().all(|n| n.starts_with("PCR ")),
        "{failed:?}"
    );
    let detail = |name: &str| &failed.iter().find(|(n, _)| n == name).unwrap().1;
    let pcr9 = detail("PCR 9 = reference");
    assert!(
        pcr9.contains("PCR 9 mismatch") && pcr9.contains("Linux initrd"),
        "{pcr9}"
    );
    let pcr15 = detail("PCR 15 = reference");
    assert!(pcr15.contains("InitConfig /etc/cvm/init.json"), "{pcr15}");

    // An EK CA that did not sign this vTPM's EK certificate (same name, other key).
    let ca = dir.path().join("other-ca.pem");
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=swtpm-localca", "-keyout"])
        .arg(dir.path().join("other-ca.key"))
        .arg("-out")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let out = cvm(&[
        "attest",
        "--to",
        &guest.agent,
        "--ek-ca",
        ca.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(4));
    let failed = failed_checks(&serde_json::from_slice(&out.stdout).unwrap());
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0].0 == "attestation key" && failed[0].1.contains("EK certificate"),
        "{failed:?}"
    );

    // The API speaks HTTP/2 (ALPN h2) as well as HTTP/1.1, over TLS only.
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let out = Command::new("curl")
            .args(["-sk", flag, "-o", "/dev/null", "-w", "%{http_version}"])
            .arg(format!("https://{}/healthz", guest.agent))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), version);
    }
    let plain = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{}/healthz", guest.agent))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&plain.stdout),
        "000",
        "plain HTTP answered"
    );

    // This guest is no SEV-SNP or TDX guest: asking for such evidence fails closed,
    // saying so, rather than answering with anything else.
    for tee in ["snp", "tdx", "az-snp-vtpm", "az-tdx-vtpm"] {
        let (status, body) = http_get(
            &guest.agent,
            &format!("/v1/attestation?tee={tee}&nonce=00ff"),
        );
        assert_eq!(status, 503, "{body}");
        let err: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(err["type"], "NoTee", "{body}");
        let detail = err["detail"].as_str().unwrap();
        let expected = match tee {
            "snp" => "not an SEV-SNP guest",
            "tdx" => "not a TDX guest",
            _ => "not an Azure confidential VM",
        };
        assert!(detail.starts_with(expected), "{detail}");
    }

    let (code, _) = guest.shutdown();
    assert_eq!(code, 0);
}

/// A GET over the agent's TLS, its key not checked: (status, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let out = std::process::Command::new("curl")
        .args(["-sk", "-o", "-", "-w", "\n%{http_code}"])
        .arg(format!("https://{addr}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap_or(0), body.to_owned())
}
