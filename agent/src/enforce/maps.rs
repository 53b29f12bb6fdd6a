//! The layout shared with `bpf/cvm.bpf.c`: where the programs, maps and links are
//! pinned, and the `#[repr(C)]` keys and values the agent writes into the maps.

use std::net::{IpAddr, SocketAddr};

/// bpffs folder of the pinned maps and links (PID1 mounts bpffs mode 0700).
pub const PIN_DIR: &str = "/sys/fs/bpf/cvm";
/// The agent's cgroup: the only processes besides PID1 allowed to call `bpf()`.
pub const AGENT_CGROUP: &str = "/sys/fs/cgroup/cvm-agent";
/// Parent of the workloads' cgroups.
pub const WORKLOADS_CGROUP: &str = "/sys/fs/cgroup/cvm-workloads";
/// Where the baseline's report is left for the agent (root-only tmpfs).
pub const BASELINE_REPORT: &str = "/run/cvm/baseline.json";

/// The maps, each pinned at `PIN_DIR/NAME`.
pub const MAPS: [&str; 6] = [
    "workloads",
    "config",
    "file_rules",
    "net_rules",
    "exec_allow",
    "events",
];

/// The programs (named after their hooks), in attach order: `bpf` last, so the loader
/// is not locked out of its own remaining steps.
pub const PROGRAMS: [&str; 11] = cvm_attest::baseline::HOOKS;

/// Pin path of a map.
pub fn map_pin(name: &str) -> String {
    format!("{PIN_DIR}/{name}")
}

/// Pin path of a program's link.
pub fn link_pin(program: &str) -> String {
    format!("{PIN_DIR}/link-{program}")
}

/// `struct workload`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkloadValue {
    /// `MODE_ENFORCE` or `MODE_AUDIT`.
    pub mode: u32,
    /// Unused by the programs; kept for alignment and future use.
    pub id: u32,
}

/// `MODE_ENFORCE`.
pub const MODE_ENFORCE: u32 = 1;
/// `MODE_AUDIT`.
pub const MODE_AUDIT: u32 = 2;

/// `struct config`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ConfigValue {
    /// The agent cgroup's id.
    pub agent_cgroup: u64,
}

/// Bytes of `struct file_key` after its prefix length: the cgroup id and the path.
pub const FILE_KEY_DATA: usize = 252;
/// Longest path a file rule can name (`PATH_BYTES` - 1).
pub const MAX_RULE_PATH: usize = FILE_KEY_DATA - 8 - 1;
/// Opening for reading is allowed.
pub const FILE_READ: u32 = 1;
/// Opening for writing is allowed.
pub const FILE_WRITE: u32 = 2;
/// Denied (the baseline's rules).
pub const FILE_DENY: u32 = 4;

/// The data and prefix length (bits) of a `file_rules` key, or `None` when the path is
/// too long to be a rule.
pub fn file_key(cgroup: u64, path: &str) -> Option<(u32, [u8; FILE_KEY_DATA])> {
    if path.len() > MAX_RULE_PATH || path.contains('\0') {
        return None;
    }
    let mut data = [0u8; FILE_KEY_DATA];
    data[..4].copy_from_slice(&(cgroup as u32).to_ne_bytes());
    data[4..8].copy_from_slice(&((cgroup >> 32) as u32).to_ne_bytes());
    data[8..8 + path.len()].copy_from_slice(path.as_bytes());
    Some((((8 + path.len()) * 8) as u32, data))
}

/// `struct net_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetKey {
    /// The workload's cgroup.
    pub cgroup: u64,
    /// `HOOK_CONNECT` or `HOOK_BIND`.
    pub op: u16,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Network byte order.
    pub port: u16,
    /// Zero.
    pub pad: u16,
    /// IPv4 address, network byte order; 0 for any (and for IPv6).
    pub addr: u32,
    /// Zero.
    pub pad2: u32,
}

/// The `net_rules` key allowing `op` to `a` for `cgroup`.
pub fn net_key(cgroup: u64, op: u16, a: &SocketAddr) -> NetKey {
    let (family, addr) = match a.ip() {
        IpAddr::V4(v4) => (2u16, u32::from_ne_bytes(v4.octets())),
        IpAddr::V6(_) => (10u16, 0),
    };
    NetKey {
        cgroup,
        op,
        family,
        port: a.port().to_be(),
        pad: 0,
        addr,
        pad2: 0,
    }
}

/// `struct exec_key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExecKey {
    /// 0 for the baseline's allowlist.
    pub cgroup: u64,
    /// The kernel's `s_dev` (`MAJOR << 20 | MINOR`).
    pub dev: u32,
    /// Zero.
    pub pad: u32,
    /// Inode number.
    pub ino: u64,
}

/// The kernel's `s_dev` encoding of a `stat` device number.
pub fn kernel_dev(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << 20) | minor
}

// SAFETY: `#[repr(C)]` integers with an explicit padding field; every bit pattern is
// valid and no byte is uninitialised, so aya may copy it to and from the kernel.
#[allow(unsafe_code)]
unsafe impl aya::Pod for WorkloadValue {}
// SAFETY: as above (one u64).
#[allow(unsafe_code)]
unsafe impl aya::Pod for ConfigValue {}
// SAFETY: as above; `pad` and `pad2` make every byte a field.
#[allow(unsafe_code)]
unsafe impl aya::Pod for NetKey {}
// SAFETY: as above; `pad` makes every byte a field.
#[allow(unsafe_code)]
unsafe impl aya::Pod for ExecKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_structs() {
        assert_eq!(std::mem::size_of::<WorkloadValue>(), 8);
        assert_eq!(std::mem::size_of::<NetKey>(), 24);
        assert_eq!(std::mem::size_of::<ExecKey>(), 24);
        // struct file_key: u32 prefixlen + 252 bytes.
        assert_eq!(4 + FILE_KEY_DATA, 256);
    }

    #[test]
    fn file_keys_cover_the_cgroup_then_the_path() {
        let (bits, data) = file_key(0x1_0000_0002, "/data/").unwrap();
        assert_eq!(bits, (8 + 6) * 8);
        assert_eq!(&data[..8], &[2, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(&data[8..14], b"/data/");
        assert!(file_key(1, &"a".repeat(MAX_RULE_PATH + 1)).is_none());
    }

    #[test]
    fn net_keys_are_in_network_order() {
        let k = net_key(7, 3, &"10.0.2.2:8443".parse().unwrap());
        assert_eq!(k.port, 8443u16.to_be());
        assert_eq!(k.addr.to_ne_bytes(), [10, 0, 2, 2]);
        assert_eq!(k.family, 2);
        assert_eq!(net_key(7, 3, &"[::1]:80".parse().unwrap()).addr, 0);
    }

    #[test]
    fn devices_use_the_kernel_encoding() {
        assert_eq!(kernel_dev(libc::makedev(8, 1)), (8 << 20) | 1);
    }
}
