//! `cvm keygen` and `cvm seal` as an owner runs them: the bundle opens with the key
//! written to `--key-out` under the owner's public key; refusals name what is wrong and
//! leave nothing behind.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use cvm_runtime::bundle::owner::{OwnerKeys, OwnerPublic};
use cvm_runtime::bundle::parse;

fn cvm(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

const WASM: &[u8] = b"\0asm\x01\0\0\0";

#[test]
fn keygen_then_seal_opens_on_the_appliance_side() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("app.wasm"), WASM).unwrap();
    std::fs::write(p.join("policy.yaml"), "http: {port: 8080}\n").unwrap();
    let out = cvm(&["keygen", "--out", "owner.key", "--json"], p);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A second keygen never overwrites the owner's key.
    let again = cvm(&["keygen", "--out", "owner.key"], p);
    assert!(!again.status.success());

    let out = cvm(
        &[
            "seal",
            "--wasm",
            "app.wasm",
            "--policy",
            "policy.yaml",
            "--key-resource",
            "default/app/key",
            "--key-out",
            "app.key",
            "--json",
        ],
        p,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["manifest"]["name"], "app");
    let public =
        OwnerPublic::from_pem(&std::fs::read_to_string(p.join("owner.pub")).unwrap()).unwrap();
    let bundle = std::fs::read(p.join("app.bundle")).unwrap();
    let verified = parse(&bundle)
        .unwrap()
        .verify(&OwnerKeys::new(vec![public]))
        .unwrap();
    assert_eq!(
        hex::encode(verified.manifest_digest()),
        report["manifest_sha256"].as_str().unwrap()
    );
    let key = std::fs::read(p.join("app.key")).unwrap();
    assert_eq!(&verified.open(&key).unwrap()[..], WASM);
}

#[test]
fn seal_refusals_name_the_problem_and_write_nothing() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::write(p.join("app.wasm"), WASM).unwrap();
    std::fs::write(p.join("not.wasm"), b"#!/bin/sh").unwrap();
    std::fs::write(p.join("policy.yaml"), "http: {port: 8080}\n").unwrap();
    std::fs::write(
        p.join("bad.yaml"),
        "preopens: [{dir: ../etc, guest: /etc, access: rw}]\n",
    )
    .unwrap();
    assert!(cvm(&["keygen"], p).status.success());
    for (args, needle) in [
        (
            vec![
                "--wasm",
                "app.wasm",
                "--policy",
                "policy.yaml",
                "--key-resource",
                "a/b/c",
            ],
            "content key would be lost",
        ),
        (
            vec![
                "--wasm",
                "not.wasm",
                "--policy",
                "policy.yaml",
                "--key-resource",
                "a/b/c",
                "--key-out",
                "k",
            ],
            "is not a Wasm module",
        ),
        (
            vec![
                "--wasm",
                "app.wasm",
                "--policy",
                "bad.yaml",
                "--key-resource",
                "a/b/c",
                "--key-out",
                "k",
            ],
            "preopens[0].dir",
        ),
        (
            vec![
                "--wasm",
                "app.wasm",
                "--policy",
                "policy.yaml",
                "--key-resource",
                "a/../c",
                "--key-out",
                "k",
            ],
            "key_resource",
        ),
    ] {
        let mut full = vec!["seal"];
        full.extend(args);
        let out = cvm(&full, p);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{err}");
        assert!(!p.join("app.bundle").exists() && !p.join("not.bundle").exists());
        assert!(!p.join("k").exists(), "a refused seal left its key file");
    }
}

/// `cvm broker serve --json`, killed on drop.
struct Broker(std::process::Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn seal_uploads_the_key_that_an_attested_client_then_opens_the_bundle_with() {
    use std::io::BufRead as _;
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    // A broker of its own (dev flag: `sample` evidence stands in for a TEE here).
    let mut child = Command::new(env!("CARGO_BIN_EXE_cvm"))
        .args(["broker", "serve", "--json", "--listen", "127.0.0.1:0"])
        .args(["--insecure-allow-sample", "--dir"])
        .arg(p.join("broker"))
        .env("CVM_CACHE", p.join("cache"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _broker = Broker(child);
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let url = ready["url"].as_str().unwrap();
    let broker_dir = p.join("broker");
    let admin = ["--url", url, "--dir", broker_dir.to_str().unwrap()];
    std::fs::write(
        p.join("allow.rego"),
        "package policy\nimport rego.v1\ndefault allow := true\n",
    )
    .unwrap();
    let mut set = vec!["broker", "policy", "set", "allow.rego"];
    set.extend(admin);
    assert!(cvm(&set, p).status.success());

    std::fs::write(p.join("app.wasm"), WASM).unwrap();
    std::fs::write(p.join("policy.yaml"), "http: {port: 8080}\n").unwrap();
    assert!(cvm(&["keygen"], p).status.success());
    let mut seal = vec![
        "seal",
        "--wasm",
        "app.wasm",
        "--policy",
        "policy.yaml",
        "--key-resource",
        "default/app/key",
        "--upload",
    ];
    seal.extend(admin);
    let out = cvm(&seal, p);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // What the appliance will do: verify, then fetch the key after attesting, then open.
    let public =
        OwnerPublic::from_pem(&std::fs::read_to_string(p.join("owner.pub")).unwrap()).unwrap();
    let verified = parse(&std::fs::read(p.join("app.bundle")).unwrap())
        .unwrap()
        .verify(&OwnerKeys::new(vec![public]))
        .unwrap();
    let ca = std::fs::read(ready["ca"].as_str().unwrap()).unwrap();
    let mut config =
        cvm_kbs_client::client::ClientConfig::new(url, cvm_kbs_client::http::BrokerTls::Pinned(ca));
    config.retries = 0;
    let mut client = cvm_kbs_client::client::KbsClient::new(config).unwrap();
    client
        .attest(&mut cvm_kbs_client::attester::SampleAttester)
        .unwrap();
    let key = client.resource(&verified.manifest().key_resource).unwrap();
    assert_eq!(&verified.open(&key).unwrap()[..], WASM);
}
