//! Sealed workloads on this appliance: deployed from bundles (see [`deploy`] for the
//! order of checks), each run by its own `cvm-wasm` process ([`process`]), its log kept
//! in memory ([`logs`]), its `wasi:http` port proxied by the agent ([`proxy`]).
//!
//! Layout: `RUN_DIR/NAME/` (tmpfs) holds the verified Wasm, the policy and the two
//! sockets; `STATE/workloads/NAME/files/` (the encrypted state volume) is the root its
//! preopens are resolved beneath. Deleting a workload deletes both.

pub mod deploy;
pub mod logs;
pub mod migrate;
pub mod process;
pub mod proxy;
pub mod sealed_state;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cvm_proto::agent::{LogStream, WorkloadState, WorkloadStatus};
use cvm_runtime::bundle::owner::OwnerKeys;
use cvm_runtime::launch::{StatusEvent, WasmKind};
use cvm_runtime::migration::Step;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::broker::Broker;
use crate::enforce::{Enforcer, LayerError, Scope};
use crate::runtime_log::Measurements;
pub use deploy::DeployError;
use logs::LogBuffer;

/// Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What the workloads share: where things are and who to ask.
#[derive(Debug)]
pub struct Context {
    /// The runtime binary.
    pub runtime: PathBuf,
    /// Run folders (tmpfs).
    pub run_dir: PathBuf,
    /// The encrypted state volume, if mounted.
    pub state_dir: Option<PathBuf>,
    /// The agent API's own port (no workload may take it).
    pub api_port: u16,
    /// Owners whose bundles are accepted.
    pub owners: OwnerKeys,
    /// Where content keys come from.
    pub broker: Option<Broker>,
    /// The runtime event log.
    pub measurements: Arc<Measurements>,
    /// The kernel enforcement, or why the baseline's maps could not be opened (then no
    /// workload is deployed).
    pub enforcer: Result<Arc<Enforcer>, LayerError>,
    /// How this agent names itself as the holder of a workload's state at the broker.
    pub holder: String,
    /// The broker's tokens for the agent's TLS key (migrations check them both ways).
    pub passports: Arc<crate::passport::Passports>,
    /// SHA-256 of the agent's TLS key, hex: its identity in migration certificates.
    pub tls_key_sha256: String,
    /// The TLS key (PKCS#8), which signs migration certificates.
    pub tls_key_pkcs8: Arc<zeroize::Zeroizing<Vec<u8>>>,
}

/// Mutable facts about one workload.
#[derive(Debug)]
struct Record {
    status: WorkloadStatus,
    owner: Vec<u8>,
    kind: Option<WasmKind>,
    pid: Option<u32>,
    reached_running: bool,
    /// The runtime of the current run reported its confinement.
    confined: bool,
}

/// One workload.
#[derive(Debug)]
pub struct Entry {
    /// Its name.
    pub name: String,
    record: Mutex<Record>,
    /// Its log.
    pub logs: LogBuffer,
    state: watch::Sender<WorkloadState>,
    stop: watch::Sender<bool>,
    proxy: Mutex<Option<JoinHandle<()>>>,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    /// Its kernel confinement (cgroup and BPF rules), released when it is discarded.
    scope: Mutex<Option<Scope>>,
    /// Kernel enforcement events by (hook, verdict).
    kernel_events: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Its sealed state once opened, and whether its key is in the kernel.
    sealed: Mutex<Option<(sealed_state::Opened, bool)>>,
    /// A deploy owns it (from the name's reservation until the deploy's answer).
    deploying: std::sync::atomic::AtomicBool,
}

impl Entry {
    fn new(status: WorkloadStatus, owner: Vec<u8>) -> Self {
        Self {
            name: status.name.clone(),
            state: watch::channel(status.state).0,
            record: Mutex::new(Record {
                status,
                owner,
                kind: None,
                pid: None,
                reached_running: false,
                confined: false,
            }),
            logs: LogBuffer::default(),
            stop: watch::channel(false).0,
            proxy: Mutex::new(None),
            supervisor: Mutex::new(None),
            scope: Mutex::new(None),
            kernel_events: Mutex::new(BTreeMap::new()),
            sealed: Mutex::new(None),
            deploying: std::sync::atomic::AtomicBool::new(true),
        }
    }

