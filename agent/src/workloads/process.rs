//! One workload's runtime process (`cvm-wasm`): started with the launch spec, its
//! stdout/stderr captured into the workload's log, its status events read from a Unix
//! socket only the agent and the runtime can reach, and supervised: an HTTP workload
//! that crashed after it was serving is restarted with backoff; a command is not.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cvm_proto::agent::{LogStream, WorkloadState};
use cvm_runtime::launch::{LaunchSpec, StatusEvent, WasmKind};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::net::UnixListener;
use tokio::process::Command;
use tracing::{info, warn};

use super::Entry;
use crate::runtime_log::Measurements;

/// Consecutive quick crashes after which a serving workload is given up.
const MAX_QUICK_FAILURES: u32 = 5;
/// A run shorter than this counts as a quick crash.
const QUICK: Duration = Duration::from_secs(10);

/// How one run ended.
enum Ended {
    /// Its owner stopped it.
    Stopped,
    /// The process exited by itself (description of the exit status).
    Exited(String),
}

/// Start and supervise the workload until it stops for good; a failure or an exit is
/// measured into the runtime log.
pub async fn supervise(
    entry: Arc<Entry>,
    runtime: std::path::PathBuf,
    spec: LaunchSpec,
    measurements: Arc<Measurements>,
) {
    supervise_until_end(&entry, &runtime, &spec).await;
    // Nothing runs any more: the state's key leaves the kernel whichever way it ended.
    entry.lock_state();
    // A runtime that never became ready is a refused deploy, which deploy.rs measures.
    if !entry.reached_running() {
        return;
    }
    let Some(status) = entry.status() else { return };
    let outcome = match status.state {
        WorkloadState::Failed => format!(
            "failed: {}",
            status.reason.as_deref().unwrap_or("no reason given")
        ),
        WorkloadState::Exited => format!("exited: code {}", status.exit_code.unwrap_or(0)),
        // Stops are measured where the owner asked for them.
        _ => return,
    };
    super::record_outcome(&measurements, &status.name, &outcome).await;
}

async fn supervise_until_end(entry: &Arc<Entry>, runtime: &Path, spec: &LaunchSpec) {
    let mut quick_failures = 0u32;
    loop {
        let started = Instant::now();
        let ended = run_once(entry, runtime, spec).await;
        let reached_running = entry.reached_running();
        match ended {
            Ended::Stopped => {
                entry.finish(WorkloadState::Stopped, Some("stopped by its owner".into()));
                return;
            }
            Ended::Exited(how) => {
                let state = entry.state();
                let http = entry.kind() == Some(WasmKind::HttpComponent);
                if http && reached_running && state != WorkloadState::Exited {
                    quick_failures = if started.elapsed() < QUICK {
                        quick_failures + 1
                    } else {
                        1
                    };
                    let why = entry.reason().unwrap_or_else(|| format!("runtime {how}"));
                    if quick_failures > MAX_QUICK_FAILURES {
                        entry.finish(
                            WorkloadState::Failed,
                            Some(format!(
                                "gave up after {MAX_QUICK_FAILURES} quick restarts: {why}"
                            )),
                        );
                        return;
                    }
                    let delay = Duration::from_millis(500 << quick_failures.min(5));
                    entry.restarting(&why, delay);
                    tokio::time::sleep(delay).await;
                    if entry.stop_requested() {
                        entry.finish(WorkloadState::Stopped, Some("stopped by its owner".into()));
                        return;
                    }
                    continue;
                }
                match state {
                    WorkloadState::Exited | WorkloadState::Failed => entry.finish(state, None),
                    _ => entry.finish(
                        WorkloadState::Failed,
                        Some(format!("runtime process {how} without saying why")),
                    ),
                }
                return;
            }
        }
    }
}

async fn run_once(entry: &Arc<Entry>, runtime: &Path, spec: &LaunchSpec) -> Ended {
    let mut stop = entry.stop_signal();
    if entry.stop_requested() {
        return Ended::Stopped;
    }
    let status_path = spec.status.clone().unwrap_or_default();
    let _ = std::fs::remove_file(&status_path);
    let listener = match UnixListener::bind(&status_path) {
        Ok(l) => l,
        Err(e) => {
            entry.event_failed(format!("status socket {}: {e}", status_path.display()));
            return Ended::Exited("never started".into());
        }
    };
    let mut child = match Command::new(runtime)
        .args(spec.to_args())
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            entry.event_failed(format!("start {}: {e}", runtime.display()));
            return Ended::Exited("never started".into());
        }
    };
    entry.set_pid(child.id());
    info!(workload = %entry.name, pid = ?child.id(), "runtime started");
    if let Some(out) = child.stdout.take() {
        tokio::spawn(capture(entry.clone(), out, LogStream::Stdout));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(capture(entry.clone(), err, LogStream::Stderr));
    }
    let events = tokio::spawn(status_events(entry.clone(), listener));
    let ended = tokio::select! {
        status = child.wait() => Ended::Exited(match status {
            Ok(s) => describe(s),
            Err(e) => format!("could not be waited for: {e}"),
        }),
        () = async { let _ = stop.wait_for(|s| *s).await; } => {
            let _ = child.kill().await;
            Ended::Stopped
        }
    };
    // The runtime's last events (exited/failed) are sent before it exits; let the
    // reader drain them before the outcome is decided.
    let _ = tokio::time::timeout(Duration::from_secs(2), events).await;
    // Whatever the runtime left in its cgroup (a taken-over runtime may have forked)
    // ends with it: nothing of a workload outlives its supervised process.
    let e = entry.clone();
    let _ = tokio::task::spawn_blocking(move || e.kill_cgroup()).await;
    entry.set_pid(None);
    ended
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".to_owned(),
    }
}

async fn capture(entry: Arc<Entry>, stream: impl AsyncRead + Unpin, which: LogStream) {
    let mut lines = BufReader::new(stream).lines();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => entry.logs.push(which, &line),
            Ok(None) => return,
            Err(e) => {
                // Not UTF-8 or unreadable: say so once, keep the workload running.
                entry
                    .logs
                    .push(LogStream::Event, &format!("{which:?} unreadable: {e}"));
                return;
            }
        }
    }
}

async fn status_events(entry: Arc<Entry>, listener: UnixListener) {
    let Ok((stream, _)) = listener.accept().await else {
        return;
    };
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<StatusEvent>(&line) {
            Ok(ev) => entry.on_event(ev),
            Err(e) => warn!(workload = %entry.name, error = %e, "unreadable status event"),
        }
    }
}
