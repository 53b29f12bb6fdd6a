//! The appliance's persistent state: a virtio disk (or the `cvm-state` partition of
//! the boot disk) encrypted and authenticated at rest
//! with LUKS2 (dm-crypt `aes-xts-plain64` with dm-integrity `hmac-sha256`, 4 KiB
//! sectors), unlocked with the key the broker released, holding an ext4 file system
//! mounted at [`STATE_MOUNT`].
//!
//! - First boot (the disk is all zeros at its start): format, wipe through the
//!   integrity layer (so every sector carries a valid tag), make the file system.
//! - Later boots: unlock with the key; a wrong key or a tampered header refuses.
//! - A disk holding anything else is never overwritten.
//!
//! The key goes to cryptsetup through a pipe (`--key-file -`), never argv or a file.
//! PBKDF2 with its minimum iterations: the key is 256 random bits from the broker, not
//! a passphrase, so stretching would only slow the boot.

use std::fs;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::initdata::{DEFAULT_STATE_DEVICE, STATE_PARTLABEL, StateDevice};

/// Where the state file system is mounted.
pub const STATE_MOUNT: &str = "/var/lib/cvm";
/// The device-mapper name of the unlocked volume.
pub const MAPPER_NAME: &str = "cvm-state";
/// cryptsetup in the initramfs.
pub const CRYPTSETUP: &str = "/usr/sbin/cryptsetup";
/// mke2fs in the initramfs.
pub const MKE2FS: &str = "/usr/sbin/mke2fs";
/// tune2fs in the initramfs.
pub const TUNE2FS: &str = "/usr/sbin/tune2fs";
/// PID1's own record on the volume.
pub const STATE_FILE: &str = "cvm/state.json";

/// A state volume that could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The disk is missing.
    #[error("state disk {0} is missing")]
    NoDevice(PathBuf),
    /// No partition has the configured GPT name.
    #[error("no partition is named {0:?} (cvm.state-device = partlabel:{0})")]
    NoPartition(String),
    /// The disk holds data that is not a cvm state volume.
    #[error(
        "state disk {0} holds data that is not a LUKS2 volume; refusing to overwrite it (give the appliance an empty disk)"
    )]
    Foreign(PathBuf),
    /// The key does not open the volume.
    #[error(
        "state volume {0} does not unlock with the broker's key (another appliance's disk, a changed key, or a tampered header)"
    )]
    WrongKey(PathBuf),
    /// A tool failed.
    #[error("{tool} {action} failed: {detail}")]
    Tool {
        /// Which tool.
        tool: &'static str,
        /// What it was doing.
        action: &'static str,
        /// Its error output.
        detail: String,
    },
    /// A file operation failed.
    #[error("{op} {path} failed")]
    Io {
        /// What.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The state record is unreadable.
    #[error("state record {0} is corrupt")]
    Record(PathBuf),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_owned();
    move |source| StateError::Io { op, path, source }
}

/// PID1's record on the volume: proof that data written by one boot is read by the next.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StateRecord {
    /// Boots that unlocked this volume, this one included.
    pub boots: u64,
    /// The volume's LUKS UUID.
    pub uuid: String,
}

/// An unlocked, mounted state volume.
#[derive(Debug)]
pub struct StateVolume {
    /// Whether this boot created it.
    pub created: bool,
    /// PID1's record after this boot's update.
    pub record: StateRecord,
}