    /// The deploy that made this entry has answered.
    fn deployed(&self) {
        self.set_deploying(false);
    }

    /// Mark the entry as owned by a deploy or a migration in flight (or not).
    fn set_deploying(&self, busy: bool) {
        self.deploying
            .store(busy, std::sync::atomic::Ordering::Release);
    }

    /// Claim the entry for a migration: false if a deploy or another migration has it.
    fn claim(&self) -> bool {
        self.deploying
            .compare_exchange(
                false,
                true,
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
            )
            .is_ok()
    }

    /// Record the opened sealed state (and show its version in the status).
    fn set_sealed(&self, opened: sealed_state::Opened) {
        if let Ok(mut r) = self.record.lock() {
            r.status.state_version = Some(opened.version);
        }
        if let Ok(mut s) = self.sealed.lock() {
            *s = Some((opened, true));
        }
    }

    fn sealed(&self) -> Option<sealed_state::Opened> {
        self.sealed
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|(o, _)| o.clone()))
    }

    /// Remove the state key from the kernel (after the runtime has ended): the folder's
    /// files are unreadable until the next deploy fetches the key again. A removal
    /// that fails is logged and tried again at the next call.
    fn lock_state(&self) {
        let Some(opened) = self.sealed.lock().ok().and_then(|s| match s.as_ref() {
            Some((o, true)) => Some(o.clone()),
            _ => None,
        }) else {
            return;
        };
        match crate::fscrypt::remove_key(&opened.mount, &opened.key_id) {
            Ok(complete) => {
                if let Ok(mut s) = self.sealed.lock()
                    && let Some((_, unlocked)) = s.as_mut()
                {
                    *unlocked = false;
                }
                self.logs.push(
                    LogStream::Event,
                    if complete {
                        "state key removed from the kernel"
                    } else {
                        "state key removed; files still open keep it until they close"
                    },
                );
            }
            Err(e) => warn!(workload = %self.name, error = %e, "remove the state key"),
        }
    }

    /// Kill every process left in the workload's cgroup.
    fn kill_cgroup(&self) {
        if let Ok(s) = self.scope.lock()
            && let Some(scope) = s.as_ref()
        {
            crate::enforce::kill_cgroup(&scope.cgroup);
        }
    }

    fn set_scope(&self, scope: Scope) {
        if let Ok(mut s) = self.scope.lock() {
            *s = Some(scope);
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Record) -> T) -> Option<T> {
        self.record.lock().ok().map(|mut r| f(&mut r))
    }

    /// Its status now, with the runtime's resident memory.
    pub fn status(&self) -> Option<WorkloadStatus> {
        self.with(|r| {
            let mut s = r.status.clone();
            s.rss_bytes = r.pid.and_then(rss_bytes);
            s
        })
    }

    /// The kid of the owner that signed it.
    pub fn owner(&self) -> Vec<u8> {
        self.with(|r| r.owner.clone()).unwrap_or_default()
    }

    fn state(&self) -> WorkloadState {
        *self.state.borrow()
    }

    fn set_state(&self, state: WorkloadState) {
        self.with(|r| {
            r.status.state = state;
            if state == WorkloadState::Running {
                r.reached_running = true;
            }
        });
        self.state.send_replace(state);
    }

    fn kind(&self) -> Option<WasmKind> {
        self.with(|r| r.kind).flatten()
    }

    fn reason(&self) -> Option<String> {
        self.with(|r| r.status.reason.clone()).flatten()
    }

    fn reached_running(&self) -> bool {
        self.with(|r| r.reached_running).unwrap_or(false)
    }

    fn set_pid(&self, pid: Option<u32>) {
        self.with(|r| {
            r.pid = pid;
            r.confined = false;
        });
    }

    fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    fn stop_requested(&self) -> bool {
        *self.stop.borrow()
    }

    /// A status event from the runtime.
    fn on_event(&self, ev: StatusEvent) {
        let line = match &ev {
            StatusEvent::Compiled { kind, ms } => {
                format!("compiled as {} in {ms} ms", kind_name(*kind))
            }
            StatusEvent::Confined { cgroup, landlock } => format!(
                "confined: cgroup {cgroup}, Landlock {}",
                if *landlock {
                    "enforced"
                } else {
                    "not applied (audit mode)"
                }
            ),
            StatusEvent::Ready { .. } => "ready".to_owned(),
            StatusEvent::Denied { what, detail } => format!("denied {what}: {detail}"),
            StatusEvent::RequestFailed { reason } => format!("request failed: {reason}"),
            StatusEvent::Exited { code } => format!("exited with code {code}"),
            StatusEvent::Failed { reason } => format!("failed: {reason}"),
        };
        self.logs.push(LogStream::Event, &line);
        match ev {
            StatusEvent::Compiled { kind, ms } => {
                self.with(|r| {
                    r.kind = Some(kind);
                    r.status.kind = Some(kind_name(kind).to_owned());
                    r.status.compile_ms = Some(ms);
                });
            }
            StatusEvent::Confined { .. } => {
                self.with(|r| r.confined = true);
            }
            // The agent always asks for confinement: a runtime that reports ready
            // without having confined itself is not let run.
            StatusEvent::Ready { .. } if !self.with(|r| r.confined).unwrap_or(false) => {
                self.on_event(StatusEvent::Failed {
                    reason: "the runtime did not confine itself before starting".into(),
                });
                if let Some(pid) = self.with(|r| r.pid).flatten() {
                    crate::sys::kill(pid);
                }
            }
            StatusEvent::Ready { .. } => self.set_state(WorkloadState::Running),
            StatusEvent::Denied { .. } => {
                self.with(|r| r.status.denials += 1);
            }
            StatusEvent::RequestFailed { .. } => {
                self.with(|r| r.status.failed_requests += 1);
            }
            StatusEvent::Exited { code } => {
                self.with(|r| r.status.exit_code = Some(code));
                self.set_state(WorkloadState::Exited);
            }
            StatusEvent::Failed { reason } => {
                self.with(|r| r.status.reason = Some(reason));
                self.set_state(WorkloadState::Failed);
            }
        }
    }

    /// The agent's own failure report (the runtime never got to say anything).
    fn event_failed(&self, reason: String) {
        self.on_event(StatusEvent::Failed { reason });
    }

    fn restarting(&self, why: &str, delay: Duration) {
        let n = self
            .with(|r| {
                r.status.restarts += 1;
                r.status.reason = None;
                r.status.restarts
            })
            .unwrap_or(0);
        self.logs.push(
            LogStream::Event,
            &format!(
                "runtime ended ({why}); restart {n} in {} ms",
                delay.as_millis()
            ),
        );
        self.set_state(WorkloadState::Starting);
    }

    /// The final state, with a reason when one is given.
    fn finish(&self, state: WorkloadState, reason: Option<String>) {
        if let Some(reason) = &reason {
            self.logs.push(LogStream::Event, reason);
            self.with(|r| r.status.reason = Some(reason.clone()));
        }
        self.set_state(state);
    }
}

