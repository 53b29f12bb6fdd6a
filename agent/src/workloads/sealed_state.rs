//! A workload's sealed state: its `files` folder on the appliance's encrypted volume,
//! encrypted again (fscrypt) under a key only this workload's identity gets from the
//! broker, and a version the broker also records, so a copy of the disk older than the
//! broker's record is refused.
//!
//! The version moves at every deploy: the disk's record (`state.json`, beside the
//! encrypted folder, out of the workload's reach) first, then the broker's counter by
//! compare-and-set. A crash between the two leaves the disk one ahead, which is
//! accepted: only this appliance can write the volume, so a disk ahead of the broker is
//! a genuine copy, and the next deploy moves the broker past it. A disk behind the
//! broker is an old copy. Removing a workload with its state first records a removal
//! (holder [`REMOVED`]) at a higher version, so a fresh start is allowed afterwards
//! and the removed state can never come back.
//!
//! What the version does not cover: a copy taken while the workload ran and restored
//! after a crash, before the next deploy, carries the current version; the version
//! moves per deploy (and per migration), not per request.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use cvm_kbs_client::counter::{Counter, CounterUpdate};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha512};
use zeroize::Zeroizing;

use crate::broker::BrokerSession;
use crate::fscrypt::{self, FscryptError, KeyId};

/// The disk's record, in the workload's state folder.
pub const RECORD: &str = "state.json";
/// The counter holder that marks a workload's state as removed by its owner.
pub const REMOVED: &str = "removed";
/// Bytes of the state key the broker holds.
pub const STATE_KEY_LEN: usize = 32;

/// Why a workload's sealed state was not opened.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The disk holds an older version than the broker recorded.
    #[error(
        "rollback refused: the state on this appliance's disk is version {disk} but the broker recorded version {broker} (an older copy of the disk)"
    )]
    RolledBack {
        /// The disk's version.
        disk: u64,
        /// The broker's.
        broker: u64,
    },
    /// The broker recorded state this appliance does not have.
    #[error(
        "the broker records version {broker} of this workload's state but this appliance has none (another disk, or a lost one): refusing to start with empty state"
    )]
    Missing {
        /// The broker's version.
        broker: u64,
    },
    /// The owner removed the state, and this disk still has an older copy.
    #[error(
        "the broker records that this workload's state was removed at version {broker}; this disk still holds version {disk}: remove the workload to start over"
    )]
    Removed {
        /// The disk's version.
        disk: u64,
        /// The broker's.
        broker: u64,
    },
    /// The state key is not the workload's (wrong size, or another key than the
    /// folder was encrypted with).
    #[error("state key {resource}: {reason}")]
    Key {
        /// The resource.
        resource: String,
        /// Why.
        reason: String,
    },
    /// The broker did not answer or refused.
    #[error("broker: {0}")]
    Broker(String),
    /// The disk's record does not parse.
    #[error("{path} is corrupt: {reason}")]
    Corrupt {
        /// The record.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// fscrypt failed.
    #[error(transparent)]
    Fscrypt(#[from] FscryptError),
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl StateError {
    /// A stable name (the API's `type`).
    pub fn kind(&self) -> &'static str {
        match self {
            StateError::RolledBack { .. } => "StateRolledBack",
            StateError::Missing { .. } => "StateMissing",
            StateError::Removed { .. } => "StateRemoved",
            StateError::Key { .. } | StateError::Fscrypt(FscryptError::OtherKey { .. }) => {
                "StateKeyMismatch"
            }
            StateError::Broker(_) => "KeyRefused",
            StateError::Corrupt { .. } | StateError::Fscrypt(_) | StateError::Io { .. } => {
                "StateUnavailable"
            }
        }
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_owned();
    move |source| StateError::Io { op, path, source }
}

/// The disk's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The state's version.
    pub version: u64,
    /// The fscrypt key identifier of its folder, hex.
    pub key: String,
}

/// An opened sealed state.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The broker resource of its key (also the path of its counter).
    pub resource: String,
    /// The kernel's identifier of its key.
    pub key_id: KeyId,
    /// The version this deploy runs at.
    pub version: u64,
}

/// The version a deploy runs at, from the disk's version (`None`: no state) and the
/// broker's counter; or why it must not run.
pub fn decide(disk: Option<u64>, broker: &Counter) -> Result<u64, StateError> {
    let removed = broker.holder == REMOVED;
    match disk {
        None if broker.value == 0 || removed => Ok(broker.value + 1),
        None => Err(StateError::Missing {
            broker: broker.value,
        }),
        Some(disk) if disk < broker.value && removed => Err(StateError::Removed {
            disk,
            broker: broker.value,
        }),
        Some(disk) if disk < broker.value => Err(StateError::RolledBack {
            disk,
            broker: broker.value,
        }),
        Some(disk) => Ok(disk + 1),
    }
}

/// The fscrypt master key for `name`: the broker's key stretched to the 64 bytes
/// AES-256-XTS needs, bound to the workload's name.
fn master_key(name: &str, key: &[u8]) -> Zeroizing<[u8; fscrypt::KEY_LEN]> {
    let mut h = Sha512::new();
    h.update(b"cvm workload state v1\0");
    h.update(name.as_bytes());
    h.update([0]);
    h.update(key);
    let mut out = Zeroizing::new([0u8; fscrypt::KEY_LEN]);
    out.copy_from_slice(&h.finalize());
    out
}

/// Read the disk's record in `dir` (the workload's state folder).
pub fn read_record(dir: &Path) -> Result<Option<Record>, StateError> {
    let path = dir.join(RECORD);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", &path)(e)),
    }
}

