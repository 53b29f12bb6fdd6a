//! Key release end to end: the broker runs on the host, the guest boots with init-data
//! naming it, PID1 attests with its real vTPM, receives the state key, creates the
//! encrypted state volume on the first boot and unlocks the same volume on the second
//! (the record written by boot 1 is read and advanced by boot 2). Twins: an image one
//! byte apart is refused by the broker (the guest prints the reason and powers off, the
//! audit log records it); with the broker down the guest powers off after its retries;
//! a state disk under another key is refused and left intact. The key never appears in
//! the console, on the disk in clear, or in the broker's log.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use base64::Engine as _;
use cvm_vm_tests::{Broker, Guest, agent_get, cvm, enabled, image, json_ok, repo_root};

fn ok(o: &std::process::Output) {
    assert!(
        o.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn initdata(broker: &Broker, url: &str, owner: &Path, out: &Path) {
    ok(&cvm(&[
        "initdata",
        "--broker",
        url,
        "--broker-ca",
        broker.ca.to_str().unwrap(),
        "--resource",
        "cvm/app/token",
        "--owner",
        owner.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
}

fn register(broker: &Broker, image: &Path, initdata: &Path, name: &str, dir: &Path) {
    let reference = json_ok(&cvm(&[
        "measure",
        "--platform",
        "qemu",
        "--image",
        image.to_str().unwrap(),
        "--initdata",
        initdata.to_str().unwrap(),
        "--json",
    ]));
    let file = dir.join(format!("{name}.json"));
    std::fs::write(&file, reference.to_string()).unwrap();
    ok(&broker.admin(&[
        "reference",
        "import",
        file.to_str().unwrap(),
        "--name",
        name,
    ]));
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every printable form of `key` that a leak could take.
fn forms(key: &[u8]) -> Vec<Vec<u8>> {
    vec![
        key.to_vec(),
        hex::encode(key).into_bytes(),
        base64::engine::general_purpose::STANDARD
            .encode(key)
            .into_bytes(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(key)
            .into_bytes(),
    ]
}

#[test]
fn state_is_created_then_unlocked_and_twins_are_refused() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    ok(&broker.admin(&["resource", "put", "cvm/state/key", "--random", "32"]));
    ok(&broker.admin(&["resource", "put", "cvm/app/token", "--random", "24"]));
    let key_file = dir.path().join("state.key");
    ok(&broker.admin(&[
        "resource",
        "get",
        "cvm/state/key",
        "--out",
        key_file.to_str().unwrap(),
    ]));
    let key = std::fs::read(&key_file).unwrap();
    assert_eq!(key.len(), 32);

    let owner_key = dir.path().join("owner.key");
    let keygen = json_ok(&cvm(&[
        "keygen",
        "--out",
        owner_key.to_str().unwrap(),
        "--json",
    ]));
    let init = dir.path().join("initdata.toml");
    initdata(
        &broker,
        &broker.guest_url(),
        &dir.path().join("owner.pub"),
        &init,
    );
    register(&broker, image(), &init, "this-image", dir.path());
    let disk = dir.path().join("state.img");
    let disk_arg = disk.to_str().unwrap();
    let init_arg = init.to_str().unwrap();

    // Boot 1: attested, key released, state created.
    let serial1 = dir.path().join("serial1.log");
    let guest = Guest::boot(&[
        "--initdata",
        init_arg,
        "--state-disk",
        disk_arg,
        "--serial-log",
        serial1.to_str().unwrap(),
    ]);
    let state = agent_get(&guest.agent, "/v1/state");
    assert_eq!(state["mounted"], true, "{state}");
    assert_eq!(state["record"]["boots"], 1, "{state}");
    assert_eq!(state["secrets"], serde_json::json!(["cvm/app/token"]));
    // The owner the init-data names is the one the agent trusts.
    assert_eq!(state["owners"], serde_json::json!([keygen["kid"]]));
    let (code, report) = guest.shutdown();
    assert_eq!(code, 0, "{report}");
    let console1 = std::fs::read(&serial1).unwrap();
    assert!(contains(
        &console1,
        b"cvm-init: state: created (boot 1 of this volume)"
    ));

    // Boot 2: the same disk unlocks, and boot 1's record is read back.
    let serial2 = dir.path().join("serial2.log");
    let guest = Guest::boot(&[
        "--initdata",
        init_arg,
        "--state-disk",
        disk_arg,
        "--serial-log",
        serial2.to_str().unwrap(),
    ]);
    let state = agent_get(&guest.agent, "/v1/state");
    assert_eq!(state["record"]["boots"], 2, "{state}");
    let uuid = state["record"]["uuid"].as_str().unwrap().to_owned();
    let (code, _) = guest.shutdown();
    assert_eq!(code, 0);
    let console2 = std::fs::read(&serial2).unwrap();
    assert!(contains(
        &console2,
        b"cvm-init: state: unlocked (boot 2 of this volume)"
    ));

    // The key never in the consoles, on the disk in clear, or in the broker's logs; the
    // disk is LUKS2 and its record is not readable in clear.
    let raw = std::fs::read(&disk).unwrap();
    assert!(raw.starts_with(b"LUKS\xba\xbe"), "not a LUKS volume");
    assert!(!uuid.is_empty());
    assert!(
        !contains(&raw, b"\"boots\""),
        "the state record is on the disk in clear"
    );
    for form in forms(&key) {
        for (what, bytes) in [
            ("console 1", &console1),
            ("console 2", &console2),
            ("state disk", &raw),
        ] {
            assert!(
                !contains(bytes, &form),
                "the state key appears in the {what}"
            );
        }
        assert!(!contains(broker.audit_log().as_bytes(), &form));
    }
    assert!(broker.audit_log().contains("\"outcome\":\"release\""));

    // A twin image one byte apart: the broker refuses, the guest says why and powers off.
    let mut config = std::fs::read(repo_root().join("image/files/init.json")).unwrap();
    config.push(b'\n');
    let twin_config = dir.path().join("init.json");
    std::fs::write(&twin_config, &config).unwrap();
    let twin = dir.path().join("twin");
    ok(&cvm(&[
        "build",
        "--kernel",
        image().join("bzImage").to_str().unwrap(),
        "--init-config",
        twin_config.to_str().unwrap(),
        "--out",
        twin.to_str().unwrap(),
    ]));
    let twin_disk = dir.path().join("twin-state.img");
    let (code, report) = Guest::start_image(
        &twin,
        &[
            "--initdata",
            init_arg,
            "--state-disk",
            twin_disk.to_str().unwrap(),
        ],
    )
    .wait();
    assert_ne!(code, 0);
    assert_eq!(report["outcome"], "fatal", "{report}");
    let detail = report["detail"].as_str().unwrap();
    assert!(
        detail.contains("broker refused (401 AttestationError)")
            && detail.contains("this-image: PCR"),
        "{detail}"
    );
    assert!(
        broker
            .audit_log()
            .contains("matches no registered reference value")
    );

    // A state disk that another key sealed: refused, and left as it was.
    ok(&broker.admin(&["resource", "put", "cvm/state/key", "--random", "32"]));
    let before = std::fs::read(&disk).unwrap();
    let (code, report) = Guest::start(&["--initdata", init_arg, "--state-disk", disk_arg]).wait();
    assert_ne!(code, 0);
    let detail = report["detail"].as_str().unwrap();
    assert!(
        detail.contains("does not unlock with the broker's key"),
        "{detail}"
    );
    assert!(
        std::fs::read(&disk).unwrap() == before,
        "a refused disk was modified"
    );

    // The broker down (`cvm run --broker` writes the init-data, loopback becomes the
    // guest's 10.0.2.2): the guest retries, then powers off naming the broker.
    let (code, report) = Guest::start(&[
        "--broker",
        "https://127.0.0.1:1",
        "--broker-ca",
        broker.ca.to_str().unwrap(),
    ])
    .wait();
    assert_ne!(code, 0);
    let detail = report["detail"].as_str().unwrap();
    assert!(
        detail.contains("https://10.0.2.2:1 unreachable after 6 attempts"),
        "{detail}"
    );
}