fn kind_name(kind: WasmKind) -> &'static str {
    match kind {
        WasmKind::HttpComponent => "http-component",
        WasmKind::CommandComponent => "command-component",
        WasmKind::Preview1Module => "preview1-module",
    }
}

/// Longest outcome subject measured (a trap's message can be long).
const MAX_OUTCOME: usize = 512;

/// Measure how workload `name` ended into the runtime log and register, so evidence
/// shows it to a verifier or broker after the fact. A failure to measure is logged and
/// changes nothing else: the outcome has happened either way.
pub(crate) async fn record_outcome(measurements: &Arc<Measurements>, name: &str, outcome: &str) {
    let mut subject = format!("{name} {outcome}");
    if subject.len() > MAX_OUTCOME {
        let mut end = MAX_OUTCOME;
        while !subject.is_char_boundary(end) {
            end -= 1;
        }
        subject.truncate(end);
    }
    let kind = cvm_attest::EventKind::WorkloadOutcome;
    if let Err(e) = measure_text(measurements, kind, subject).await {
        warn!(workload = %name, error = %e, "could not measure the workload's outcome");
    }
}

/// Measure `subject` as its own content (off the async thread: a TPM extend blocks).
async fn measure_text(
    measurements: &Arc<Measurements>,
    kind: cvm_attest::EventKind,
    subject: String,
) -> Result<(), String> {
    let m = measurements.clone();
    tokio::task::spawn_blocking(move || m.measure(kind, &subject, subject.as_bytes()).map(drop))
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
}

