//! The appliance-wide enforcement baseline every process but PID1 is held to, as a
//! canonical document: produced by `cvm-agent baseline` when it loads the BPF LSM
//! programs, measured by PID1 (`enforcement-baseline`), predicted by `cvm measure` from
//! the image (its executables are the exec allowlist), so it is a pure function of the
//! image. The BPF object enforcing it is part of the agent binary, measured just
//! before it.

use serde::Serialize;

/// The hooks, in attach order (`bpf` last, so the loader can finish).
pub const HOOKS: [&str; 11] = [
    "file_open",
    "bprm_check_security",
    "socket_connect",
    "socket_bind",
    "ptrace_access_check",
    "task_kill",
    "kernel_module_request",
    "kernel_read_file",
    "kernel_load_data",
    "sb_mount",
    "bpf",
];

/// Paths nobody but PID1 may open.
pub const FILE_DENY: [&str; 5] = [
    "/proc/kcore",
    "/dev/mem",
    "/dev/kmem",
    "/dev/port",
    "/sys/fs/bpf/",
];

/// Every regular file beneath these is on the exec allowlist (by inode): the
/// binaries of the measured initramfs.
pub const EXEC_ROOTS: [&str; 3] = ["/init", "/usr/bin", "/usr/sbin"];

/// Whether `path` (absolute) lies beneath one of [`EXEC_ROOTS`].
pub fn is_exec_path(path: &str) -> bool {
    EXEC_ROOTS.iter().any(|r| {
        path == *r
            || path
                .strip_prefix(r)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

#[derive(Serialize)]
struct Document<'a> {
    version: u32,
    hooks: &'a [&'a str],
    file_deny: &'a [&'a str],
    exec_allow: &'a [String],
    ptrace: &'a str,
    bpf: &'a str,
    mount: &'a str,
    modules: &'a str,
}

/// The canonical document for this exec allowlist (sorted here).
pub fn document(exec_allow: &[String]) -> String {
    let mut exec_allow = exec_allow.to_vec();
    exec_allow.sort();
    // Plain strings and slices: serialising cannot fail.
    serde_json::to_string(&Document {
        version: 1,
        hooks: &HOOKS,
        file_deny: &FILE_DENY,
        exec_allow: &exec_allow,
        ptrace: "no attach to PID1, the agent or a workload",
        bpf: "PID1 and the agent's cgroup only",
        mount: "PID1 only",
        modules: "deny",
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_allowlist_is_the_binaries_beneath_its_roots() {
        assert!(is_exec_path("/init"));
        assert!(is_exec_path("/usr/bin/cvm-agent"));
        assert!(!is_exec_path("/usr/binx/x"));
        assert!(!is_exec_path("/lib/x86_64-linux-gnu/libc.so.6"));
        let a = document(&["/usr/bin/b".into(), "/init".into()]);
        let b = document(&["/init".into(), "/usr/bin/b".into()]);
        assert_eq!(a, b);
        assert!(a.contains(r#""exec_allow":["/init","/usr/bin/b"]"#));
    }
}
