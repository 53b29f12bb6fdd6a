//! The process-level confinement of one workload, derived from its policy: every rule
//! the kernel enforces on the workload's runtime process, on top of what wasmtime
//! enforces inside it. Nothing here is stated by the owner a second time; each
//! capability of the policy (a preopen, a TCP address) becomes the matching rule of
//! every layer:
//!
//! | policy | BPF LSM (per cgroup) | Landlock (self-applied) |
//! |---|---|---|
//! | `preopens[i]` `ro`/`rw` | `file_open` allowed beneath its folder, read or read+write | `path_beneath` read or read+write (no execute) |
//! | `network.connect` | `socket_connect` to exactly that address and port | `ConnectTcp` to that port |
//! | `network.bind` | `socket_bind` to that address and port | `BindTcp` on that port |
//! | (nothing) | every other open, exec, connect, bind denied; no `ptrace`, no signals outside its cgroup, no module loading, no `bpf()`, no mounts | every other file access denied; signals and abstract Unix sockets scoped to the workload |
//!
//! The agent extends the digest of this document (with the appliance baseline's) into
//! the runtime log before the workload's key is fetched, so a verifier or the broker
//! can require a given confinement. `cvm seal --explain` shows the same document.

use std::net::SocketAddr;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::policy::{Access, Mode, WorkloadPolicy};

/// Lowest Landlock ABI the appliance confines with: 6 has TCP ports (4), device ioctl
/// (5) and signal/abstract-socket scoping (6).
pub const MIN_LANDLOCK_ABI: u8 = 6;

/// Where a workload's files live on an appliance with a state volume: the agent's
/// state folder `workloads/NAME/files`.
pub const STATE_WORKLOADS: &str = "/var/lib/cvm/workloads";

/// Version of the confinement document (part of its digest).
pub const VERSION: u32 = 1;

/// One file rule of the BPF `file_open` program: a path prefix and what it allows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FileRule {
    /// An exact path, or a folder with a trailing `/` (everything beneath it).
    pub path: String,
    /// Opening for reading is allowed.
    pub read: bool,
    /// Opening for writing is allowed.
    pub write: bool,
}

/// One folder of the Landlock ruleset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LandlockPath {
    /// The folder (everything beneath it).
    pub path: String,
    /// Read only, or read and write (never execute).
    pub access: Access,
}

/// The Landlock domain the runtime process puts itself in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Landlock {
    /// The ABI the kernel must offer (`HardRequirement`).
    pub abi: u8,
    /// Applied (enforce mode); Landlock has no permissive mode, so audit mode skips it.
    pub applied: bool,
    /// Folders and their access; every other file access is denied.
    pub paths: Vec<LandlockPath>,
    /// TCP ports it may connect to.
    pub connect_ports: Vec<u16>,
    /// TCP ports it may bind.
    pub bind_ports: Vec<u16>,
    /// IPC it is scoped from: signals to and abstract Unix sockets of processes
    /// outside its domain.
    pub scopes: Vec<&'static str>,
}

/// Rules that hold for every workload, whatever its policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fixed {
    /// `bprm_check_security`: inodes it may execute (a Wasm runtime execs nothing).
    pub exec: &'static str,
    /// `ptrace_access_check`.
    pub ptrace: &'static str,
    /// `task_kill`.
    pub signals: &'static str,
    /// `kernel_module_request`, `kernel_read_file`, `kernel_load_data`.
    pub modules: &'static str,
    /// `bpf`.
    pub bpf: &'static str,
    /// `sb_mount`.
    pub mount: &'static str,
}

const FIXED: Fixed = Fixed {
    exec: "deny every binary",
    ptrace: "deny (any process, any mode)",
    signals: "only to processes of its own cgroup",
    modules: "deny",
    bpf: "deny",
    mount: "deny",
};

