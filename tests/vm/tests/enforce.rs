//! Kernel enforcement inside the guest (this host's kernel refuses BPF LSM programs).
//!
//! The image under test runs `cvm-escape` in place of `cvm-wasm` (`cvm build
//! --runtime`): a runtime process that a workload has taken over, which tries every
//! forbidden action before (`control`, unconfined) and after confining itself exactly
//! as `cvm-wasm` does. For each hook: denied with EPERM in enforce mode and reported,
//! allowed and reported in audit mode, the unconfined control unaffected; the escape
//! attempts (ptrace of the agent, signalling another workload, loading a module,
//! mounting, exec of a dropped binary, opening /proc/kcore, joining the agent's
//! cgroup) all fail; a policy the kernel cannot enforce is refused with the layer
//! named; the confinement digest is measured before the workload's first event; and
//! enforcement outlives an agent restart.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cvm_vm_tests::workload::{
    Owner, Target, agent_cmd, deploy, fails, keygen, ok, prepare, seal, wasm,
};
use cvm_vm_tests::{Broker, Guest, agent_get, enabled};
use serde_json::Value;

/// The image whose runtime is `cvm-escape` (`scripts/test` builds it).
fn escape_image() -> PathBuf {
    PathBuf::from(std::env::var_os("CVM_ESCAPE_IMAGE").expect(
        "CVM_ESCAPE_IMAGE: an image built with --runtime cvm-escape (./scripts/test builds it)",
    ))
}

/// Wait until workload `name` has exited; return its log.
fn finished_log(t: &Target, owner: &Owner, name: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = agent_cmd(t, owner, &["ps", "--json"]);
        if out.status.success() {
            let list: Value = serde_json::from_slice(&out.stdout).unwrap();
            let state = list
                .as_array()
                .unwrap()
                .iter()
                .find(|w| w["name"] == name)
                .map(|w| w["state"].as_str().unwrap_or("").to_owned());
            if matches!(state.as_deref(), Some("exited" | "failed")) {
                return ok(&agent_cmd(t, owner, &["logs", name]));
            }
        }
        assert!(Instant::now() < deadline, "{name} never finished");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The result line of `action` in `phase`.
fn result<'a>(log: &'a str, phase: &str, action: &str) -> &'a str {
    let prefix = format!("ATTEMPT {phase} {action} -> ");
    log.lines()
        .find_map(|l| l.find(&prefix).map(|i| &l[i + prefix.len()..]))
        .unwrap_or_else(|| panic!("no result for {phase} {action} in:\n{log}"))
        .trim()
}

fn expect(log: &str, phase: &str, cases: &[(&str, &str)]) {
    for (action, want) in cases {
        let got = result(log, phase, action);
        assert_eq!(got, *want, "{phase} {action}: {got} (log:\n{log})");
    }
}

fn policy(mode: &str, args: &[String]) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "mode: {mode}\npreopens: [{{dir: data, guest: /data, access: rw}}, {{dir: cfg, guest: /cfg, access: ro}}]\nnetwork: {{connect: [\"10.0.2.2:7\"]}}\nargs: [{}]\n",
        args.join(", ")
    )
}

fn files(name: &str) -> String {
    format!("/var/lib/cvm/workloads/{name}/files")
}

