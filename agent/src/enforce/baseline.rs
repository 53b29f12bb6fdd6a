//! The appliance-wide baseline, installed once per boot by `cvm-agent baseline`, which
//! PID1 runs before the agent and before any workload exists (a failure powers the
//! appliance off): the BPF LSM programs are loaded, CO-RE-relocated against the
//! kernel's BTF, their maps filled with the baseline rules, and every map and link
//! pinned in bpffs, so enforcement outlives the loader and any agent restart.
//!
//! Baseline rules (for every process but PID1): no opening kernel memory or the BPF
//! pins; exec only of the binaries the measured initramfs holds (by inode); no
//! ptrace attach to PID1, the agent or a workload; no module loading; `bpf()` only
//! from the agent's cgroup; no mounts.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap};
use aya::programs::Lsm;
use aya::programs::links::FdLink;
use aya::{Btf, EbpfLoader};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use super::maps::{
    AGENT_CGROUP, BASELINE_REPORT, ConfigValue, ExecKey, FILE_DENY, FILE_KEY_DATA, PIN_DIR,
    PROGRAMS, WORKLOADS_CGROUP, file_key, kernel_dev, link_pin, map_pin,
};
use super::{BPF_OBJECT, cgroup_id};

/// Paths nobody but PID1 may open.
pub const FILE_DENY_PREFIXES: [&str; 5] = [
    "/proc/kcore",
    "/dev/mem",
    "/dev/kmem",
    "/dev/port",
    "/sys/fs/bpf/",
];

/// Folders whose executables form the exec allowlist (the initramfs's binaries).
const EXEC_ROOTS: [&str; 5] = ["/init", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/libexec"];

/// The baseline could not be installed; the appliance must not go on.
#[derive(Debug, thiserror::Error)]
#[error("{layer}: {reason}")]
pub struct BaselineError {
    /// The layer (bpf-lsm, btf, cgroup, exec-allowlist, pin).
    pub layer: &'static str,
    /// Why.
    pub reason: String,
}

fn fail(layer: &'static str) -> impl Fn(String) -> BaselineError {
    move |reason| BaselineError { layer, reason }
}

/// What was installed: its digest is measured by PID1.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct BaselineReport {
    /// SHA-256 of the canonical baseline document (hex).
    pub sha256: String,
    /// The hooks attached.
    pub hooks: Vec<String>,
    /// Binaries on the exec allowlist.
    pub exec_allowed: usize,
    /// The canonical document itself (what PID1 measures: the record's digest is
    /// `sha256`).
    pub document: String,
}

/// The canonical baseline document: the programs (by the object's hash), the hooks,
/// and every rule.
#[derive(Serialize)]
struct Document<'a> {
    version: u32,
    object_sha256: String,
    hooks: &'a [&'a str],
    file_deny: &'a [&'a str],
    exec_allow: &'a [String],
    ptrace: &'a str,
    bpf: &'a str,
    mount: &'a str,
    modules: &'a str,
}