/// The confinement of one workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Confinement {
    /// [`VERSION`].
    pub version: u32,
    /// The workload.
    pub name: String,
    /// Enforce (deny and report) or audit (allow and report).
    pub mode: Mode,
    /// Its own cgroup (v2), below the agent's workloads group.
    pub cgroup: String,
    /// `file_open` rules; anything that matches none is denied.
    pub files: Vec<FileRule>,
    /// `socket_connect` allowlist (IPv4 by address and port; IPv6 by port, the address
    /// being checked by the runtime).
    pub connect: Vec<SocketAddr>,
    /// `socket_bind` allowlist.
    pub bind: Vec<SocketAddr>,
    /// Rules independent of the policy.
    pub fixed: Fixed,
    /// The Landlock layer.
    pub landlock: Landlock,
}

/// The cgroup (v2) folder of workload `name`.
pub fn cgroup_path(name: &str) -> String {
    format!("/sys/fs/cgroup/cvm-workloads/{name}")
}

impl Confinement {
    /// Derive the confinement of `policy` for workload `name`, whose files (the folder
    /// its preopens are resolved beneath) are at `files`.
    pub fn derive(name: &str, policy: &WorkloadPolicy, files: &Path) -> Self {
        let root = files.display().to_string();
        let root = root.trim_end_matches('/');
        let mut rules = Vec::new();
        let mut paths = Vec::new();
        for p in &policy.preopens {
            let dir = format!("{root}/{}", p.dir);
            let write = p.access == Access::Rw;
            // The folder itself (opened as the preopen) and everything beneath it.
            rules.push(FileRule {
                path: dir.clone(),
                read: true,
                write,
            });
            rules.push(FileRule {
                path: format!("{dir}/"),
                read: true,
                write,
            });
            paths.push(LandlockPath {
                path: dir,
                access: p.access,
            });
        }
        let ports = |addrs: &[SocketAddr]| {
            let mut v: Vec<u16> = addrs.iter().map(SocketAddr::port).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        Self {
            version: VERSION,
            name: name.to_owned(),
            mode: policy.mode,
            cgroup: cgroup_path(name),
            files: rules,
            connect: policy.network.connect.clone(),
            bind: policy.network.bind.clone(),
            fixed: FIXED,
            landlock: Landlock {
                abi: policy.require.landlock_abi.max(MIN_LANDLOCK_ABI),
                applied: policy.mode == Mode::Enforce,
                paths,
                connect_ports: ports(&policy.network.connect),
                bind_ports: ports(&policy.network.bind),
                scopes: vec!["signal", "abstract-unix-socket"],
            },
        }
    }

    /// The canonical document the digest is taken over: this confinement with the
    /// appliance baseline's digest.
    pub fn document(&self, baseline_sha256: &str) -> Vec<u8> {
        #[derive(Serialize)]
        struct Effective<'a> {
            baseline_sha256: &'a str,
            workload: &'a Confinement,
        }
        // Serialising plain structs, vectors and strings cannot fail.
        serde_json::to_vec(&Effective {
            baseline_sha256,
            workload: self,
        })
        .unwrap_or_default()
    }

    /// SHA-256 of [`Confinement::document`].
    pub fn digest(&self, baseline_sha256: &str) -> [u8; 32] {
        Sha256::digest(self.document(baseline_sha256)).into()
    }

