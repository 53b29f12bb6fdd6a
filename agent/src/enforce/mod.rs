//! Kernel enforcement of the workloads' confinement (the agent's side of it).
//!
//! [`baseline`] installs the BPF LSM programs once per boot (`cvm-agent baseline`,
//! run by PID1); the agent then opens their pinned maps ([`Enforcer::open`]), and for
//! each workload creates its cgroup and writes its rules, keyed by the cgroup's id
//! ([`Enforcer::establish`]), before the runtime starts; the runtime joins the cgroup
//! and applies Landlock itself (`cvm_runtime::confine`). Every decision the programs
//! report arrives on a ring buffer ([`Enforcer::events`]).

pub mod baseline;
pub mod event;
pub mod maps;
pub mod preflight;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::sync::Mutex;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{HashMap, Map, MapData, RingBuf};
use cvm_runtime::confinement::Confinement;
use cvm_runtime::policy::Mode;

use maps::{
    AGENT_CGROUP, BASELINE_REPORT, FILE_KEY_DATA, FILE_READ, FILE_WRITE, MODE_AUDIT, MODE_ENFORCE,
    NetKey, PROGRAMS, WorkloadValue, file_key, link_pin, map_pin, net_key,
};

/// The compiled BPF LSM programs (`bpf/cvm.bpf.c`, built by `build.rs`).
pub static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cvm.bpf.o"));

/// The id of the cgroup (v2) at `dir`: its kernfs inode number.
pub fn cgroup_id(dir: &Path) -> Result<u64, String> {
    std::fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// Kill every process in the cgroup at `dir` (`cgroup.kill`) and wait, briefly, until
/// it is empty.
pub fn kill_cgroup(dir: &str) {
    let dir = Path::new(dir);
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        return;
    }
    for _ in 0..50 {
        let empty = std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|p| p.trim().is_empty())
            .unwrap_or(true);
        if empty {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A confinement layer that could not be established.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{layer}: {reason}")]
pub struct LayerError {
    /// `bpf-lsm`, `btf`, `landlock`, `cgroup`.
    pub layer: &'static str,
    /// Why.
    pub reason: String,
}

fn layer(layer: &'static str) -> impl Fn(String) -> LayerError {
    move |reason| LayerError { layer, reason }
}

/// The agent's handle on the pinned maps.
pub struct Enforcer {
    workloads: Mutex<HashMap<MapData, u64, WorkloadValue>>,
    files: Mutex<LpmTrie<MapData, [u8; FILE_KEY_DATA], u32>>,
    net: Mutex<HashMap<MapData, NetKey, u8>>,
    names: Mutex<BTreeMap<u64, String>>,
    /// The baseline PID1 installed and measured.
    pub baseline: baseline::BaselineReport,
}

impl std::fmt::Debug for Enforcer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enforcer")
            .field("baseline", &self.baseline.sha256)
            .finish_non_exhaustive()
    }
}

/// One workload's established scope: its cgroup and the map entries written for it.
#[derive(Debug)]
pub struct Scope {
    /// The workload.
    pub name: String,
    /// Its cgroup folder.
    pub cgroup: String,
    /// Its cgroup id.
    pub cgroup_id: u64,
    file_keys: Vec<(u32, [u8; FILE_KEY_DATA])>,
    net_keys: Vec<NetKey>,
}

fn open_map(name: &str) -> Result<Map, LayerError> {
    let data = MapData::from_pin(map_pin(name)).map_err(|e| {
        layer("bpf-lsm")(format!(
            "open pinned map {name}: {}",
            crate::error_chain(&e)
        ))
    })?;
    Map::from_map_data(data).map_err(|e| layer("bpf-lsm")(format!("map {name}: {e}")))
}