fn run(
    tool: &'static str,
    action: &'static str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<String, StateError> {
    if !Path::new(tool).exists() {
        return Err(StateError::Tool {
            tool,
            action,
            detail: "not in this image (built with --stateless?)".into(),
        });
    }
    let mut child = Command::new(tool)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| StateError::Tool {
            tool,
            action,
            detail: e.to_string(),
        })?;
    if let (Some(bytes), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A short write here surfaces as cryptsetup's own error below.
        let _ = pipe.write_all(bytes);
    }
    let out = child.wait_with_output().map_err(|e| StateError::Tool {
        tool,
        action,
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if detail.is_empty() {
            detail = format!("exit {}", out.status);
        }
        return Err(StateError::Tool {
            tool,
            action,
            detail,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Where the block-device class lists every disk and partition.
const SYS_BLOCK: &str = "/sys/class/block";

/// The device node of the partition whose GPT name is `label`, from the kernel's
/// `uevent` files (there is no udev to make `/dev/disk/by-partlabel`).
fn find_partlabel(sys_block: &Path, label: &str) -> Result<Option<PathBuf>, StateError> {
    let Ok(entries) = fs::read_dir(sys_block) else {
        return Ok(None);
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    // Deterministic when two disks carry the label: the first by name.
    names.sort();
    for name in names {
        let uevent = sys_block.join(&name).join("uevent");
        let Ok(text) = fs::read_to_string(&uevent) else {
            continue;
        };
        let field = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(key).map(str::to_owned))
        };
        if field("PARTNAME=").as_deref() == Some(label)
            && let Some(dev) = field("DEVNAME=")
            && !dev.contains(['/', '.'])
        {
            return Ok(Some(Path::new("/dev").join(dev)));
        }
    }
    Ok(None)
}

/// The device node `device` names.
pub fn resolve(device: &StateDevice) -> Result<PathBuf, StateError> {
    resolve_in(Path::new(SYS_BLOCK), device)
}

fn resolve_in(sys_block: &Path, device: &StateDevice) -> Result<PathBuf, StateError> {
    match device {
        StateDevice::Path(p) => Ok(p.clone()),
        StateDevice::Label(l) => {
            find_partlabel(sys_block, l)?.ok_or_else(|| StateError::NoPartition(l.clone()))
        }
        StateDevice::Auto => Ok(find_partlabel(sys_block, STATE_PARTLABEL)?
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DEVICE))),
    }
}

/// Whether the first 64 KiB of `device` are all zeros (a never-used disk).
fn is_blank(device: &Path) -> Result<bool, StateError> {
    let mut f = fs::File::open(device).map_err(io("open", device))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut read = 0;
    while read < buf.len() {
        match f.read(&mut buf[read..]).map_err(io("read", device))? {
            0 => break,
            n => read += n,
        }
    }
    Ok(buf[..read].iter().all(|&b| b == 0))
}

/// Open (or on first boot create) the state volume on `device` with `key` and mount it.
pub fn open(device: &Path, key: &[u8]) -> Result<StateVolume, StateError> {
    if !device.exists() {
        return Err(StateError::NoDevice(device.to_owned()));
    }
    let dev = device.to_string_lossy();
    let is_luks = run(
        CRYPTSETUP,
        "isLuks",
        &["isLuks", "--type", "luks2", &dev],
        None,
    )
    .is_ok();
    let created = if is_luks {
        false
    } else if is_blank(device)? {
        info!(device = %dev, "formatting the state volume (first boot)");
        run(
            CRYPTSETUP,
            "luksFormat",
            &[
                "luksFormat",
                "--batch-mode",
                "--type",
                "luks2",
                "--cipher",
                "aes-xts-plain64",
                "--key-size",
                "512",
                "--integrity",
                "hmac-sha256",
                "--sector-size",
                "4096",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "1000",
                "--hash",
                "sha256",
                "--label",
                "cvm-state",
                "--key-file",
                "-",
                &dev,
            ],
            Some(key),
        )?;
        true
    } else {
        return Err(StateError::Foreign(device.to_owned()));
    };
    run(
        CRYPTSETUP,
        "open",
        &[
            "open",
            "--type",
            "luks2",
            "--key-file",
            "-",
            &dev,
            MAPPER_NAME,
        ],
        Some(key),
    )
    .map_err(|e| match e {
        StateError::Tool { ref detail, .. } if detail.contains("No key available") => {
            StateError::WrongKey(device.to_owned())
        }
        e => e,
    })?;
    let mapped = format!("/dev/mapper/{MAPPER_NAME}");
    if created {
        run(
            MKE2FS,
            "make the file system",
            &[
                "-q",
                "-t",
                "ext4",
                "-L",
                "cvm-state",
                "-O",
                "encrypt",
                "-E",
                "nodiscard",
                &mapped,
            ],
            None,
        )?;
    } else {
        // Volumes made before per-workload encryption lack ext4's `encrypt` feature;
        // setting it is idempotent and only allows fscrypt policies on new folders.
        run(
            TUNE2FS,
            "enable per-workload encryption",
            &["-O", "encrypt", &mapped],
            None,
        )?;
    }
    let uuid = run(CRYPTSETUP, "luksUUID", &["luksUUID", &dev], None)?;
    let target = Path::new(STATE_MOUNT);
    fs::create_dir_all(target).map_err(io("create", target))?;
    mount(
        Some(mapped.as_str()),
        target,
        Some("ext4"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("errors=remount-ro"),
    )
    .map_err(|e| io("mount", target)(std::io::Error::from(e)))?;
    let record = update_record(target, &uuid, created)?;
    Ok(StateVolume { created, record })
}

/// Read, increment and durably write PID1's record (temporary file, fsync, rename,
/// fsync of the folder: a power cut leaves the old or the new record).
fn update_record(root: &Path, uuid: &str, created: bool) -> Result<StateRecord, StateError> {
    let path = root.join(STATE_FILE);
    let dir = path.parent().unwrap_or(root).to_owned();
    fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let previous = match fs::read(&path) {
        Ok(b) => Some(
            serde_json::from_slice::<StateRecord>(&b)
                .map_err(|_| StateError::Record(path.clone()))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && created => None,
        Err(e) => return Err(io("read", &path)(e)),
    };
    let record = StateRecord {
        boots: previous.map_or(1, |p| p.boots + 1),
        uuid: uuid.to_owned(),
    };
    let tmp = dir.join("state.json.tmp");
    let bytes = serde_json::to_vec_pretty(&record).map_err(|_| StateError::Record(path.clone()))?;
    let mut f = fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(&bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", &dir))?;
    Ok(record)
}

/// Unmount and lock the volume (orderly shutdown).
pub fn close() {
    let _ = umount2(STATE_MOUNT, MntFlags::empty());
    let _ = run(CRYPTSETUP, "close", &["close", MAPPER_NAME], None);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn block(dir: &Path, name: &str, uevent: &str) {
        fs::create_dir_all(dir.join(name)).unwrap();
        fs::write(dir.join(name).join("uevent"), uevent).unwrap();
    }

    #[test]
    fn state_partition_is_found_by_its_gpt_name() {
        let sys = tempfile::tempdir().unwrap();
        block(sys.path(), "vda", "MAJOR=253\nDEVNAME=vda\nDEVTYPE=disk\n");
        block(
            sys.path(),
            "vda1",
            "DEVNAME=vda1\nDEVTYPE=partition\nPARTN=1\nPARTNAME=cvm-esp\n",
        );
        // Before the label appears, auto means the direct boot's state disk.
        assert_eq!(
            resolve_in(sys.path(), &StateDevice::Auto).unwrap(),
            Path::new("/dev/vda")
        );
        block(
            sys.path(),
            "vda2",
            "DEVNAME=vda2\nDEVTYPE=partition\nPARTN=2\nPARTNAME=cvm-state\n",
        );
        assert_eq!(
            resolve_in(sys.path(), &StateDevice::Auto).unwrap(),
            Path::new("/dev/vda2")
        );
        assert_eq!(
            resolve_in(sys.path(), &StateDevice::Label("cvm-esp".into())).unwrap(),
            Path::new("/dev/vda1")
        );
        let missing = resolve_in(sys.path(), &StateDevice::Label("data".into())).unwrap_err();
        assert!(matches!(missing, StateError::NoPartition(l) if l == "data"));
        // A device name that would leave /dev is not followed.
        block(sys.path(), "x", "DEVNAME=../etc/passwd\nPARTNAME=evil\n");
        assert!(resolve_in(sys.path(), &StateDevice::Label("evil".into())).is_err());
    }
}