/// Write the record durably: temporary file, fsync, rename, fsync of the folder.
fn write_record(dir: &Path, record: &Record) -> Result<(), StateError> {
    let path = dir.join(RECORD);
    let tmp = dir.join(format!("{RECORD}.tmp"));
    let bytes = serde_json::to_vec(record).map_err(|e| StateError::Corrupt {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    f.write_all(&bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("rename", &path))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// What opening needs to know.
#[derive(Debug)]
pub struct Place<'a> {
    /// The state volume's mount point.
    pub mount: &'a Path,
    /// The workload's state folder (`workloads/NAME`).
    pub dir: &'a Path,
    /// The encrypted folder inside it (`files`).
    pub files: &'a Path,
    /// The workload's name.
    pub name: &'a str,
    /// Who holds the state now (the broker keeps it with the counter).
    pub holder: &'a str,
}

/// Open the sealed state at `place` (blocking): the key and the counter from the
/// broker, the rollback check, the folder unlocked, the version moved on disk and
/// then at the broker.
pub fn open(
    session: &mut BrokerSession,
    resource: &str,
    place: &Place<'_>,
) -> Result<Opened, StateError> {
    let key = session.resource(resource).map_err(StateError::Broker)?;
    if key.len() != STATE_KEY_LEN {
        return Err(StateError::Key {
            resource: resource.to_owned(),
            reason: format!("{} bytes, not {STATE_KEY_LEN}", key.len()),
        });
    }
    let counter = session.counter(resource).map_err(StateError::Broker)?;
    let record = read_record(place.dir)?;
    let version = decide(record.as_ref().map(|r| r.version), &counter)?;
    let master = master_key(place.name, &key);
    drop(key);
    let key_id = fscrypt::add_key(place.mount, &master)?;
    drop(master);
    let unlocked = (|| {
        if let Some(r) = &record
            && r.key != hex::encode(key_id)
        {
            return Err(StateError::Key {
                resource: resource.to_owned(),
                reason: format!(
                    "the state was encrypted with key {} and the broker released key {}",
                    r.key,
                    hex::encode(key_id)
                ),
            });
        }
        std::fs::create_dir_all(place.files).map_err(io("create", place.files))?;
        fscrypt::ensure_policy(place.files, &key_id)?;
        write_record(
            place.dir,
            &Record {
                version,
                key: hex::encode(key_id),
            },
        )?;
        session
            .advance(
                resource,
                &CounterUpdate {
                    expect: counter.value,
                    value: version,
                    holder: place.holder.to_owned(),
                },
            )
            .map_err(StateError::Broker)
    })();
    match unlocked {
        Ok(_) => Ok(Opened {
            resource: resource.to_owned(),
            key_id,
            version,
        }),
        Err(e) => {
            let _ = fscrypt::remove_key(place.mount, &key_id);
            Err(e)
        }
    }
}

/// Record at the broker that the state at `opened` is being removed (blocking): the
/// counter moves past the disk's version with holder [`REMOVED`].
pub fn record_removal(session: &mut BrokerSession, opened: &Opened) -> Result<(), StateError> {
    let counter = session
        .counter(&opened.resource)
        .map_err(StateError::Broker)?;
    session
        .advance(
            &opened.resource,
            &CounterUpdate {
                expect: counter.value,
                value: counter.value.max(opened.version) + 1,
                holder: REMOVED.to_owned(),
            },
        )
        .map(drop)
        .map_err(StateError::Broker)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(value: u64, holder: &str) -> Counter {
        Counter {
            value,
            holder: holder.into(),
        }
    }

    #[test]
    fn a_fresh_state_starts_after_the_brokers_version() {
        assert_eq!(decide(None, &at(0, "")).unwrap(), 1);
        assert_eq!(decide(None, &at(7, REMOVED)).unwrap(), 8);
    }

    #[test]
    fn a_disk_at_or_ahead_of_the_broker_moves_on() {
        assert_eq!(decide(Some(4), &at(4, "a")).unwrap(), 5);
        // A crash between the disk's write and the broker's.
        assert_eq!(decide(Some(5), &at(4, "a")).unwrap(), 6);
    }

    #[test]
    fn an_older_disk_is_refused_naming_both_versions() {
        let e = decide(Some(3), &at(5, "a")).unwrap_err();
        assert!(matches!(e, StateError::RolledBack { disk: 3, broker: 5 }));
        let msg = e.to_string();
        assert!(
            msg.contains("version 3") && msg.contains("version 5"),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_state_is_refused_unless_it_was_removed() {
        assert!(matches!(
            decide(None, &at(2, "a")),
            Err(StateError::Missing { broker: 2 })
        ));
        assert!(matches!(
            decide(Some(2), &at(3, REMOVED)),
            Err(StateError::Removed { disk: 2, broker: 3 })
        ));
    }

    #[test]
    fn the_master_key_depends_on_the_key_and_the_name() {
        let a = master_key("a", &[1; 32]);
        assert_ne!(*a, *master_key("b", &[1; 32]));
        assert_ne!(*a, *master_key("a", &[2; 32]));
        assert_eq!(*a, *master_key("a", &[1; 32]));
    }

    #[test]
    fn the_record_is_replaced_whole() {
        let d = std::env::temp_dir().join(format!("cvm-sealed-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        assert_eq!(read_record(&d).unwrap(), None);
        let r = Record {
            version: 9,
            key: "ab".into(),
        };
        write_record(&d, &r).unwrap();
        assert_eq!(read_record(&d).unwrap(), Some(r));
        std::fs::write(d.join(RECORD), b"{").unwrap();
        assert!(matches!(read_record(&d), Err(StateError::Corrupt { .. })));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