/// The kernel's estimate of memory available for new work (`MemAvailable`), bytes.
pub fn mem_available_bytes() -> Option<u64> {
    proc_kib_field("/proc/meminfo", "MemAvailable:")
}

fn rss_bytes(pid: u32) -> Option<u64> {
    proc_kib_field(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// A `NAME:   N kB` line of a /proc file, in bytes.
fn proc_kib_field(path: &str, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let kib: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// A request about a workload that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadError {
    /// No such workload (or not the caller's).
    #[error("no workload {0}")]
    NotFound(String),
    /// It is not running.
    #[error("workload {0} is not running")]
    NotRunning(String),
    /// It is being deployed.
    #[error("workload {0} is being deployed; try again when it runs or was refused")]
    Busy(String),
    /// The broker did not record the removal of its state, so nothing was removed.
    #[error(
        "workload {name} kept, with its state: the broker did not record the removal: {reason}"
    )]
    RemovalNotRecorded {
        /// The workload.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Every workload of this appliance.
#[derive(Debug)]
pub struct Workloads {
    ctx: Context,
    entries: Mutex<BTreeMap<String, Arc<Entry>>>,
    /// Kernel enforcement events of processes outside any workload, by (hook, verdict).
    baseline_events: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// The last migrations from here, for their owners.
    pub reports: migrate::Reports,
}

impl Workloads {
    /// No workloads yet; state folders a crash left half deleted are finished.
    pub fn new(ctx: Context) -> Self {
        if let Some(dir) = &ctx.state_dir {
            sealed_state::finish_wipes(&dir.join("workloads"));
        }
        Self {
            ctx,
            entries: Mutex::new(BTreeMap::new()),
            baseline_events: Mutex::new(BTreeMap::new()),
            reports: migrate::Reports::default(),
        }
    }

    /// The workload `name`, if `owner` (a kid) is its owner.
    pub fn get(&self, name: &str, owner: &[u8]) -> Result<Arc<Entry>, WorkloadError> {
        self.entries
            .lock()
            .ok()
            .and_then(|e| e.get(name).cloned())
            .filter(|e| e.owner() == owner)
            .ok_or_else(|| WorkloadError::NotFound(name.to_owned()))
    }

    /// The workloads `owner` deployed (all of them for `None`).
    pub fn list(&self, owner: Option<&[u8]>) -> Vec<WorkloadStatus> {
        let entries: Vec<Arc<Entry>> = self
            .entries
            .lock()
            .map(|e| e.values().cloned().collect())
            .unwrap_or_default();
        entries
            .iter()
            .filter(|e| owner.is_none_or(|o| e.owner() == o))
            .filter_map(|e| e.status())
            .collect()
    }

    /// Stop a running workload (its files stay; `remove` deletes them).
    pub async fn stop(&self, name: &str, owner: &[u8]) -> Result<WorkloadStatus, WorkloadError> {
        let entry = self.get(name, owner)?;
        if !entry.claim() {
            return Err(WorkloadError::Busy(name.to_owned()));
        }
        let running = matches!(
            entry.state(),
            WorkloadState::Starting | WorkloadState::Running
        );
        if !running {
            entry.set_deploying(false);
            return Err(WorkloadError::NotRunning(name.to_owned()));
        }
        halt(&entry).await;
        entry.lock_state();
        entry.set_deploying(false);
        record_outcome(&self.ctx.measurements, name, "stopped: by its owner").await;
        entry
            .status()
            .ok_or_else(|| WorkloadError::NotFound(name.to_owned()))
    }

    /// Stop it and delete its run folder and its state. Sealed state is deleted only
    /// once the broker has recorded the removal (so a fresh start is allowed later and
    /// the removed state can never come back); if it cannot, nothing changes.
    pub async fn remove(&self, name: &str, owner: &[u8]) -> Result<(), WorkloadError> {
        let entry = self.get(name, owner)?;
        // A deploy or migration in flight owns the entry (and may be opening the
        // state); otherwise this removal does until the entry is gone.
        if !entry.claim() {
            return Err(WorkloadError::Busy(name.to_owned()));
        }
        if let (Some(opened), Some(broker)) = (entry.sealed(), self.ctx.broker.clone()) {
            let measurements = self.ctx.measurements.clone();
            let recorded = tokio::task::spawn_blocking(move || {
                let _still = measurements.hold_still();
                let mut session = broker.session(&measurements.current()?)?;
                sealed_state::record_removal(&mut session, &opened).map_err(|e| e.to_string())
            })
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
            if let Err(reason) = recorded {
                entry.set_deploying(false);
                return Err(WorkloadError::RemovalNotRecorded {
                    name: name.to_owned(),
                    reason,
                });
            }
            entry
                .logs
                .push(LogStream::Event, "state removal recorded by the broker");
        }
        halt(&entry).await;
        self.discard(name, true);
        record_outcome(&self.ctx.measurements, name, "removed: with its state").await;
        Ok(())
    }

    /// Forget `name` and delete its run folder (and its state when `state`).
    fn discard(&self, name: &str, state: bool) {
        let removed = self.entries.lock().ok().and_then(|mut e| e.remove(name));
        if let Some(entry) = &removed
            && let Ok(mut p) = entry.proxy.lock()
            && let Some(p) = p.take()
        {
            p.abort();
        }
        if let Some(entry) = &removed {
            entry.lock_state();
        }
        if let Some(entry) = &removed
            && let Some(scope) = entry.scope.lock().ok().and_then(|mut s| s.take())
            && let Ok(enforcer) = &self.ctx.enforcer
        {
            enforcer.release(scope);
        }
        let _ = std::fs::remove_dir_all(self.ctx.run_dir.join(name));
        if state && let Some(dir) = self.workload_state(name) {
            // Renamed away in one step, then deleted: a crash midway never leaves a
            // partial state where the workload's name would find it.
            if let Err(e) = sealed_state::wipe(&dir) {
                warn!(workload = %name, error = %e, "delete the state folder");
            }
        }
    }

    /// One decision of the kernel's programs: into the workload's log (or the agent's,
    /// for the baseline), counted for the metrics, and the first of each kind per
    /// workload measured into the runtime log.
    pub async fn on_kernel_event(&self, ev: crate::enforce::event::Event) {
        let name = self
            .ctx
            .enforcer
            .as_ref()
            .ok()
            .and_then(|e| e.workload_of(ev.cgroup));
        let entry = name
            .as_ref()
            .and_then(|n| self.entries.lock().ok().and_then(|e| e.get(n).cloned()));
        let key = (ev.hook.name(), ev.verdict());
        let counts = match &entry {
            Some(entry) => {
                entry.logs.push(LogStream::Event, &ev.to_string());
                &entry.kernel_events
            }
            None => {
                warn!(cgroup = ev.cgroup, "{ev}");
                &self.baseline_events
            }
        };
        let first = counts
            .lock()
            .map(|mut c| {
                let n = c.entry(key).or_insert(0);
                *n += 1;
                *n == 1
            })
            .unwrap_or(false);
        if first {
            let who = name.unwrap_or_else(|| "(baseline)".to_owned());
            let subject = format!("{who} {} {}: {}", ev.verdict(), ev.hook.name(), ev.what());
            let kind = cvm_attest::EventKind::EnforcementEvent;
            if let Err(e) = measure_text(&self.ctx.measurements, kind, subject).await {
                warn!(error = %e, "could not measure an enforcement event");
            }
        }
    }

    /// The folder a workload's preopens are resolved beneath.
    fn files_dir(&self, name: &str) -> PathBuf {
        match self.workload_state(name) {
            Some(dir) => dir.join("files"),
            None => self.ctx.run_dir.join(name).join("files"),
        }
    }

    fn workload_state(&self, name: &str) -> Option<PathBuf> {
        self.ctx
            .state_dir
            .as_ref()
            .map(|s| s.join("workloads").join(name))
    }

    /// Prometheus text exposition of `owner`'s workloads (all for `None`) and the agent.
    pub fn metrics(&self, owner: Option<&[u8]>) -> String {
        let all = self.list(owner);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, v) in rows {
                out.push_str(&format!("{name}{labels} {v}\n"));
            }
        };
        let per = |f: &dyn Fn(&WorkloadStatus) -> Option<String>| {
            all.iter()
                .filter_map(|w| f(w).map(|v| (format!("{{workload=\"{}\"}}", w.name), v)))
                .collect::<Vec<_>>()
        };
        let mut states = BTreeMap::new();
        for w in &all {
            *states
                .entry(format!("{:?}", w.state).to_lowercase())
                .or_insert(0u64) += 1;
        }
        metric(
            "cvm_workloads",
            "gauge",
            "Workloads by state.",
            states
                .into_iter()
                .map(|(s, n)| (format!("{{state=\"{s}\"}}"), n.to_string()))
                .collect(),
        );
        metric(
            "cvm_workload_memory_bytes",
            "gauge",
            "Resident memory of the workload's runtime process.",
            per(&|w| w.rss_bytes.map(|b| b.to_string())),
        );
        metric(
            "cvm_workload_restarts_total",
            "counter",
            "Runtime restarts after a crash.",
            per(&|w| Some(w.restarts.to_string())),
        );
        metric(
            "cvm_workload_denials_total",
            "counter",
            "Uses of a capability the policy does not grant.",
            per(&|w| Some(w.denials.to_string())),
        );
        metric(
            "cvm_workload_failed_requests_total",
            "counter",
            "Requests stopped by a trap or a limit.",
            per(&|w| Some(w.failed_requests.to_string())),
        );
        let mut kernel = Vec::new();
        let mut add = |who: &str, counts: &Mutex<BTreeMap<(&'static str, &'static str), u64>>| {
            if let Ok(c) = counts.lock() {
                for ((hook, verdict), n) in c.iter() {
                    kernel.push((
                        format!("{{workload=\"{who}\",hook=\"{hook}\",verdict=\"{verdict}\"}}"),
                        n.to_string(),
                    ));
                }
            }
        };
        let entries: Vec<Arc<Entry>> = self
            .entries
            .lock()
            .map(|e| e.values().cloned().collect())
            .unwrap_or_default();
        for e in entries
            .iter()
            .filter(|e| owner.is_none_or(|o| e.owner() == o))
        {
            add(&e.name, &e.kernel_events);
        }
        if owner.is_none() {
            add("", &self.baseline_events);
        }
        metric(
            "cvm_enforcement_events_total",
            "counter",
            "Decisions of the kernel's BPF LSM programs (workload \"\": the baseline), by hook and verdict.",
            kernel,
        );
        metric(
            "cvm_agent_memory_bytes",
            "gauge",
            "Resident memory of the agent.",
            rss_bytes(std::process::id())
                .map(|b| vec![(String::new(), b.to_string())])
                .unwrap_or_default(),
        );
        metric(
            "cvm_guest_memory_available_bytes",
            "gauge",
            "Memory the guest kernel estimates is available (MemAvailable).",
            mem_available_bytes()
                .map(|b| vec![(String::new(), b.to_string())])
                .unwrap_or_default(),
        );
        out
    }
}

