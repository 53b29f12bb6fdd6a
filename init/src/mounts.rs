//! The filesystems PID1 mounts before anything else runs.

use std::fs;
use std::path::Path;

use nix::mount::{MsFlags, mount};

/// One mount PID1 performs.
struct Mount {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In order: each target exists once the mounts before it are in place.
const MOUNTS: &[Mount] = &[
    Mount {
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Mount {
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Mount {
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: Some("mode=0755"),
    },
    Mount {
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=0755"),
    },
    Mount {
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=1777"),
    },
    Mount {
        target: "/sys/kernel/security",
        fstype: "securityfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Mount {
        target: "/sys/kernel/config",
        fstype: "configfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
    },
    Mount {
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("nsdelegate"),
    },
    Mount {
        target: "/sys/fs/bpf",
        fstype: "bpf",
        flags: NOSUID_NODEV_NOEXEC,
        data: Some("mode=0700"),
    },
];

/// A mount that failed.
#[derive(Debug, thiserror::Error)]
#[error("mount({target}, {fstype}) failed")]
pub struct MountError {
    target: &'static str,
    fstype: &'static str,
    #[source]
    source: std::io::Error,
}

/// Mount everything in [`MOUNTS`], creating top-level mount points as needed.
pub fn mount_all() -> Result<(), MountError> {
    for m in MOUNTS {
        let err = |source| MountError {
            target: m.target,
            fstype: m.fstype,
            source,
        };
        if !Path::new(m.target).exists() {
            fs::create_dir_all(m.target).map_err(err)?;
        }
        mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, m.data)
            .map_err(|e| err(e.into()))?;
    }
    Ok(())
}
