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
use sha2::{Digest as _, Sha256};

use super::maps::{
    AGENT_CGROUP, BASELINE_REPORT, ConfigValue, ExecKey, FILE_DENY, FILE_KEY_DATA, PIN_DIR,
    PROGRAMS, WORKLOADS_CGROUP, file_key, kernel_dev, link_pin, map_pin,
};
use super::{BPF_OBJECT, cgroup_id};
use cvm_attest::baseline::{EXEC_ROOTS, FILE_DENY as DENIED_PATHS};

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
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
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
        for p in DENIED_PATHS {
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
    let doc = cvm_attest::baseline::document(&exec_allow);
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

/// Every regular file beneath [`EXEC_ROOTS`], sorted by path (what `cvm measure`
/// predicts from the initramfs).
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
        } else if meta.is_file() {
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
