//! The real `Supervisor`, in a process of its own, supervising real child processes.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cvm_init::config::Config;
use cvm_init::supervise::{SuperviseError, Supervisor, handled_signals};
use nix::sys::signal::{SigmaskHow, Signal, kill, sigprocmask};
use nix::unistd::Pid;

fn config(agent: &str, args: &[&str], max_failures: u32) -> Config {
    let json = serde_json::json!({
        "agent": { "path": agent, "args": args },
        "supervise": { "initial_backoff_ms": 20, "max_backoff_ms": 80, "max_failures": max_failures, "shutdown_grace_ms": 2000 }
    });
    Config::new("test", json.to_string().as_bytes(), "").expect("valid config")
}

/// An agent that keeps failing is restarted with backoff, then supervision gives up.
fn crashing_agent_is_restarted_then_fatal() {
    let cfg = config("/bin/false", &[], 4);
    let started = Instant::now();
    let err = Supervisor::new(&cfg).unwrap().run().unwrap_err();
    let elapsed = started.elapsed();
    match err {
        SuperviseError::Crashing { failures, last } => {
            assert_eq!(failures, 4);
            assert_eq!(last, "exited with status 1");
        }
        other => panic!("unexpected {other}"),
    }
    // Three restarts waited 20 + 40 + 80 ms.
    assert!(
        elapsed >= Duration::from_millis(140),
        "restarted without backoff: {elapsed:?}"
    );
}

/// SIGTERM to PID1 stops the agent (which sees SIGTERM: its mask was reset) and returns.
fn sigterm_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let mask = dir.path().join("mask");
    let script = format!(
        "grep SigBlk /proc/self/status > {m}.tmp && mv {m}.tmp {m}; trap 'exit 0' TERM; while :; do sleep 0.05; done",
        m = mask.display()
    );
    let cfg = config("/bin/sh", &["-c", &script], 3);
    let mut sup = Supervisor::new(&cfg).unwrap();
    let me = Pid::this();
    let mask_file = mask.clone();
    std::thread::spawn(move || {
        while !mask_file.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
        kill(me, Signal::SIGTERM).unwrap();
    });
    let reason = sup.run().unwrap();
    assert_eq!(reason, "SIGTERM");
    let blocked = std::fs::read_to_string(&mask).unwrap();
    assert_eq!(
        blocked.trim(),
        "SigBlk:\t0000000000000000",
        "agent started with blocked signals"
    );
}

fn main() {
    // As PID1 does before anything else; threads spawned later inherit the mask.
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&handled_signals()), None).unwrap();
    crashing_agent_is_restarted_then_fatal();
    println!("test crashing_agent_is_restarted_then_fatal ... ok");
    sigterm_stops_the_agent();
    println!("test sigterm_stops_the_agent ... ok");
    println!("2 passed, 0 failed");
}