/// Install the baseline (see the module documentation).
pub fn install() -> Result<BaselineReport, BaselineError> {
    super::preflight::require_lsm("bpf").map_err(fail("bpf-lsm"))?;
    super::preflight::require_btf().map_err(fail("btf"))?;
    if Path::new(PIN_DIR).exists() {
        return Err(fail("pin")(format!(
            "{PIN_DIR} exists: the baseline is installed once per boot"
        )));
    }
    // The loader joins the agent's cgroup first: once the `bpf` hook is attached, only
    // that cgroup (and PID1) may use bpf(), and pinning the last links needs it.
    for dir in [AGENT_CGROUP, WORKLOADS_CGROUP] {
        std::fs::create_dir_all(dir).map_err(|e| fail("cgroup")(format!("create {dir}: {e}")))?;
    }
    std::fs::write(format!("{AGENT_CGROUP}/cgroup.procs"), "0")
        .map_err(|e| fail("cgroup")(format!("join {AGENT_CGROUP}: {e}")))?;
    let agent_cg = cgroup_id(Path::new(AGENT_CGROUP)).map_err(fail("cgroup"))?;

    let btf = Btf::from_sys_fs().map_err(|e| fail("btf")(e.to_string()))?;
    let mut ebpf = EbpfLoader::new()
        .btf(Some(&btf))
        .load(BPF_OBJECT)
        .map_err(|e| fail("bpf-lsm")(format!("load the object: {}", crate::error_chain(&e))))?;
    let lsm = |e: &dyn std::error::Error| fail("bpf-lsm")(crate::error_chain(e));

    // Rules before programs: a hook must never run against an empty map.
    {
        let mut config: Array<_, ConfigValue> = Array::try_from(
            ebpf.map_mut("config")
                .ok_or_else(|| fail("bpf-lsm")("no map config".into()))?,
        )
        .map_err(|e| lsm(&e))?;
        config
            .set(
                0,
                ConfigValue {
                    agent_cgroup: agent_cg,
                },
                0,
            )
            .map_err(|e| lsm(&e))?;
    }
    {
        let mut files: LpmTrie<_, [u8; FILE_KEY_DATA], u32> = LpmTrie::try_from(
            ebpf.map_mut("file_rules")
                .ok_or_else(|| fail("bpf-lsm")("no map file_rules".into()))?,
        )
        .map_err(|e| lsm(&e))?;
        for p in FILE_DENY_PREFIXES {
            let (bits, data) =
                file_key(0, p).ok_or_else(|| fail("bpf-lsm")(format!("rule {p} too long")))?;
            files
                .insert(&Key::new(bits, data), FILE_DENY, 0)
                .map_err(|e| lsm(&e))?;
        }
    }
    let executables = executables().map_err(fail("exec-allowlist"))?;
    {
        let mut exec: HashMap<_, ExecKey, u8> = HashMap::try_from(
            ebpf.map_mut("exec_allow")
                .ok_or_else(|| fail("bpf-lsm")("no map exec_allow".into()))?,
        )
        .map_err(|e| lsm(&e))?;
        for (_, key) in &executables {
            exec.insert(key, 1, 0).map_err(|e| lsm(&e))?;
        }
    }
    std::fs::create_dir_all(PIN_DIR).map_err(|e| fail("pin")(format!("create {PIN_DIR}: {e}")))?;
    for (name, map) in ebpf.maps() {
        map.pin(map_pin(name))
            .map_err(|e| fail("pin")(format!("map {name}: {}", crate::error_chain(&e))))?;
    }
    for name in PROGRAMS {
        let prog: &mut Lsm = ebpf
            .program_mut(name)
            .ok_or_else(|| fail("bpf-lsm")(format!("no program {name}")))?
            .try_into()
            .map_err(|e| lsm(&e))?;
        prog.load(name, &btf)
            .map_err(|e| fail("bpf-lsm")(format!("load {name}: {}", crate::error_chain(&e))))?;
        let id = prog
            .attach()
            .map_err(|e| fail("bpf-lsm")(format!("attach {name}: {}", crate::error_chain(&e))))?;
        let link = prog.take_link(id).map_err(|e| lsm(&e))?;
        FdLink::from(link)
            .pin(link_pin(name))
            .map_err(|e| fail("pin")(format!("link {name}: {}", crate::error_chain(&e))))?;
    }

    let exec_allow: Vec<String> = executables.into_iter().map(|(p, _)| p).collect();
    let doc = Document {
        version: 1,
        object_sha256: hex::encode(Sha256::digest(BPF_OBJECT)),
        hooks: &PROGRAMS,
        file_deny: &FILE_DENY_PREFIXES,
        exec_allow: &exec_allow,
        ptrace: "no attach to PID1, the agent or a workload",
        bpf: "PID1 and the agent's cgroup only",
        mount: "PID1 only",
        modules: "deny",
    };
    let doc = serde_json::to_string(&doc).map_err(|e| fail("pin")(e.to_string()))?;
    let report = BaselineReport {
        sha256: hex::encode(Sha256::digest(doc.as_bytes())),
        hooks: PROGRAMS.iter().map(|s| (*s).to_owned()).collect(),
        exec_allowed: exec_allow.len(),
        document: doc,
    };
    let json = serde_json::to_vec(&report).map_err(|e| fail("pin")(e.to_string()))?;
    std::fs::write(BASELINE_REPORT, json)
        .map_err(|e| fail("pin")(format!("write {BASELINE_REPORT}: {e}")))?;
    Ok(report)
}

/// Every executable regular file beneath [`EXEC_ROOTS`], sorted by path.
fn executables() -> Result<Vec<(String, ExecKey)>, String> {
    let mut out = Vec::new();
    let mut stack: Vec<std::path::PathBuf> = EXEC_ROOTS.iter().map(Into::into).collect();
    while let Some(p) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", p.display())),
        };
        if meta.is_dir() {
            let entries = std::fs::read_dir(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            for e in entries {
                stack.push(e.map_err(|e| format!("{}: {e}", p.display()))?.path());
            }
        } else if meta.is_file() && meta.mode() & 0o111 != 0 {
            out.push((
                p.display().to_string(),
                ExecKey {
                    cgroup: 0,
                    dev: kernel_dev(meta.dev()),
                    pad: 0,
                    ino: meta.ino(),
                },
            ));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if out.is_empty() {
        return Err("no executables found".into());
    }
    Ok(out)
}
