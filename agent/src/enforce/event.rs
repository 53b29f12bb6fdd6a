//! One decision of the BPF LSM programs, as read from the `events` ring buffer.

use std::fmt;

/// The hooks, numbered as in `bpf/cvm.bpf.c`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// `file_open`.
    FileOpen,
    /// `bprm_check_security`.
    Exec,
    /// `socket_connect`.
    Connect,
    /// `socket_bind`.
    Bind,
    /// `ptrace_access_check`.
    Ptrace,
    /// `task_kill`.
    Kill,
    /// `kernel_module_request`.
    ModuleRequest,
    /// `kernel_read_file`.
    ReadFile,
    /// `bpf`.
    Bpf,
    /// `sb_mount`.
    Mount,
    /// `kernel_load_data`.
    LoadData,
}

impl Hook {
    fn from_raw(n: u32) -> Option<Self> {
        Some(match n {
            1 => Hook::FileOpen,
            2 => Hook::Exec,
            3 => Hook::Connect,
            4 => Hook::Bind,
            5 => Hook::Ptrace,
            6 => Hook::Kill,
            7 => Hook::ModuleRequest,
            8 => Hook::ReadFile,
            9 => Hook::Bpf,
            10 => Hook::Mount,
            11 => Hook::LoadData,
            _ => return None,
        })
    }

    /// The LSM hook's name.
    pub fn name(self) -> &'static str {
        match self {
            Hook::FileOpen => "file_open",
            Hook::Exec => "bprm_check_security",
            Hook::Connect => "socket_connect",
            Hook::Bind => "socket_bind",
            Hook::Ptrace => "ptrace_access_check",
            Hook::Kill => "task_kill",
            Hook::ModuleRequest => "kernel_module_request",
            Hook::ReadFile => "kernel_read_file",
            Hook::Bpf => "bpf",
            Hook::Mount => "sb_mount",
            Hook::LoadData => "kernel_load_data",
        }
    }
}

/// One decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The acting process's cgroup id.
    pub cgroup: u64,
    /// The acting process (thread group id).
    pub pid: u32,
    /// The hook.
    pub hook: Hook,
    /// Denied (the action failed), or allowed and reported (audit mode).
    pub denied: bool,
    /// The actor's workload's mode; `None` for the baseline.
    pub audit_mode: Option<bool>,
    /// Hook-specific values.
    pub arg0: u64,
    /// Hook-specific values.
    pub arg1: u64,
    /// A path, when the hook has one.
    pub detail: String,
}

/// Size of `struct event`.
pub const EVENT_SIZE: usize = 8 + 4 + 4 + 4 + 4 + 8 + 8 + DETAIL_BYTES;
const DETAIL_BYTES: usize = 160;

impl Event {
    /// Decode one ring-buffer record; `None` for a record of another shape.
    pub fn decode(b: &[u8]) -> Option<Self> {
        if b.len() < EVENT_SIZE {
            return None;
        }
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let detail = &b[40..40 + DETAIL_BYTES];
        let end = detail.iter().position(|&c| c == 0).unwrap_or(DETAIL_BYTES);
        Some(Self {
            cgroup: u64_at(0),
            pid: u32_at(8),
            hook: Hook::from_raw(u32_at(12))?,
            denied: u32_at(16) != 0,
            audit_mode: match u32_at(20) {
                0 => None,
                m => Some(m == super::maps::MODE_AUDIT),
            },
            arg0: u64_at(24),
            arg1: u64_at(32),
            detail: String::from_utf8_lossy(&detail[..end]).into_owned(),
        })
    }

    /// `denied` or `audited`.
    pub fn verdict(&self) -> &'static str {
        if self.denied { "denied" } else { "audited" }
    }

    /// What was attempted, in words.
    pub fn what(&self) -> String {
        match self.hook {
            Hook::FileOpen => {
                let how = match self.arg0 {
                    1 => "read",
                    2 => "write",
                    3 => "read+write",
                    _ => "open",
                };
                format!("open {} for {how}", self.detail)
            }
            Hook::Exec => format!("exec inode {} on device {:#x}", self.arg0, self.arg1),
            Hook::Connect | Hook::Bind => {
                let family = self.arg1 >> 32;
                let port = self.arg1 & 0xffff;
                let verb = if self.hook == Hook::Connect {
                    "connect to"
                } else {
                    "bind"
                };
                if family == 2 {
                    let ip = std::net::Ipv4Addr::from((self.arg0 as u32).to_ne_bytes());
                    format!("{verb} {ip}:{port}")
                } else {
                    format!("{verb} [IPv6]:{port}")
                }
            }
            Hook::Ptrace => format!("ptrace pid {} (mode {:#x})", self.arg0, self.arg1),
            Hook::Kill => format!("signal {} to pid {}", self.arg1, self.arg0),
            Hook::ModuleRequest => "request a kernel module".into(),
            Hook::ReadFile | Hook::LoadData => format!("load kernel data (id {})", self.arg0),
            Hook::Bpf => format!("bpf() command {}", self.arg0),
            Hook::Mount => format!("mount (flags {:#x})", self.arg0),
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = match self.audit_mode {
            None => "baseline",
            Some(true) => "audit mode",
            Some(false) => "enforce mode",
        };
        write!(
            f,
            "kernel {} {}: {} (pid {}, {scope})",
            self.verdict(),
            self.hook.name(),
            self.what(),
            self.pid
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(hook: u32, verdict: i32, mode: u32, arg0: u64, arg1: u64, detail: &str) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(42u64.to_ne_bytes());
        b.extend(7u32.to_ne_bytes());
        b.extend(hook.to_ne_bytes());
        b.extend(verdict.to_ne_bytes());
        b.extend(mode.to_ne_bytes());
        b.extend(arg0.to_ne_bytes());
        b.extend(arg1.to_ne_bytes());
        let mut d = [0u8; DETAIL_BYTES];
        d[..detail.len()].copy_from_slice(detail.as_bytes());
        b.extend(d);
        b
    }

    #[test]
    fn records_decode_into_readable_lines() {
        let e = Event::decode(&raw(1, -1, 1, 1, 0, "/proc/kcore")).unwrap();
        assert_eq!(e.cgroup, 42);
        assert_eq!(
            e.to_string(),
            "kernel denied file_open: open /proc/kcore for read (pid 7, enforce mode)"
        );
        let c = Event::decode(&raw(
            3,
            0,
            2,
            u32::from_ne_bytes([10, 0, 2, 2]) as u64,
            (2 << 32) | 9,
            "",
        ))
        .unwrap();
        assert_eq!(
            c.to_string(),
            "kernel audited socket_connect: connect to 10.0.2.2:9 (pid 7, audit mode)"
        );
        let b = Event::decode(&raw(10, -1, 0, 0, 0, "")).unwrap();
        assert!(b.to_string().contains("(pid 7, baseline)"));
    }

    #[test]
    fn short_or_unknown_records_are_skipped() {
        assert!(Event::decode(&[0u8; 10]).is_none());
        assert!(Event::decode(&raw(99, -1, 1, 0, 0, "")).is_none());
    }
}
