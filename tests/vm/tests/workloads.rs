//! Sealed workloads end to end, in one boot of the appliance: the owner seals the
//! example service on the host (its key uploaded to the broker), deploys it to the
//! attested guest, calls it through the port the agent proxies, reads its log and
//! status, finds its manifest in the measured event log, then stops and removes it.
//! Every bad input is refused with its own reason while the service keeps serving:
//! an untrusted owner, a tampered bundle, a capability the appliance does not grant,
//! a key the broker does not hold, a workload that loops past its wall-clock limit.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cvm_kbs_client::passport;
use cvm_vm_tests::workload::{
    Target, agent_cmd, deploy, fails, free_port, http, keygen, ok, prepare, ps, seal, wasm,
};
use cvm_vm_tests::{Broker, Guest, agent_get, cvm, enabled, image, json_ok};
use serde_json::Value;

#[test]
fn seal_deploy_call_and_refuse_everything_bad() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(&d.join("broker"));
    let owner = keygen(d, "owner");
    let stranger = keygen(d, "stranger");

    let hello_policy = "env: {GREETING: bonjour}\npreopens: [{dir: data, guest: /data, access: rw}]\nhttp: {port: 8081}\nlimits: {memory_mib: 16, wall_ms: 10000}\n";
    let hello = seal(
        &broker,
        &owner,
        &wasm("hello"),
        hello_policy,
        "hello",
        d,
        true,
    );
    let foreign = seal(
        &broker,
        &stranger,
        &wasm("hello"),
        hello_policy,
        "foreign",
        d,
        true,
    );
    let greedy = seal(
        &broker,
        &owner,
        &wasm("hello"),
        "http: {port: 8080}\n",
        "greedy",
        d,
        true,
    );
    let keyless = seal(
        &broker,
        &owner,
        &wasm("hello"),
        "http: {port: 8082}\n",
        "keyless",
        d,
        false,
    );
    let spinner = seal(
        &broker,
        &owner,
        &wasm("probe"),
        "args: [loop]\nlimits: {wall_ms: 500}\n",
        "spinner",
        d,
        true,
    );
    // One byte of the ciphertext flipped (the bundle ends with it).
    let mut bytes = std::fs::read(&hello).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let tampered = d.join("tampered.bundle");
    std::fs::write(&tampered, &bytes).unwrap();

    let (init, ref_file) = prepare(d, &broker, &owner, image());
    let reference: Value = serde_json::from_slice(&std::fs::read(&ref_file).unwrap()).unwrap();

    let port = free_port();
    let forward = format!("{port}:8081");
    let disk = d.join("state.img");
    let guest = Guest::boot(&[
        "--initdata",
        init.to_str().unwrap(),
        "--state-disk",
        disk.to_str().unwrap(),
        "--forward",
        &forward,
    ]);
    let t = Target {
        agent: guest.agent.clone(),
        reference: ref_file,
    };
    let agent = guest.agent.clone();

    // A client given wrong reference values refuses to talk to the agent: it sends
    // neither the bundle nor a signed request.
    let mut wrong = reference.clone();
    wrong["pcrs"]["4"] = Value::from("00".repeat(32));
    std::fs::write(d.join("wrong-ref.json"), wrong.to_string()).unwrap();
    let misled = Target {
        agent: agent.clone(),
        reference: d.join("wrong-ref.json"),
    };
    let out = deploy(&misled, &hello, false);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    fails(&out, "failed attestation; nothing was sent");
    fails(&out, "PCR 4");
    fails(&agent_cmd(&misled, &owner, &["ps"]), "nothing was sent");
    // Without reference values nothing is sent either.
    fails(
        &cvm(&["deploy", hello.to_str().unwrap(), "--to", &agent]),
        "no reference values",
    );

    // A tampered ciphertext is refused after the key release and leaves nothing
    // behind: the same name deploys cleanly next.
    fails(&deploy(&t, &tampered, false), "BadContent");
    assert!(ps(&t, &owner).is_empty());

    // The agent's passport: the broker's token for the TLS key `cvm attest` pinned,
    // checked with the key the broker publishes; a peer appliance checks the same.
    let attested = json_ok(&cvm(&[
        "attest",
        "--to",
        &agent,
        "--reference",
        t.reference.to_str().unwrap(),
        "--json",
    ]));
    let key_sha: [u8; 32] = hex::decode(attested["tls_key_sha256"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let body = agent_get(&agent, "/v1/attestation/passport");
    let published = std::process::Command::new("curl")
        .args(["-sf", "--cacert", broker.ca.to_str().unwrap()])
        .arg(format!("{}/kbs/v0/token-key", broker.url))
        .output()
        .unwrap();
    let published: Value = serde_json::from_slice(&published.stdout).unwrap();
    assert_eq!(body["broker_key"], published);
    let broker_key = passport::broker_key(&published).unwrap();
    let token = body["token"].as_str().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let checked = passport::check(&broker_key, token, now, &key_sha).unwrap();
    assert_eq!(checked.tee, "tpm");
    assert!(matches!(
        passport::check(&broker_key, token, now, &[0u8; 32]),
        Err(passport::PassportError::OtherKey { .. })
    ));

    // Deploy, call, state kept in the preopen.
    let deployed = json_ok(&deploy(&t, &hello, true));
    assert_eq!(deployed["state"], "running", "{deployed}");
    assert_eq!(deployed["kind"], "http-component", "{deployed}");
    assert_eq!(
        http(port, "GET", "/", ""),
        (200, "bonjour from a sealed workload, visit 1".into())
    );
    assert_eq!(
        http(port, "GET", "/", "").1,
        "bonjour from a sealed workload, visit 2"
    );
    assert_eq!(http(port, "POST", "/notes", "sealed and delivered").0, 201);
    assert_eq!(
        http(port, "GET", "/notes", ""),
        (200, "sealed and delivered".into())
    );

    // Its manifest is in the measured log, before its key was released.
    let log = agent_get(&agent, "/v1/eventlog");
    let manifests: Vec<&Value> = log["log"]["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["content"]["kind"] == "workload-manifest")
        .collect();
    // The tampered bundle's manifest was measured too (it was signed, then refused).
    assert_eq!(manifests.len(), 2, "{log}");
    let digest = manifests[1]["digests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["hashAlg"] == "sha256")
        .unwrap()["digest"]
        .clone();
    assert_eq!(digest, deployed["manifest_sha256"]);
    let logs = ok(&agent_cmd(&t, &owner, &["logs", "hello"]));
    let measured = logs.find("measured").unwrap();
    let released = logs.find("content key default/hello/key released").unwrap();
    assert!(measured < released, "{logs}");
    assert!(logs.contains("compiled as http-component"), "{logs}");

    // Bad inputs, each with its reason; nothing changes for hello.
    fails(&deploy(&t, &foreign, false), "UnknownOwner");
    fails(&deploy(&t, &greedy, false), "the agent's own API");
    fails(&deploy(&t, &keyless, false), "KeyRefused");
    fails(&deploy(&t, &hello, false), "exists");
    fails(
        &agent_cmd(&t, &stranger, &["ps"]),
        "not trusted by this appliance",
    );
    let names: Vec<Value> = ps(&t, &owner).iter().map(|w| w["name"].clone()).collect();
    assert_eq!(names, vec![Value::from("hello")]);
    assert_eq!(
        http(port, "GET", "/", "").1,
        "bonjour from a sealed workload, visit 3"
    );

    // A workload that loops is stopped by its limit and says so; the agent carries on.
    let spun = json_ok(&deploy(&t, &spinner, true));
    assert_eq!(spun["kind"], "command-component", "{spun}");
    let deadline = Instant::now() + Duration::from_secs(120);
    let reason = loop {
        let w = ps(&t, &owner)
            .into_iter()
            .find(|w| w["name"] == "spinner")
            .unwrap();
        if w["state"] == "failed" {
            break w["reason"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "spinner still {w}");
        std::thread::sleep(Duration::from_secs(1));
    };
    assert!(reason.contains("wall-clock limit reached"), "{reason}");
    let spin_logs = ok(&agent_cmd(&t, &owner, &["logs", "spinner"]));
    assert!(
        spin_logs.contains("wall-clock limit reached"),
        "{spin_logs}"
    );
    assert_eq!(
        http(port, "GET", "/", "").1,
        "bonjour from a sealed workload, visit 4"
    );

    // Stop and remove.
    let stopped = json_ok(&agent_cmd(&t, &owner, &["stop", "hello", "--json"]));
    assert_eq!(stopped["state"], "stopped", "{stopped}");
    ok(&agent_cmd(&t, &owner, &["rm", "hello"]));
    ok(&agent_cmd(&t, &owner, &["rm", "spinner"]));
    assert!(ps(&t, &owner).is_empty());

    // How each measured workload ended is in the measured log too, in order; the
    // refusals before measurement (untrusted owner, the agent's port) are not.
    let log = agent_get(&agent, "/v1/eventlog");
    let outcomes: Vec<String> = log["log"]["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["content"]["kind"] == "workload-outcome")
        .map(|r| r["content"]["subject"].as_str().unwrap().to_owned())
        .collect();
    let expected = [
        "hello refused: BadContent",
        "keyless refused: KeyRefused",
        "spinner failed: ",
        "hello stopped: by its owner",
        "hello removed: with its state",
        "spinner removed: with its state",
    ];
    assert_eq!(outcomes.len(), expected.len(), "{outcomes:#?}");
    for (got, want) in outcomes.iter().zip(expected) {
        assert!(got.starts_with(want), "{got:?} is not {want:?}…");
    }
    assert!(
        outcomes[2].contains("wall-clock limit reached"),
        "{outcomes:?}"
    );
    let (code, report) = guest.shutdown();
    assert_eq!(code, 0, "{report}");
}
