//! The Badge Request Tool on a real appliance: sealed, deployed over attested TLS,
//! loaded with the 3000-employee sample data set, used by each role through the port
//! the agent proxies, then the appliance powers off, boots again from the same
//! encrypted state disk, and the redeployed service serves the same records and audit
//! trail (the same digest), and goes on from there. Then the rollback test: the disk
//! as it was after the first run is put back, and the appliance refuses to serve it,
//! naming both versions; the newest disk is served again.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use cvm_vm_tests::workload::{
    Target, body, call, deploy, fails, free_port, keygen, ok, prepare, seal, wasm,
};
use cvm_vm_tests::{Broker, Guest, enabled, image, json_ok, repo_root};

const ADA: (&str, &str) = ("employee", "E000042");
const BOSS: (&str, &str) = ("manager", "E000001");
const SEC: (&str, &str) = ("security", "guard-7");

#[test]
fn badge_request_tool_serves_every_role_and_keeps_its_records_across_a_reboot() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(&d.join("broker"));
    let owner = keygen(d, "owner");
    // As shipped, with the owner's caller key (the tokens `call` sends are signed with it).
    let policy = cvm_vm_tests::badge::policy();
    let bundle = seal(
        &broker,
        &owner,
        &wasm("badge_request"),
        &policy,
        "badge-request",
        d,
        true,
    );
    let (init, reference) = prepare(d, &broker, &owner, image());
    let port = free_port();
    let forward = format!("{port}:8082");
    let disk = d.join("state.img");
    let boot = || {
        Guest::boot(&[
            "--initdata",
            init.to_str().unwrap(),
            "--state-disk",
            disk.to_str().unwrap(),
            "--forward",
            &forward,
        ])
    };

    let counter = || {
        json_ok(&broker.admin(&["counter", "get", "default/badge-request/state-key"]))["value"]
            .as_u64()
            .unwrap()
    };
    let guest = boot();
    let t = Target {
        agent: guest.agent.clone(),
        reference: reference.clone(),
    };
    let deployed = json_ok(&deploy(&t, &bundle, true));
    assert_eq!(deployed["state"], "running", "{deployed}");
    assert_eq!(deployed["state_version"], 1, "{deployed}");
    assert_eq!(counter(), 1);

    // Callers are authenticated in the guest: no token, a claimed role in the old
    // headers, or a token for another audience get 401, and nothing is read.
    let anonymous = |extra: &[&str]| {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(extra)
            .arg(format!("http://127.0.0.1:{port}/state"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(anonymous(&[]), "401");
    assert_eq!(
        anonymous(&[
            "-H",
            "x-badge-role: security",
            "-H",
            "x-badge-actor: guard-7"
        ]),
        "401"
    );
    let token = cvm_vm_tests::badge::token("security", "guard-7");
    let (head, rest) = token.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    use base64::Engine as _;
    let other = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(br#"{"aud":"payroll","role":"security","sub":"guard-7","exp":9999999999}"#);
    let forged = format!("authorization: Bearer {head}.{other}.{sig}");
    assert_eq!(anonymous(&["-H", &forged]), "401");
    assert_eq!(
        anonymous(&["-H", &format!("authorization: Bearer {token}")]),
        "200"
    );

    let sample = repo_root().join("workloads/badge-request/sample/employees.json");
    let started = Instant::now();
    let (code, v) = call(port, "POST", "/import", SEC, Some(&sample));
    assert_eq!(code, 201, "{v}");
    assert_eq!(v["imported"], 3000);
    eprintln!(
        "badge: imported 3000 employees in {:.1?}",
        started.elapsed()
    );

    let ada = body(
        d,
        "ada",
        &serde_json::json!({"employee_id": "E000042", "name": "Ada Lovelace", "site": "Zurich", "zones": ["lobby", "lab-2"]}),
    );
    let started = Instant::now();
    let (code, v) = call(port, "POST", "/badges", ADA, Some(&ada));
    assert_eq!(code, 201, "{v}");
    eprintln!("badge: one request committed in {:.1?}", started.elapsed());
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(id, "B003001");
    // Bad input, named; nothing changes.
    let (code, v) = call(port, "POST", "/badges", ADA, Some(&ada));
    assert_eq!(
        (code, v["error"].as_str().unwrap()),
        (409, "employee E000042 already has badge B003001")
    );
    let paris = body(
        d,
        "paris",
        &serde_json::json!({"employee_id": "E000043", "name": "Eve", "site": "Paris", "zones": ["lobby"]}),
    );
    let (code, v) = call(
        port,
        "POST",
        "/badges",
        ("employee", "E000043"),
        Some(&paris),
    );
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("site \"Paris\""),
        "{v}"
    );
    let (code, _) = call(
        port,
        "GET",
        &format!("/badges/{id}"),
        ("employee", "E000043"),
        None,
    );
    assert_eq!(code, 403);

    let (code, v) = call(port, "POST", &format!("/badges/{id}/approve"), BOSS, None);
    assert_eq!((code, v["status"].as_str()), (200, Some("approved")), "{v}");
    let reason = body(d, "reason", &serde_json::json!({"reason": "lost badge"}));
    let (code, v) = call(port, "POST", "/badges/B000017/revoke", SEC, Some(&reason));
    assert_eq!((code, v["status"].as_str()), (200, Some("revoked")), "{v}");
    let (code, v) = call(port, "GET", "/badges?status=active&limit=5", SEC, None);
    assert_eq!(code, 200);
    assert_eq!(v["badges"].as_array().unwrap().len(), 5);

    let (code, before) = call(port, "GET", "/state", SEC, None);
    assert_eq!(code, 200);
    assert_eq!(before["version"], 4, "{before}");
    assert_eq!(before["approved"], 3000, "{before}");
    assert_eq!(before["revoked"], 1, "{before}");

    // Power off; keep a copy of the disk as it is now (state version 1); boot again
    // from the same encrypted disk; the owner redeploys.
    let (code, report) = guest.shutdown();
    assert_eq!(code, 0, "{report}");
    let old_disk = d.join("state-v1.img");
    std::fs::copy(&disk, &old_disk).unwrap();
    let guest = boot();
    let t = Target {
        agent: guest.agent.clone(),
        reference: reference.clone(),
    };
    let deployed = json_ok(&deploy(&t, &bundle, true));
    assert_eq!(deployed["state"], "running", "{deployed}");
    assert_eq!(deployed["state_version"], 2, "{deployed}");
    assert_eq!(counter(), 2);
    let (code, after) = call(port, "GET", "/state", SEC, None);
    assert_eq!(code, 200);
    assert_eq!(
        after, before,
        "the records and the audit trail survive the reboot"
    );
    let (code, v) = call(port, "GET", "/audit?after=2", SEC, None);
    assert_eq!(code, 200);
    let actions: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["approve", "revoke"]);
    // And it goes on from there.
    let (code, v) = call(
        port,
        "POST",
        &format!("/badges/{id}/revoke"),
        SEC,
        Some(&reason),
    );
    assert_eq!((code, v["status"].as_str()), (200, Some("revoked")), "{v}");
    let (_, latest) = call(port, "GET", "/state", SEC, None);
    assert_eq!(latest["version"], 5);
    let (code, report) = guest.shutdown();
    assert_eq!(code, 0, "{report}");

    // Rollback: the host puts the older disk back. It unlocks (same appliance key),
    // but its state is version 1 and the broker recorded 2: refused, nothing served.
    let new_disk = d.join("state-v2.img");
    std::fs::rename(&disk, &new_disk).unwrap();
    std::fs::copy(&old_disk, &disk).unwrap();
    let guest = boot();
    let t = Target {
        agent: guest.agent.clone(),
        reference: reference.clone(),
    };
    let refused = deploy(&t, &bundle, false);
    fails(&refused, "StateRolledBack");
    fails(
        &refused,
        "the state on this appliance's disk is version 1 but the broker recorded version 2",
    );
    assert_eq!(
        call(port, "GET", "/state", SEC, None).0,
        0,
        "nothing serves"
    );
    assert_eq!(
        counter(),
        2,
        "a refused copy does not move the broker's record"
    );
    let (code, report) = guest.shutdown();
    assert_eq!(code, 0, "{report}");

    // The newest disk, but the broker now holds another state key: the folder was
    // encrypted with the first one, so it is refused, naming both key identifiers.
    std::fs::rename(&new_disk, &disk).unwrap();
    let saved = d.join("state-key");
    let path = "default/badge-request/state-key";
    let saved_str = saved.to_str().unwrap();
    ok(&broker.admin(&["resource", "get", path, "--out", saved_str]));
    ok(&broker.admin(&["resource", "put", path, "--random", "32"]));
    let guest = boot();
    let t = Target {
        agent: guest.agent.clone(),
        reference,
    };
    let refused = deploy(&t, &bundle, false);
    fails(&refused, "StateKeyMismatch");
    fails(&refused, "the state was encrypted with key");
    assert_eq!(counter(), 2);
    ok(&broker.admin(&["resource", "put", path, "--file", saved_str]));

    // With its own key, the newest disk is served at the next version, every record.
    let deployed = json_ok(&deploy(&t, &bundle, true));
    assert_eq!(deployed["state_version"], 3, "{deployed}");
    assert_eq!(call(port, "GET", "/state", SEC, None).1, latest);
    let (code, report) = guest.shutdown();
    assert_eq!(code, 0, "{report}");
}