impl Enforcer {
    /// Join the agent's cgroup and open the baseline's pinned maps; fails when the
    /// baseline is not installed (then no workload can be confined, and enforce-mode
    /// deploys are refused naming this reason).
    pub fn open() -> Result<Self, LayerError> {
        preflight::require_lsm("bpf").map_err(layer("bpf-lsm"))?;
        std::fs::write(format!("{AGENT_CGROUP}/cgroup.procs"), "0")
            .map_err(|e| layer("cgroup")(format!("join {AGENT_CGROUP}: {e}")))?;
        for p in PROGRAMS {
            if !Path::new(&link_pin(p)).exists() {
                return Err(layer("bpf-lsm")(format!(
                    "the baseline's link for {p} is not pinned (was the baseline installed?)"
                )));
            }
        }
        let report = std::fs::read(BASELINE_REPORT)
            .map_err(|e| layer("bpf-lsm")(format!("read {BASELINE_REPORT}: {e}")))?;
        let baseline: baseline::BaselineReport = serde_json::from_slice(&report)
            .map_err(|e| layer("bpf-lsm")(format!("{BASELINE_REPORT}: {e}")))?;
        let e = |e: aya::maps::MapError| layer("bpf-lsm")(e.to_string());
        let enforcer = Self {
            workloads: Mutex::new(HashMap::try_from(open_map("workloads")?).map_err(e)?),
            files: Mutex::new(LpmTrie::try_from(open_map("file_rules")?).map_err(e)?),
            net: Mutex::new(HashMap::try_from(open_map("net_rules")?).map_err(e)?),
            names: Mutex::new(BTreeMap::new()),
            baseline,
        };
        enforcer.reap_orphans();
        Ok(enforcer)
    }

    /// After an agent restart: the previous agent's workloads run on without anyone
    /// supervising them (their status sockets are gone). Kill them, remove their
    /// cgroups and their rules; their owners redeploy. The programs and the baseline
    /// stay as they are: they never depended on the agent process.
    fn reap_orphans(&self) {
        let Ok(dirs) = std::fs::read_dir(maps::WORKLOADS_CGROUP) else {
            return;
        };
        for d in dirs.flatten() {
            let path = d.path();
            if !path.is_dir() {
                continue;
            }
            let Ok(id) = cgroup_id(&path) else { continue };
            kill_cgroup(&path.display().to_string());
            let scope = Scope {
                name: d.file_name().to_string_lossy().into_owned(),
                cgroup: path.display().to_string(),
                cgroup_id: id,
                file_keys: self.file_keys_of(id),
                net_keys: self.net_keys_of(id),
            };
            tracing::warn!(workload = %scope.name, "a workload of the previous agent was stopped");
            self.release(scope);
        }
    }

    fn file_keys_of(&self, id: u64) -> Vec<(u32, [u8; FILE_KEY_DATA])> {
        let Ok(files) = self.files.lock() else {
            return Vec::new();
        };
        files
            .keys()
            .flatten()
            .filter(|k| {
                let d = k.data();
                let lo = u32::from_ne_bytes([d[0], d[1], d[2], d[3]]);
                let hi = u32::from_ne_bytes([d[4], d[5], d[6], d[7]]);
                (u64::from(hi) << 32 | u64::from(lo)) == id
            })
            .map(|k| (k.prefix_len(), k.data()))
            .collect()
    }

    fn net_keys_of(&self, id: u64) -> Vec<NetKey> {
        let Ok(net) = self.net.lock() else {
            return Vec::new();
        };
        net.keys().flatten().filter(|k| k.cgroup == id).collect()
    }

    /// The ring buffer the programs report on (one reader: the agent).
    pub fn events(&self) -> Result<RingBuf<MapData>, LayerError> {
        RingBuf::try_from(open_map("events")?).map_err(|e| layer("bpf-lsm")(e.to_string()))
    }

    /// The workload whose cgroup has this id.
    pub fn workload_of(&self, cgroup: u64) -> Option<String> {
        self.names.lock().ok()?.get(&cgroup).cloned()
    }

