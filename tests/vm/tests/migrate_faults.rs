//! Migrations whose network fails: the source reaches the destination through a TCP
//! relay on the host (`--via`) that cuts one connection at a chosen point. After each
//! run exactly one appliance serves the Badge Request Tool, with every acknowledged
//! change, and the broker's lease names it; the counts are printed.
//!
//! - the offer's connection cut in its TLS handshake, or after 4 KiB (the destination
//!   never sees it whole): the source takes the release back, signs an abort and
//!   serves again;
//! - the destination's answer lost (it committed and serves, the source hears nothing):
//!   the source learns the outcome from the broker and deletes its copy.

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use cvm_vm_tests::workload::{Target, body, call, deploy, keygen, prepare, seal, wasm};
use cvm_vm_tests::{Broker, Guest, cvm, enabled, image, json_ok, repo_root};
use serde_json::{Value, json};

const SEC: (&str, &str) = ("security", "guard-7");
const ADA: (&str, &str) = ("employee", "E000042");

/// Where the relay cuts the connection it is told to cut.
#[derive(Debug, Clone, Copy)]
enum Cut {
    /// After this many bytes from the source, before the rest of its request.
    Request(usize),
    /// At the destination's first bytes after the source sent this many: with 0, in
    /// the TLS handshake; past the bundle's size, the HTTP answer to a whole offer.
    Answer(usize),
}

/// A relay on 127.0.0.1 to `target`; connection number `victim` (1-based) is cut.
fn relay(target: String, victim: usize, cut: Cut) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            let target = target.clone();
            std::thread::spawn(move || {
                let Ok(server) = TcpStream::connect(&target) else {
                    return;
                };
                pump(client, server, (n == victim).then_some(cut));
            });
        }
    });
    port
}

/// Copy both ways; with a cut, stop where it says and close both ends.
fn pump(client: TcpStream, server: TcpStream, cut: Option<Cut>) {
    let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    let (mut s_in, mut c_out) = (server, client);
    let total = Arc::new(AtomicUsize::new(0));
    let counted = total.clone();
    let up = std::thread::spawn(move || {
        let mut buf = [0u8; 16 << 10];
        let mut sent = 0usize;
        loop {
            let n = match c_in.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let n = match cut {
                Some(Cut::Request(limit)) if sent + n >= limit => {
                    let _ = s_out.write_all(&buf[..limit - sent]);
                    let _ = s_out.shutdown(Shutdown::Both);
                    let _ = c_in.shutdown(Shutdown::Both);
                    return;
                }
                _ => n,
            };
            if s_out.write_all(&buf[..n]).is_err() {
                break;
            }
            sent += n;
            counted.store(sent, Ordering::SeqCst);
        }
        let _ = s_out.shutdown(Shutdown::Write);
    });
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match s_in.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(Cut::Answer(after)) = cut
            && total.load(Ordering::SeqCst) >= after
        {
            // The destination answered: the answer is lost.
            let _ = c_out.shutdown(Shutdown::Both);
            let _ = s_in.shutdown(Shutdown::Both);
            break;
        }
        if c_out.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = c_out.shutdown(Shutdown::Both);
    let _ = up.join();
}

#[test]
fn a_cut_connection_leaves_exactly_one_appliance_serving_with_every_change() {
    if !enabled() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(&d.join("broker"));
    let owner = keygen(d, "owner");
    let policy =
        std::fs::read_to_string(repo_root().join("workloads/badge-request/policy.yaml")).unwrap();
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
    let ports = [
        cvm_vm_tests::workload::free_port(),
        cvm_vm_tests::workload::free_port(),
    ];
    let start = |disk: &str, port: u16| {
        Guest::start(&[
            "--initdata",
            init.to_str().unwrap(),
            "--state-disk",
            d.join(disk).to_str().unwrap(),
            "--forward",
            &format!("{port}:8082"),
        ])
    };
    let (a, b) = (start("a.img", ports[0]), start("b.img", ports[1]));
    let guests = [a.wait_ready(), b.wait_ready()];
    let ta = Target {
        agent: guests[0].agent.clone(),
        reference: reference.clone(),
    };
    assert_eq!(json_ok(&deploy(&ta, &bundle, true))["state"], "running");
    let ada = body(
        d,
        "ada",
        &json!({"employee_id": "E000042", "name": "Ada Lovelace", "site": "Zurich", "zones": ["lobby"]}),
    );
    assert_eq!(call(ports[0], "POST", "/badges", ADA, Some(&ada)).0, 201);

    // (fault, the appliance expected to serve afterwards: 0 = source, 1 = destination)
    let faults = [
        ("offer cut in its TLS handshake", Cut::Answer(0), 0),
        ("offer cut after 4 KiB", Cut::Request(4096), 0),
        ("answer lost", Cut::Answer(64 << 10), 1),
    ];
    let (mut runs, mut clean, mut aborted, mut lost, mut both) = (0, 0, 0, 0, 0);
    let mut src = 0usize;
    for (label, cut, expect) in faults {
        let dst = 1 - src;
        let (_, acknowledged) = call(ports[src], "GET", "/state", SEC, None);
        // Connection 1 is the passport, connection 2 the offer.
        let relay_port = relay(guests[dst].agent.clone(), 2, cut);
        let out = cvm(&[
            "migrate",
            "badge-request",
            "--from",
            &guests[src].agent,
            "--to",
            &guests[dst].agent,
            "--via",
            &format!("10.0.2.2:{relay_port}"),
            "--reference",
            reference.to_str().unwrap(),
            "--owner-key",
            owner.key.to_str().unwrap(),
            "--out",
            d.join(format!("run{runs}")).to_str().unwrap(),
            "--json",
        ]);
        runs += 1;
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        eprintln!(
            "fault {label}: {} ({}), {} ms",
            report["outcome"], report["reason"], report["millis"]
        );
        let serving: Vec<usize> = (0..2)
            .filter(|&i| call(ports[i], "GET", "/state", SEC, None).0 == 200)
            .collect();
        if serving.len() > 1 {
            both += 1;
        }
        assert_eq!(serving, [[src, dst][expect]], "{label}: {report}");
        let now = serving[0];
        if call(ports[now], "GET", "/state", SEC, None).1 != acknowledged {
            lost += 1;
        }
        match report["outcome"].as_str() {
            Some("migrated") => clean += 1,
            Some("aborted") => aborted += 1,
            _ => panic!("{label}: {report}"),
        }
        let lease = json_ok(&broker.admin(&["counter", "get", "default/badge-request/state-key"]));
        assert!(
            lease["holder"].as_str().unwrap().starts_with("volume:"),
            "{label}: {lease}"
        );
        // The next change lands where it serves now, and is kept from there on.
        let (code, _) = call(
            ports[now],
            "POST",
            "/badges/B000001/approve",
            ("manager", "E000001"),
            None,
        );
        assert!(code == 200 || code == 409, "{label}: {code}");
        src = now;
    }
    eprintln!(
        "migration faults: {runs} runs, {clean} completed, {aborted} aborted cleanly, {lost} lost changes, {both} with two serving"
    );
    assert_eq!((lost, both), (0, 0));
    for g in guests {
        let (code, report) = g.shutdown();
        assert_eq!(code, 0, "{report}");
    }
}