fn records(agent: &str) -> Vec<Value> {
    agent_get(agent, "/v1/eventlog")["log"]["records"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn every_hook_denies_in_enforce_audits_in_audit_and_spares_the_unconfined() {
    if !enabled() {
        return;
    }
    let image = escape_image();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(&d.join("broker"));
    let owner = keygen(d, "owner");
    let (init, reference) = prepare(d, &broker, &owner, &image);
    let disk = d.join("state.img");
    let guest = Guest::start_image(
        &image,
        &[
            "--initdata",
            init.to_str().unwrap(),
            "--state-disk",
            disk.to_str().unwrap(),
        ],
    )
    .wait_ready();
    let t = Target {
        agent: guest.agent.clone(),
        reference,
    };
    let wasm = wasm("hello");
    let sealed = |name: &str, text: &str| seal(&broker, &owner, &wasm, text, name, d, true);
    let s = |v: &[&str]| v.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();

    // The baseline was installed and measured once, before the agent started.
    let log = records(&t.agent);
    let baselines: Vec<&Value> = log
        .iter()
        .filter(|r| r["content"]["kind"] == "enforcement-baseline")
        .collect();
    assert_eq!(baselines.len(), 1, "{log:?}");

    // A victim in its own workload, to be signalled by another.
    ok(&deploy(
        &t,
        &sealed(
            "victim",
            &policy("enforce", &s(&["pid", "confine", "sleep:3600"])),
        ),
        false,
    ));
    let victim_pid = {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let logs = ok(&agent_cmd(&t, &owner, &["logs", "victim"]));
            if let Some(pid) = logs
                .lines()
                .find_map(|l| l.split("PID ").nth(1).map(|p| p.trim().to_owned()))
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "victim never printed its pid");
            std::thread::sleep(Duration::from_millis(500));
        }
    };

    // Enforce mode.
    let f = files("enf");
    let probes = [
        "open-read:/proc/kcore".to_owned(),
        "open-read:/sys/fs/bpf/cvm/config".to_owned(),
        "open-read:/usr/bin/cvm-agent".to_owned(),
        "exec:/usr/bin/cvm-agent".to_owned(),
        "connect:10.0.2.2:9".to_owned(),
        "bind:0.0.0.0:9999".to_owned(),
        "kill-child".to_owned(),
        "bpf".to_owned(),
    ];
    let mut args: Vec<String> = probes.to_vec();
    args.push("confine".into());
    args.extend(probes.iter().cloned());
    args.extend([
        format!("open-write:{f}/data/x"),
        format!("open-read:{f}/data/x"),
        format!("open-write:{f}/cfg/x"),
        format!("exec-dropped:{f}/data"),
        "connect:10.0.2.2:7".into(),
        "ptrace-parent".into(),
        "ptrace-child".into(),
        "kill-parent".into(),
        format!("kill:{victim_pid}"),
        format!("mount:{f}/data"),
        "module".into(),
        "cgroup-escape".into(),
    ]);
    ok(&deploy(
        &t,
        &sealed("enf", &policy("enforce", &args)),
        false,
    ));
    let log = finished_log(&t, &owner, "enf");
    // The unconfined control (the runtime before it confines itself).
    expect(
        &log,
        "control",
        &[
            // This kernel has no /proc/kcore at all (tinyconfig); the baseline rule is
            // there for kernels that do.
            ("open-read:/proc/kcore", "ENOENT"),
            ("open-read:/sys/fs/bpf/cvm/config", "EPERM"), // the baseline, for everyone
            ("open-read:/usr/bin/cvm-agent", "ok"),
            ("exec:/usr/bin/cvm-agent", "ok"),
            ("connect:10.0.2.2:9", "ECONNREFUSED"),
            ("bind:0.0.0.0:9999", "ok"),
            ("kill-child", "ok"),
            ("bpf", "ok"), // still in the agent's cgroup
        ],
    );
    expect(
        &log,
        "confined",
        &[
            ("open-read:/proc/kcore", "ENOENT"),
            ("open-read:/sys/fs/bpf/cvm/config", "EPERM"),
            ("open-read:/usr/bin/cvm-agent", "EPERM"),
            ("exec:/usr/bin/cvm-agent", "EPERM"),
            ("connect:10.0.2.2:9", "EPERM"),
            ("bind:0.0.0.0:9999", "EPERM"),
            ("kill-child", "ok"), // its own cgroup
            ("bpf", "EPERM"),
            (&format!("open-write:{f}/data/x"), "ok"),
            (&format!("open-read:{f}/data/x"), "ok"),
            // Creating a file in the read-only preopen: Landlock refuses the creation
            // itself (BPF's file_open would refuse the open that follows).
            (&format!("open-write:{f}/cfg/x"), "EACCES"),
            (&format!("exec-dropped:{f}/data"), "EPERM"),
            ("connect:10.0.2.2:7", "ECONNREFUSED"), // allowed: reaches the network
            ("ptrace-parent", "EPERM"),
            ("ptrace-child", "EPERM"),
            ("kill-parent", "EPERM"),
            (&format!("kill:{victim_pid}"), "EPERM"),
            (&format!("mount:{f}/data"), "EPERM"),
            // No loader in this kernel at all (CONFIG_MODULES=n); the hooks are
            // attached for kernels that have one.
            ("module", "ENOSYS"),
            ("cgroup-escape", "EPERM"),
        ],
    );
    assert!(log.contains("Landlock enforced"), "{log}");
    for hook in [
        "file_open: open /sys/fs/bpf/cvm/config for read",
        // Also what stops the exec: a workload cannot even open a binary to run it
        // (every mount it can write is noexec; bprm_check_security is the backstop,
        // seen in audit mode below).
        "file_open: open /usr/bin/cvm-agent for read",
        "socket_connect: connect to 10.0.2.2:9",
        "socket_bind: bind 0.0.0.0:9999",
        "ptrace_access_check",
        "task_kill",
        "sb_mount",
        "bpf: bpf() command 0",
    ] {
        assert!(
            log.contains(&format!("kernel denied {hook}")),
            "no denial of {hook} in:\n{log}"
        );
    }

    // The confinement digest is in the measured log before the workload's first
    // enforcement event, and after its manifest.
    let log_records = records(&t.agent);
    let pos = |kind: &str, prefix: &str| {
        log_records
            .iter()
            .position(|r| {
                r["content"]["kind"] == kind
                    && r["content"]["subject"]
                        .as_str()
                        .unwrap()
                        .starts_with(prefix)
            })
            .unwrap_or_else(|| panic!("no {kind} record for {prefix}: {log_records:?}"))
    };
    let manifest = pos("workload-manifest", "enf ");
    let confinement = pos("workload-confinement", "enf mode=enforce sha256:");
    let first_event = pos("enforcement-event", "enf denied");
    assert!(manifest < confinement && confinement < first_event);
    let subject = log_records[confinement]["content"]["subject"]
        .as_str()
        .unwrap();
    let digest = subject.rsplit("sha256:").next().unwrap();
    assert!(
        log.contains(&format!("confinement sha256:{digest}")),
        "{log}"
    );
    // One record per kind of event, however many times it happened.
    let first_open = log_records
        .iter()
        .filter(|r| {
            r["content"]["subject"]
                .as_str()
                .unwrap()
                .starts_with("enf denied file_open: open /sys/fs/bpf/cvm/config")
        })
        .count();
    assert_eq!(first_open, 1);

    // The metrics count the decisions.
    let metrics = ok(&agent_cmd(&t, &owner, &["metrics"]));
    assert!(
        metrics.contains(
            "cvm_enforcement_events_total{workload=\"enf\",hook=\"socket_connect\",verdict=\"denied\"} 1"
        ),
        "{metrics}"
    );

    // Nothing of a workload outlives it: a child it left behind is killed with it.
    ok(&deploy(
        &t,
        &sealed(
            "leaver",
            &policy("enforce", &s(&["confine", "fork-orphan"])),
        ),
        false,
    ));
    let log = finished_log(&t, &owner, "leaver");
    let orphan = log
        .lines()
        .find_map(|l| l.split("CHILD ").nth(1).map(|p| p.trim().to_owned()))
        .unwrap_or_else(|| panic!("no CHILD line in {log}"));

    // Audit mode: the same actions succeed and are reported.
    let a = files("aud");
    let kill_orphan = format!("kill:{orphan}");
    let mut args = s(&["confine", kill_orphan.as_str()]);
    args.extend([
        "open-read:/usr/bin/cvm-agent".to_owned(),
        "exec:/usr/bin/cvm-agent".into(),
        "connect:10.0.2.2:9".into(),
        "bind:0.0.0.0:9999".into(),
        "ptrace-child".into(),
        "kill-parent".into(),
        format!("mount:{a}/data"),
        "bpf".into(),
    ]);
    ok(&deploy(&t, &sealed("aud", &policy("audit", &args)), false));
    let log = finished_log(&t, &owner, "aud");
    expect(
        &log,
        "confined",
        &[
            ("open-read:/usr/bin/cvm-agent", "ok"),
            ("exec:/usr/bin/cvm-agent", "ok"),
            ("connect:10.0.2.2:9", "ECONNREFUSED"),
            ("bind:0.0.0.0:9999", "ok"),
            ("ptrace-child", "ok"),
            ("kill-parent", "ok"),
            (&format!("mount:{a}/data"), "ok"),
            ("bpf", "ok"),
            // The orphan is gone (a kill would be allowed here, in audit mode).
            (&format!("kill:{orphan}"), "ESRCH"),
        ],
    );
    assert!(log.contains("Landlock not applied (audit mode)"), "{log}");
    for hook in [
        "file_open",
        "bprm_check_security",
        "socket_connect",
        "socket_bind",
        "ptrace_access_check",
        "task_kill",
        "sb_mount",
        "bpf",
    ] {
        assert!(
            log.contains(&format!("kernel audited {hook}")),
            "no audit of {hook} in:\n{log}"
        );
    }

    // A policy the kernel cannot enforce is refused, naming the layer.
    let strict = sealed("strict", "require: {landlock_abi: 9}\nargs: [confine]\n");
    let out = deploy(&t, &strict, false);
    fails(
        &out,
        "landlock: the kernel offers ABI 6, the confinement needs 9",
    );

    // Enforcement outlives the agent: a workload in audit mode kills it; PID1 starts a
    // new one, which finds the pinned programs (and reloads nothing).
    ok(&deploy(
        &t,
        &sealed(
            "killer",
            &policy("audit", &s(&["confine", "sleep:2", "kill-parent:9"])),
        ),
        false,
    ));
    let deadline = Instant::now() + Duration::from_secs(180);
    std::thread::sleep(Duration::from_secs(5));
    loop {
        let out = agent_cmd(&t, &owner, &["ps", "--json"]);
        if out.status.success() {
            let list: Value = serde_json::from_slice(&out.stdout).unwrap();
            // A new agent knows no workloads.
            if list.as_array().unwrap().is_empty() {
                break;
            }
        }
        assert!(Instant::now() < deadline, "the agent did not come back");
        std::thread::sleep(Duration::from_secs(2));
    }
    ok(&deploy(
        &t,
        &sealed(
            "after",
            &policy("enforce", &s(&["confine", "open-read:/usr/bin/cvm-agent"])),
        ),
        false,
    ));
    let log = finished_log(&t, &owner, "after");
    expect(
        &log,
        "confined",
        &[("open-read:/usr/bin/cvm-agent", "EPERM")],
    );
    assert!(log.contains("kernel denied file_open"), "{log}");
    let baselines = records(&t.agent)
        .iter()
        .filter(|r| r["content"]["kind"] == "enforcement-baseline")
        .count();
    assert_eq!(baselines, 1);
    drop(guest);
}