    /// Create the workload's cgroup and write its rules; the runtime then joins the
    /// cgroup itself. In enforce mode every layer's kernel support is checked first.
    pub fn establish(&self, c: &Confinement) -> Result<Scope, LayerError> {
        if c.landlock.applied {
            preflight::require_landlock(c.landlock.abi).map_err(layer("landlock"))?;
        }
        let dir = Path::new(&c.cgroup);
        match std::fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(layer("cgroup")(format!("create {}: {e}", c.cgroup))),
        }
        let id = cgroup_id(dir).map_err(layer("cgroup"))?;
        let mut scope = Scope {
            name: c.name.clone(),
            cgroup: c.cgroup.clone(),
            cgroup_id: id,
            file_keys: Vec::new(),
            net_keys: Vec::new(),
        };
        if let Err(e) = self.write_rules(c, &mut scope) {
            self.release(scope);
            return Err(e);
        }
        Ok(scope)
    }

    fn write_rules(&self, c: &Confinement, scope: &mut Scope) -> Result<(), LayerError> {
        let bpf = layer("bpf-lsm");
        let poisoned = || bpf("map lock poisoned".into());
        let id = scope.cgroup_id;
        {
            let mut files = self.files.lock().map_err(|_| poisoned())?;
            for f in &c.files {
                let (bits, data) = file_key(id, &f.path).ok_or_else(|| {
                    bpf(format!(
                        "file rule {} is longer than {} bytes",
                        f.path,
                        maps::MAX_RULE_PATH
                    ))
                })?;
                let v = if f.read { FILE_READ } else { 0 } | if f.write { FILE_WRITE } else { 0 };
                files
                    .insert(&Key::new(bits, data), v, 0)
                    .map_err(|e| bpf(format!("file rule {}: {e}", f.path)))?;
                scope.file_keys.push((bits, data));
            }
        }
        {
            let mut net = self.net.lock().map_err(|_| poisoned())?;
            for (op, list) in [(3u16, &c.connect), (4u16, &c.bind)] {
                for a in list {
                    let k = net_key(id, op, a);
                    net.insert(k, 1, 0)
                        .map_err(|e| bpf(format!("network rule {a}: {e}")))?;
                    scope.net_keys.push(k);
                }
            }
        }
        // The workload entry last: until it exists the cgroup is held to the baseline
        // only, and nothing runs in it yet.
        let mode = match c.mode {
            Mode::Enforce => MODE_ENFORCE,
            Mode::Audit => MODE_AUDIT,
        };
        self.workloads
            .lock()
            .map_err(|_| poisoned())?
            .insert(id, WorkloadValue { mode, id: 0 }, 0)
            .map_err(|e| bpf(format!("workload entry: {e}")))?;
        if let Ok(mut n) = self.names.lock() {
            n.insert(id, c.name.clone());
        }
        Ok(())
    }

    /// Remove the workload's rules and its cgroup, killing what is left in it.
    pub fn release(&self, scope: Scope) {
        kill_cgroup(&scope.cgroup);
        if let Ok(mut w) = self.workloads.lock() {
            let _ = w.remove(&scope.cgroup_id);
        }
        if let Ok(mut f) = self.files.lock() {
            for (bits, data) in &scope.file_keys {
                let _ = f.remove(&Key::new(*bits, *data));
            }
        }
        if let Ok(mut n) = self.net.lock() {
            for k in &scope.net_keys {
                let _ = n.remove(k);
            }
        }
        if let Ok(mut n) = self.names.lock() {
            n.remove(&scope.cgroup_id);
        }
        if let Err(e) = std::fs::remove_dir(&scope.cgroup) {
            tracing::warn!(cgroup = %scope.cgroup, error = %e, "cgroup not removed");
        }
    }
}

/// Read the programs' events until the ring buffer fails, handing each to the
/// workloads (which log, count and measure them).
pub async fn read_events(
    ring: RingBuf<MapData>,
    workloads: std::sync::Arc<crate::workloads::Workloads>,
) -> std::io::Result<()> {
    // SAFETY: the RingBuf owns its map descriptor, which stays open and unchanged
    // until the RingBuf drops, and the AsyncFd owns the RingBuf for its whole life.
    #[allow(unsafe_code)]
    let mut fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
    }
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    loop {
        let mut batch = Vec::new();
        {
            let mut guard = fd.readable_mut().await?;
            let ring = guard.get_inner_mut();
            while let Some(item) = ring.next() {
                match event::Event::decode(&item) {
                    Some(ev) => batch.push(ev),
                    None => tracing::warn!(bytes = item.len(), "unreadable enforcement event"),
                }
            }
            guard.clear_ready();
        }
        for ev in batch {
            workloads.on_kernel_event(ev).await;
        }
    }
}
