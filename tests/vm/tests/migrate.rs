//! Migrating the Badge Request Tool between two appliances: two QEMU guests, two swtpm,
//! one broker. A holds the sample data set and a few changes; `cvm migrate` moves it to
//! B, which serves every record and the audit trail (the same digest) while A serves
//! nothing and refuses its old copy; the broker's lease names B; the certificates
//! verify, and a changed one does not. Refused before anything leaves A: a source sent
//! to an appliance that does not hold the key the owner attested. A replayed release
//! with another snapshot is refused by B. A destination that refuses the offer after
//! the release (its port is taken): the source takes the release back, signs an abort
//! and serves again. Then the workload migrates back to A.

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use cvm_vm_tests::workload::{
    Target, body, call, deploy, fails, free_port, keygen, prepare, seal, wasm,
};
use cvm_vm_tests::{Broker, Guest, cvm, enabled, image, json_ok, repo_root};
use serde_json::{Value, json};

const ADA: (&str, &str) = ("employee", "E000042");
const BOSS: (&str, &str) = ("manager", "E000001");
const SEC: (&str, &str) = ("security", "guard-7");
const STATE_KEY: &str = "default/badge-request/state-key";

#[test]
fn the_badge_request_tool_migrates_and_exactly_one_appliance_serves_it() {
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
    let (pa, pb) = (free_port(), free_port());
    let start = |disk: &str, port: u16| {
        let serial = d.join(format!("{disk}.serial"));
        Guest::start(&[
            "--initdata",
            init.to_str().unwrap(),
            "--state-disk",
            d.join(disk).to_str().unwrap(),
            "--serial-log",
            serial.to_str().unwrap(),
            "--forward",
            &format!("{port}:8082"),
        ])
    };
    // Both boot at once: two QEMU, two swtpm.
    let (a, b) = (start("a.img", pa), start("b.img", pb));
    let (a, b) = (a.wait_ready(), b.wait_ready());
    let ta = Target {
        agent: a.agent.clone(),
        reference: reference.clone(),
    };
    let counter = || json_ok(&broker.admin(&["counter", "get", STATE_KEY]));
    let migrate = |from: &str, to: &str, out: &str, extra: &[&str]| {
        let out = d.join(out);
        let mut args = vec![
            "migrate",
            "badge-request",
            "--from",
            from,
            "--to",
            to,
            "--reference",
            reference.to_str().unwrap(),
            "--owner-key",
            owner.key.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--json",
        ];
        args.extend_from_slice(extra);
        cvm(&args)
    };

    // A: deployed, the sample data set, a request and its approval.
    let deployed = json_ok(&deploy(&ta, &bundle, true));
    assert_eq!(deployed["state_version"], 1, "{deployed}");
    let sample = repo_root().join("workloads/badge-request/sample/employees.json");
    assert_eq!(call(pa, "POST", "/import", SEC, Some(&sample)).0, 201);
    let ada = body(
        d,
        "ada",
        &json!({"employee_id": "E000042", "name": "Ada Lovelace", "site": "Zurich", "zones": ["lobby"]}),
    );
    let (code, v) = call(pa, "POST", "/badges", ADA, Some(&ada));
    assert_eq!(code, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_eq!(
        call(pa, "POST", &format!("/badges/{id}/approve"), BOSS, None).0,
        200
    );
    let (_, before) = call(pa, "GET", "/state", SEC, None);
    assert_eq!(before["version"], 3, "{before}");

    // Refused before anything leaves A: A is sent (--via) to an appliance that does not
    // hold the key the owner attested for B (here A itself). A serves on, unchanged.
    let a_port = a.agent.rsplit_once(':').unwrap().1;
    let via = format!("10.0.2.2:{a_port}");
    let refused = migrate(&a.agent, &b.agent, "refused", &["--via", &via]);
    fails(&refused, "migration refused before anything left");
    let report: Value = serde_json::from_slice(&refused.stdout).unwrap();
    assert_eq!(report["outcome"], "refused", "{report}");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("not the attested key"),
        "{report}"
    );
    assert_eq!(call(pa, "GET", "/state", SEC, None).1, before);
    assert_eq!(counter()["value"], 1);

    // The migration.
    let started = Instant::now();
    let report = json_ok(&migrate(&a.agent, &b.agent, "certs", &[]));
    eprintln!(
        "migrate: badge-request with 3001 badges A -> B in {:.1?} (agent: {} ms, snapshot {} bytes; steps {})",
        started.elapsed(),
        report["millis"],
        report["snapshot_bytes"],
        report["steps"]
    );
    assert_eq!(report["outcome"], "migrated", "{report}");
    assert_eq!(report["version"], 2, "{report}");
    assert_eq!(report["certificates"].as_array().unwrap().len(), 2);
    // B serves every record and the audit trail; A serves nothing.
    assert_eq!(call(pb, "GET", "/state", SEC, None).1, before);
    let (_, audit) = call(pb, "GET", "/audit?after=1", SEC, None);
    let actions: Vec<&str> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["request", "approve"]);
    assert_eq!(
        call(pa, "GET", "/state", SEC, None).0,
        0,
        "A serves nothing"
    );
    // The lease names B (one past the release), and B goes on from there.
    let lease = counter();
    assert_eq!(lease["value"], 3, "{lease}");
    assert!(lease["holder"].as_str().unwrap().starts_with("volume:"));
    let (code, v) = call(
        pb,
        "POST",
        &format!("/badges/{id}/revoke"),
        SEC,
        Some(&body(d, "reason", &json!({"reason": "moved"}))),
    );
    assert_eq!((code, v["status"].as_str()), (200, Some("revoked")), "{v}");
    // A's old copy is gone, and a redeploy there names where the state went.
    let again = deploy(&ta, &bundle, false);
    fails(&again, "StateMigratedAway");

    // The certificates check against the broker's token key; a changed one does not.
    let certs = d.join("certs");
    let release = certs.join("1-release.json");
    let acceptance = certs.join("2-acceptance.json");
    let broker_args = [
        "--broker",
        broker.url.as_str(),
        "--broker-ca",
        broker.ca.to_str().unwrap(),
    ];
    let mut args = vec![
        "migrate",
        "--verify",
        release.to_str().unwrap(),
        acceptance.to_str().unwrap(),
    ];
    args.extend_from_slice(&broker_args);
    let checked = cvm(&args);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    let text = String::from_utf8_lossy(&checked.stdout);
    assert!(text.contains("Release of badge-request"), "{text}");
    assert!(text.contains("Acceptance of badge-request"), "{text}");
    // The acceptance, claiming another state version.
    let mut cert: Value = serde_json::from_slice(&std::fs::read(&acceptance).unwrap()).unwrap();
    let mut statement: Value =
        serde_json::from_slice(&base64_decode(cert["statement"].as_str().unwrap())).unwrap();
    statement["version"] = Value::from(99);
    cert["statement"] = Value::from(base64_of(statement.to_string().as_bytes()));
    let forged = d.join("forged.json");
    std::fs::write(&forged, cert.to_string()).unwrap();
    let mut args = vec!["migrate", "--verify", forged.to_str().unwrap()];
    args.extend_from_slice(&broker_args);
    let out = cvm(&args);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL"));

    // A replayed release with other contents: B refuses it (the release binds the
    // snapshot's digest), and the lease does not move.
    let offer = json!({
        "bundle": base64_of(&std::fs::read(&bundle).unwrap()),
        "snapshot": base64_of(b"not the snapshot"),
        "release": serde_json::from_slice::<Value>(&std::fs::read(&release).unwrap()).unwrap(),
    });
    let (code, answer) = post_json_k(&b.agent, "/v1/migrations", &offer);
    assert_eq!(code, 403, "{answer}");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("not the one the release names"),
        "{answer}"
    );
    assert_eq!(counter()["value"], 3);

    // A destination that refuses the offer after the release (another workload holds
    // the port on A): B takes the release back, signs an abort and serves again, with
    // every record; the lease is B's again, one further on.
    let (_, latest) = call(pb, "GET", "/state", SEC, None);
    let squatter = seal(
        &broker,
        &owner,
        &wasm("hello"),
        "http: {port: 8082}\n",
        "squatter",
        d,
        true,
    );
    json_ok(&deploy(&ta, &squatter, true));
    let aborted = migrate(&b.agent, &a.agent, "aborted", &[]);
    fails(&aborted, "migration aborted");
    let report: Value = serde_json::from_slice(&aborted.stdout).unwrap();
    assert_eq!(report["outcome"], "aborted", "{report}");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains("http.port 8082 is taken"),
        "{report}"
    );
    let kinds: Vec<String> = std::fs::read_dir(d.join("aborted"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        kinds.iter().any(|k| k.ends_with("-abort.json")),
        "{kinds:?}"
    );
    assert_eq!(
        call(pb, "GET", "/state", SEC, None).1,
        latest,
        "B serves again"
    );
    let lease = counter();
    assert_eq!(lease["value"], 6, "{lease}");
    let mut args = vec!["migrate", "--verify"];
    let files: Vec<String> = kinds
        .iter()
        .map(|k| d.join("aborted").join(k).to_string_lossy().into_owned())
        .collect();
    args.extend(files.iter().map(String::as_str));
    args.extend_from_slice(&broker_args);
    let checked = cvm(&args);
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stdout)
    );
    assert!(String::from_utf8_lossy(&checked.stdout).contains("Abort of badge-request"));

    // The port freed, back to A, which accepts it on the disk it gave it away from.
    let ta_owner = [
        "rm",
        "squatter",
        "--to",
        a.agent.as_str(),
        "--reference",
        reference.to_str().unwrap(),
        "--owner-key",
        owner.key.to_str().unwrap(),
    ];
    let removed = cvm(&ta_owner);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    let back = json_ok(&migrate(&b.agent, &a.agent, "back", &[]));
    assert_eq!(back["outcome"], "migrated", "{back}");
    assert_eq!(call(pa, "GET", "/state", SEC, None).1, latest);
    assert_eq!(
        call(pb, "GET", "/state", SEC, None).0,
        0,
        "B serves nothing"
    );
    assert_eq!(counter()["value"], 8);

    for g in [a, b] {
        let (code, report) = g.shutdown();
        assert_eq!(code, 0, "{report}");
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// POST JSON to an agent over TLS without checking its key (the offer endpoint is
/// authorised by its release certificate, not by the channel).
fn post_json_k(agent: &str, path: &str, body: &Value) -> (u16, Value) {
    let out = std::process::Command::new("curl")
        .args(["-sk", "-o", "-", "-w", "\n%{http_code}", "-X", "POST"])
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            "@-",
        ])
        .arg(format!("https://{agent}{path}"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin
                .take()
                .unwrap()
                .write_all(body.to_string().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (b, code) = text.rsplit_once('\n').unwrap();
    (
        code.parse().unwrap_or(0),
        serde_json::from_str(b.trim()).unwrap_or(Value::Null),
    )
}