    /// What each rule compiles to, for the owner (`cvm seal --explain`).
    pub fn explain(&self) -> String {
        let mut o = String::new();
        let mode = match self.mode {
            Mode::Enforce => {
                "enforce: every layer must be in place or the workload does not start; violations are denied and reported"
            }
            Mode::Audit => "audit: violations are allowed and reported; Landlock is not applied",
        };
        o.push_str(&format!("confinement of the runtime process ({mode})\n"));
        o.push_str(&format!("  process: its own cgroup {}\n", self.cgroup));
        o.push_str("  BPF LSM (scoped to that cgroup):\n");
        if self.files.is_empty() {
            o.push_str("    file_open: deny every file\n");
        }
        for f in &self.files {
            let how = if f.write { "read+write" } else { "read" };
            o.push_str(&format!("    file_open: allow {how} {}\n", f.path));
        }
        if !self.files.is_empty() {
            o.push_str("    file_open: deny everything else\n");
        }
        for (hook, list) in [
            ("socket_connect", &self.connect),
            ("socket_bind", &self.bind),
        ] {
            for a in list.iter() {
                o.push_str(&format!("    {hook}: allow {a}\n"));
            }
            o.push_str(&format!("    {hook}: deny everything else (TCP/UDP)\n"));
        }
        let f = &self.fixed;
        for (hook, rule) in [
            ("bprm_check_security", f.exec),
            ("ptrace_access_check", f.ptrace),
            ("task_kill", f.signals),
            (
                "kernel_module_request/kernel_read_file/kernel_load_data",
                f.modules,
            ),
            ("bpf", f.bpf),
            ("sb_mount", f.mount),
        ] {
            o.push_str(&format!("    {hook}: {rule}\n"));
        }
        let l = &self.landlock;
        let applied = if l.applied {
            "applied"
        } else {
            "not applied (audit)"
        };
        o.push_str(&format!(
            "  Landlock (ABI >= {}, {applied}, before any workload code runs):\n",
            l.abi
        ));
        for p in &l.paths {
            let how = match p.access {
                Access::Ro => "read",
                Access::Rw => "read+write (no execute)",
            };
            o.push_str(&format!("    {how} beneath {}\n", p.path));
        }
        o.push_str("    every other file: denied\n");
        o.push_str(&format!(
            "    TCP connect ports: {:?}; TCP bind ports: {:?}; scoped: {}\n",
            l.connect_ports,
            l.bind_ports,
            l.scopes.join(", ")
        ));
        o.push_str(
            "  MAC profile: this kernel has no AppArmor; the profile above is enforced by the BPF programs\n",
        );
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> WorkloadPolicy {
        WorkloadPolicy::from_yaml(yaml).unwrap()
    }

    #[test]
    fn each_capability_becomes_a_rule_of_every_layer() {
        let p = policy(
            "preopens: [{dir: data, guest: /data, access: rw}, {dir: cfg, guest: /cfg, access: ro}]\nnetwork: {connect: [\"10.0.2.2:8443\"], bind: [\"0.0.0.0:9000\"]}",
        );
        let c = Confinement::derive("app", &p, Path::new("/var/lib/cvm/workloads/app/files/"));
        let files: Vec<_> = c
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.read, f.write))
            .collect();
        assert_eq!(
            files,
            [
                ("/var/lib/cvm/workloads/app/files/data", true, true),
                ("/var/lib/cvm/workloads/app/files/data/", true, true),
                ("/var/lib/cvm/workloads/app/files/cfg", true, false),
                ("/var/lib/cvm/workloads/app/files/cfg/", true, false),
            ]
        );
        assert_eq!(c.landlock.connect_ports, [8443]);
        assert_eq!(c.landlock.bind_ports, [9000]);
        assert_eq!(c.landlock.abi, MIN_LANDLOCK_ABI);
        assert!(c.landlock.applied);
        assert_eq!(c.cgroup, "/sys/fs/cgroup/cvm-workloads/app");
        let text = c.explain();
        assert!(text.contains("file_open: allow read /var/lib/cvm/workloads/app/files/cfg/"));
        assert!(text.contains("socket_connect: allow 10.0.2.2:8443"));
    }

    #[test]
    fn the_digest_covers_the_policy_the_mode_and_the_baseline() {
        let files = Path::new("/f");
        let base = Confinement::derive("a", &policy("mode: enforce"), files);
        let d = base.digest("b1");
        assert_eq!(d, base.digest("b1"));
        assert_ne!(d, base.digest("b2"));
        let audit = Confinement::derive("a", &policy("mode: audit"), files);
        assert_ne!(d, audit.digest("b1"));
        assert!(!audit.landlock.applied);
        let port = Confinement::derive("a", &policy("network: {connect: [\"1.2.3.4:5\"]}"), files);
        assert_ne!(d, port.digest("b1"));
        let abi = Confinement::derive("a", &policy("require: {landlock_abi: 9}"), files);
        assert_eq!(abi.landlock.abi, 9);
        assert_ne!(d, abi.digest("b1"));
    }
}