/// Stop the runtime and wait for its supervisor to record it.
async fn halt(entry: &Arc<Entry>) {
    entry.stop.send_replace(true);
    let handle = entry.supervisor.lock().ok().and_then(|mut s| s.take());
    if let Some(h) = handle {
        let _ = h.await;
    }
    if let Ok(mut p) = entry.proxy.lock()
        && let Some(p) = p.take()
    {
        p.abort();
    }
}

/// How long each step of a deploy or a migration took: a slow one says where.
#[derive(Debug)]
pub struct Laps {
    done: Vec<Step>,
    since: Instant,
}

impl Laps {
    /// The first step starts now.
    pub fn start() -> Self {
        Laps {
            done: Vec::new(),
            since: Instant::now(),
        }
    }

    /// The running step ended: record it as `name`.
    pub fn lap(&mut self, name: &str) {
        self.done.push(Step {
            step: name.to_owned(),
            millis: self.since.elapsed().as_millis() as u64,
        });
        self.since = Instant::now();
    }

    /// Steps recorded elsewhere (a blocking task's) follow; the running one restarts.
    pub fn extend(&mut self, other: Laps) {
        self.done.extend(other.done);
        self.since = Instant::now();
    }

    /// The steps so far, and the running one as `last`.
    pub fn with_last(&self, last: &str) -> Vec<Step> {
        let mut all = self.done.clone();
        all.push(Step {
            step: last.to_owned(),
            millis: self.since.elapsed().as_millis() as u64,
        });
        all
    }
}

impl std::fmt::Display for Laps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, s) in self.done.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{} {} ms", s.step, s.millis)?;
        }
        Ok(())
    }
}
