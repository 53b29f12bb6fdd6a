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
//! (holder `removed/NAME`) at a higher version, so a fresh start is allowed afterwards
//! and the removed state can never come back (a copy a crash left is wiped, not
//! served). The holder names the workload too (`volume:UUID/NAME`), so two workloads
//! given the same state key resource are refused instead of sharing one counter.
//!
//! What the version does not cover: any copy of the disk taken while the workload runs
//! carries the current version until the next deploy moves it (the version moves per
//! deploy, and per migration, not per request); and dm-integrity authenticates each
//! sector but not its freshness, so the host can put back older sectors of the volume
//! one by one. A copy put back whole is what the version catches.

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
/// Prefix of the counter holder that marks a workload's state as removed by its owner
/// (`removed/NAME`).
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
    /// Another appliance holds the state now (it was migrated there).
    #[error(
        "this workload's state moved to {holder} (the broker's version {broker}; this appliance's copy is older or gone): deploy it there, or migrate it back"
    )]
    MigratedAway {
        /// The holder.
        holder: String,
        /// The broker's version.
        broker: u64,
    },
    /// The broker's record is not the release this appliance expects.
    #[error("the broker records {holder} at version {value}, not {expected}")]
    Lease {
        /// The counter's holder.
        holder: String,
        /// Its value.
        value: u64,
        /// What was expected.
        expected: String,
    },
    /// The incoming snapshot did not open or install.
    #[error("snapshot: {0}")]
    Snapshot(String),
    /// The counter at the state key's path belongs to another workload.
    #[error(
        "state key {resource} is another workload's (its counter is held by {holder}): give each workload its own state key"
    )]
    Shared {
        /// The resource.
        resource: String,
        /// The counter's holder.
        holder: String,
    },
    /// The counter cannot move further.
    #[error("the state version counter is exhausted at {0}")]
    Exhausted(u64),
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
            StateError::Shared { .. } => "StateKeyShared",
            StateError::MigratedAway { .. } => "StateMigratedAway",
            StateError::Lease { .. } => "LeaseConflict",
            StateError::Snapshot(_) => "BadSnapshot",
            StateError::Exhausted(_) => "StateUnavailable",
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
    /// The migration this version was released to (the source's record of a release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<String>,
}

/// An opened sealed state.
#[derive(Debug, Clone)]
pub struct Opened {
    /// The state volume's mount point (whose keyring holds the key).
    pub mount: PathBuf,
    /// The workload's name.
    pub name: String,
    /// The broker resource of its key (also the path of its counter).
    pub resource: String,
    /// The kernel's identifier of its key.
    pub key_id: KeyId,
    /// The version this deploy runs at.
    pub version: u64,
}

/// What a deploy does with the state it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go on with the disk's state, at this version.
    Continue(u64),
    /// Start with empty state at this version (none yet, or the owner removed it: a
    /// copy on the disk is wiped first).
    Fresh(u64),
}

/// Whether `holder` is this workload's (`…/NAME`, `removed/NAME`).
fn holder_name(holder: &str) -> Option<&str> {
    holder.rsplit_once('/').map(|(_, n)| n)
}

/// The holder this appliance writes for workload `name`.
pub fn holder_for(appliance: &str, name: &str) -> String {
    format!("{appliance}/{name}")
}

/// The holder that records the removal of `name`'s state.
pub fn removed_holder(name: &str) -> String {
    format!("{REMOVED}/{name}")
}

/// The migration id of a `releasing:MIGRATION:KEY/NAME` holder.
fn releasing_migration(holder: &str) -> Option<&str> {
    holder.strip_prefix("releasing:")?.split(':').next()
}

/// What a deploy of `name` does, from the disk's version and the migration it last
/// released (`None`: no state) and the broker's counter at `resource`; or why it must
/// not run. Equal versions are not enough: the holder must be this appliance
/// (`me`), or an unfinished release this disk made (which the deploy takes back).
pub fn decide(
    disk: Option<(u64, Option<&str>)>,
    broker: &Counter,
    name: &str,
    resource: &str,
    me: &str,
) -> Result<Decision, StateError> {
    if broker.value > 0 && holder_name(&broker.holder) != Some(name) {
        return Err(StateError::Shared {
            resource: resource.to_owned(),
            holder: broker.holder.clone(),
        });
    }
    let next = |v: u64| v.checked_add(1).ok_or(StateError::Exhausted(v));
    // The owner removed this state and the broker recorded it: a copy left on this
    // disk (a crash during the removal) goes, never to be served.
    if broker.holder == removed_holder(name) {
        return Ok(Decision::Fresh(next(broker.value)?));
    }
    if broker.holder.starts_with("volume:") && broker.holder != holder_for(me, name) {
        return Err(StateError::MigratedAway {
            holder: broker.holder.clone(),
            broker: broker.value,
        });
    }
    if let Some(migration) = releasing_migration(&broker.holder) {
        // Only the release this disk recorded, at its version, is taken back here;
        // any other is a migration in flight that the broker will settle.
        let ours =
            disk.is_some_and(|(v, released)| v == broker.value && released == Some(migration));
        if !ours {
            return Err(StateError::Lease {
                holder: broker.holder.clone(),
                value: broker.value,
                expected: "this appliance's own holder or release (a migration is in flight)"
                    .into(),
            });
        }
    }
    match disk {
        None if broker.value == 0 => Ok(Decision::Fresh(1)),
        None => Err(StateError::Missing {
            broker: broker.value,
        }),
        Some((disk, _)) if disk < broker.value => Err(StateError::RolledBack {
            disk,
            broker: broker.value,
        }),
        // At or ahead of the broker's version, held here (or released from here and
        // not committed: the compare-and-set takes it back, as a commit would need).
        Some((disk, _)) => Ok(Decision::Continue(next(disk)?)),
    }
}

/// Delete the folder `dir` so that a crash midway leaves nothing under its name: it is
/// renamed away (and the rename made durable) before its files are deleted; a
/// half-deleted folder is finished by [`finish_wipes`] at the next start.
pub fn wipe(dir: &Path) -> Result<(), StateError> {
    let (Some(parent), Some(name)) = (dir.parent(), dir.file_name()) else {
        return Ok(());
    };
    let doomed = parent.join(format!(
        "{WIPE_PREFIX}{}-{}",
        name.to_string_lossy(),
        crate::workloads::now_ms()
    ));
    match std::fs::rename(dir, &doomed) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io("rename away", dir)(e)),
    }
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", parent))?;
    std::fs::remove_dir_all(&doomed).map_err(io("delete", &doomed))
}

/// Prefix of a folder being wiped (never a workload name: those are `[a-z0-9-]`).
const WIPE_PREFIX: &str = ".wipe-";

/// Finish wipes a crash interrupted, in `workloads` (the state volume's folder).
pub fn finish_wipes(workloads: &Path) {
    let Ok(entries) = std::fs::read_dir(workloads) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(WIPE_PREFIX)
            && let Err(err) = std::fs::remove_dir_all(e.path())
        {
            tracing::warn!(folder = %e.path().display(), error = %err, "finish deleting");
        }
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
    let key = state_key(session, resource)?;
    let counter = session.counter(resource).map_err(StateError::Broker)?;
    let mut record = read_record(place.dir)?;
    // The key first: what happens to a folder on the disk depends on whether it is
    // this workload's (encrypted with this key) or another's of the same name.
    let master = master_key(place.name, &key);
    drop(key);
    let key_id = fscrypt::add_key(place.mount, &master)?;
    drop(master);
    let mine = hex::encode(key_id);
    let other_key = |r: &Record| StateError::Key {
        resource: resource.to_owned(),
        reason: format!(
            "the state was encrypted with key {} and the broker released key {mine}",
            r.key
        ),
    };
    // A take-back of a release (see `take_back`) that reached the broker but not the
    // disk: the broker shows this appliance one past the released version.
    let disk = record.as_ref().map(|r| {
        let taken_back = r.released.is_some()
            && counter.holder == holder_for(place.holder, place.name)
            && Some(counter.value) == r.version.checked_add(1);
        let version = if taken_back { counter.value } else { r.version };
        (version, r.released.as_deref())
    });
    let decided = decide(disk, &counter, place.name, resource, place.holder);
    // Taking back this disk's own release: the broker moves first (as in `take_back`),
    // so a compare-and-set that fails leaves the disk's record of the release intact
    // for the next try.
    let taking_back = decided.is_ok() && releasing_migration(&counter.holder).is_some();
    let decided = match (decided, &record) {
        (Err(e @ StateError::MigratedAway { broker, .. }), Some(r))
            if r.released.is_some() && broker > r.version && r.key == mine =>
        {
            // This disk released the state and another appliance committed it since:
            // the copy left here (a crash before the source heard of the commit) goes.
            if let Err(w) = wipe(place.dir) {
                tracing::warn!(folder = %place.dir.display(), error = %w, "delete a copy that moved away");
            }
            Err(e)
        }
        (Ok(Decision::Fresh(_)), Some(r)) if r.key != mine => Err(other_key(r)),
        (d, _) => d,
    };
    let version = match decided {
        Ok(Decision::Continue(v)) => Ok(v),
        Ok(Decision::Fresh(v)) if record.is_some() => {
            // The owner removed this state: the copy a crash left goes.
            record = None;
            wipe(place.dir)
                .and_then(|()| std::fs::create_dir_all(place.dir).map_err(io("create", place.dir)))
                .map(|()| v)
        }
        Ok(Decision::Fresh(v)) => Ok(v),
        Err(e) => Err(e),
    };
    let version = match version {
        Ok(v) => v,
        Err(e) => {
            let _ = fscrypt::remove_key(place.mount, &key_id);
            return Err(e);
        }
    };
    let unlocked = (|| {
        if let Some(r) = &record
            && r.key != mine
        {
            return Err(other_key(r));
        }
        if record.is_none() {
            adopt_unencrypted(place.files)?;
        }
        std::fs::create_dir_all(place.files).map_err(io("create", place.files))?;
        fscrypt::ensure_policy(place.files, &key_id)?;
        if record.is_none() {
            copy_in(place)?;
        }
        let update = CounterUpdate {
            expect: counter.value,
            value: version,
            holder: holder_for(place.holder, place.name),
        };
        let new_record = Record {
            version,
            key: mine.clone(),
            released: None,
        };
        if taking_back {
            advance_confirmed(session, resource, &update)?;
            write_record(place.dir, &new_record)
        } else {
            write_record(place.dir, &new_record)?;
            session
                .advance(resource, &update)
                .map(drop)
                .map_err(StateError::Broker)
        }
    })();
    match unlocked {
        Ok(_) => Ok(Opened {
            mount: place.mount.to_owned(),
            name: place.name.to_owned(),
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

/// The holder of a state released by migration `migration` to the appliance whose TLS
/// key hashes to `to` (hex).
pub fn releasing_holder(migration: &str, to: &str, name: &str) -> String {
    format!("releasing:{migration}:{to}/{name}")
}

/// The state key at `resource`, checked for length.
pub fn state_key(
    session: &mut BrokerSession,
    resource: &str,
) -> Result<Zeroizing<Vec<u8>>, StateError> {
    let key = session.resource(resource).map_err(StateError::Broker)?;
    if key.len() != STATE_KEY_LEN {
        return Err(StateError::Key {
            resource: resource.to_owned(),
            reason: format!("{} bytes, not {STATE_KEY_LEN}", key.len()),
        });
    }
    Ok(key)
}

/// Put the workload's key back in the kernel for a moment (the source reads its
/// stopped workload's files into a snapshot); the caller removes it again.
pub fn unlock(opened: &Opened, key: &[u8]) -> Result<(), StateError> {
    let id = fscrypt::add_key(&opened.mount, &master_key(&opened.name, key))?;
    if id != opened.key_id {
        let _ = fscrypt::remove_key(&opened.mount, &id);
        return Err(StateError::Key {
            resource: opened.resource.clone(),
            reason: "the broker's key is no longer the one the state was opened with".into(),
        });
    }
    Ok(())
}

/// Advance the counter, and if the answer is lost, read it back: the update counts as
/// made exactly when the broker shows it.
fn advance_confirmed(
    session: &mut BrokerSession,
    resource: &str,
    update: &CounterUpdate,
) -> Result<(), StateError> {
    match session.advance(resource, update) {
        Ok(_) => Ok(()),
        Err(e) => match session.counter(resource) {
            Ok(now) if now == update.counter() => Ok(()),
            Ok(now) => Err(StateError::Lease {
                holder: now.holder,
                value: now.value,
                expected: format!("{} at {} ({e})", update.holder, update.expect),
            }),
            Err(_) => Err(StateError::Broker(e)),
        },
    }
}

/// Source: release the state `opened` (the workload stopped) to the appliance whose
/// key hashes to `to`, for `migration` (blocking). The disk records the release at the
/// next version first, then the broker, by compare-and-set from the version this run
/// opened; returns the released version.
pub fn release(
    session: &mut BrokerSession,
    opened: &Opened,
    dir: &Path,
    migration: &str,
    to: &str,
    me: &str,
) -> Result<u64, StateError> {
    let counter = session
        .counter(&opened.resource)
        .map_err(StateError::Broker)?;
    let mine = holder_for(me, &opened.name);
    if counter.value != opened.version || counter.holder != mine {
        return Err(StateError::Lease {
            holder: counter.holder,
            value: counter.value,
            expected: format!("{mine} at {}", opened.version),
        });
    }
    let released = opened
        .version
        .checked_add(1)
        .ok_or(StateError::Exhausted(opened.version))?;
    write_record(
        dir,
        &Record {
            version: released,
            key: hex::encode(opened.key_id),
            released: Some(migration.to_owned()),
        },
    )?;
    advance_confirmed(
        session,
        &opened.resource,
        &CounterUpdate {
            expect: opened.version,
            value: released,
            holder: releasing_holder(migration, to, &opened.name),
        },
    )?;
    Ok(released)
}

/// Source: take back a release no destination committed (blocking). Exactly one of
/// this and the destination's commit succeeds (both move the counter from `released`);
/// an error `Lease` naming the destination means it committed first.
pub fn take_back(
    session: &mut BrokerSession,
    opened: &Opened,
    dir: &Path,
    released: u64,
    me: &str,
) -> Result<u64, StateError> {
    let version = released
        .checked_add(1)
        .ok_or(StateError::Exhausted(released))?;
    let record = read_record(dir)?;
    advance_confirmed(
        session,
        &opened.resource,
        &CounterUpdate {
            expect: released,
            value: version,
            holder: holder_for(me, &opened.name),
        },
    )?;
    // The broker first here: the disk must not claim a version the destination may
    // hold. A crash before this write leaves the disk one behind its own holder's
    // record, which the next deploy recognises (`open`: a taken-back release).
    write_record(
        dir,
        &Record {
            version,
            key: record
                .map(|r| r.key)
                .unwrap_or_else(|| hex::encode(opened.key_id)),
            released: None,
        },
    )?;
    Ok(version)
}

/// Destination: install the incoming snapshot `parsed` of migration `migration`,
/// released at version `released` to this appliance's key `me_key` (blocking). The
/// files and the record at the next version are written and synced in a staging
/// folder under the workload's fscrypt key and renamed into place; then the broker's
/// counter moves from the release to this appliance: that compare-and-set is the
/// commit. Refused (and nothing kept) if the broker does not show that release, or
/// if state of another workload of the same name is here.
#[allow(clippy::too_many_arguments)]
pub fn accept(
    session: &mut BrokerSession,
    resource: &str,
    place: &Place<'_>,
    parsed: &cvm_runtime::snapshot::Parsed,
    released: u64,
    migration: &str,
    me_key: &str,
) -> Result<Opened, StateError> {
    let key = state_key(session, resource)?;
    let counter = session.counter(resource).map_err(StateError::Broker)?;
    let expected = releasing_holder(migration, me_key, place.name);
    if counter.value != released || counter.holder != expected {
        return Err(StateError::Lease {
            holder: counter.holder,
            value: counter.value,
            expected: format!("{expected} at {released}"),
        });
    }
    let entries = parsed
        .open(&key)
        .map_err(|e| StateError::Snapshot(e.to_string()))?;
    let master = master_key(place.name, &key);
    drop(key);
    let key_id = fscrypt::add_key(place.mount, &master)?;
    drop(master);
    // State of this name already here must be this workload's (an older copy, say
    // from a migration away): another workload's of the same name is not replaced.
    let existing = match read_record(place.dir) {
        Ok(r) => r,
        Err(e) => {
            let _ = fscrypt::remove_key(place.mount, &key_id);
            return Err(e);
        }
    };
    if let Some(r) = existing
        && r.key != hex::encode(key_id)
    {
        let _ = fscrypt::remove_key(place.mount, &key_id);
        return Err(StateError::Key {
            resource: resource.to_owned(),
            reason: format!(
                "this appliance holds state of a workload of the same name encrypted with key {}, not this workload's {}: remove that workload first",
                r.key,
                hex::encode(key_id)
            ),
        });
    }
    let Some(version) = released.checked_add(1) else {
        let _ = fscrypt::remove_key(place.mount, &key_id);
        return Err(StateError::Exhausted(released));
    };
    // Installed beside the old folder, under a name a restart wipes, and renamed into
    // place only once complete and durable: a crash midway leaves the old state or
    // the new, never a mix.
    let (Some(parent), Some(dir_name)) = (place.dir.parent(), place.dir.file_name()) else {
        let _ = fscrypt::remove_key(place.mount, &key_id);
        return Err(StateError::Snapshot(
            "the state folder has no parent".into(),
        ));
    };
    let staged = parent.join(format!(
        "{WIPE_PREFIX}incoming-{}-{migration}",
        dir_name.to_string_lossy()
    ));
    let staged_files = staged.join(place.files.file_name().unwrap_or_default());
    let installed = (|| {
        wipe(&staged)?;
        std::fs::create_dir_all(&staged_files).map_err(io("create", &staged_files))?;
        fscrypt::ensure_policy(&staged_files, &key_id)?;
        cvm_runtime::snapshot::write_into(&entries, &staged_files)
            .map_err(|e| StateError::Snapshot(e.to_string()))?;
        write_record(
            &staged,
            &Record {
                version,
                key: hex::encode(key_id),
                released: None,
            },
        )?;
        // Every file durable before the rename that makes the record count.
        crate::sys::syncfs(&staged_files).map_err(io("sync", &staged_files))?;
        wipe(place.dir)?;
        std::fs::rename(&staged, place.dir).map_err(io("rename into place", &staged))?;
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", parent))?;
        advance_confirmed(
            session,
            resource,
            &CounterUpdate {
                expect: released,
                value: version,
                holder: holder_for(place.holder, place.name),
            },
        )
    })();
    match installed {
        Ok(()) => Ok(Opened {
            mount: place.mount.to_owned(),
            name: place.name.to_owned(),
            resource: resource.to_owned(),
            key_id,
            version,
        }),
        // The broker did not answer: the commit may have been applied. The files and
        // the record stay, so a commit the broker did record is never lost; the next
        // deploy here continues exactly when the broker names this appliance.
        Err(e @ StateError::Broker(_)) => {
            let _ = fscrypt::remove_key(place.mount, &key_id);
            Err(e)
        }
        Err(e) => {
            let _ = wipe(&staged);
            if read_record(place.dir)
                .ok()
                .flatten()
                .is_some_and(|r| r.version == version && r.key == hex::encode(key_id))
            {
                let _ = wipe(place.dir);
            }
            let _ = fscrypt::remove_key(place.mount, &key_id);
            Err(e)
        }
    }
}

/// Where files a cvm without per-workload encryption left wait to be copied in.
const UNENCRYPTED: &str = "files.unencrypted";

/// A `files` folder with data but no record is a workload's state from before
/// per-workload encryption: it is moved aside whole, to be copied into the encrypted
/// folder ([`copy_in`]); a copy a crash interrupted starts again from the same place.
fn adopt_unencrypted(files: &Path) -> Result<(), StateError> {
    let Some(dir) = files.parent() else {
        return Ok(());
    };
    let aside = dir.join(UNENCRYPTED);
    if aside.exists() {
        // An earlier copy was interrupted: the encrypted folder is partial.
        return wipe(files);
    }
    let has_data = std::fs::read_dir(files).is_ok_and(|mut d| d.next().is_some());
    if !has_data || fscrypt::policy_key(files)?.is_some() {
        return Ok(());
    }
    std::fs::rename(files, &aside).map_err(io("move aside", files))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

/// Copy what [`adopt_unencrypted`] moved aside into the (now encrypted) folder, then
/// delete it. fscrypt refuses to rename files into an encrypted folder, hence a copy.
fn copy_in(place: &Place<'_>) -> Result<(), StateError> {
    fn copy(from: &Path, to: &Path) -> Result<(), StateError> {
        for e in std::fs::read_dir(from).map_err(io("list", from))? {
            let e = e.map_err(io("list", from))?;
            let (src, dst) = (e.path(), to.join(e.file_name()));
            let kind = e.file_type().map_err(io("stat", &src))?;
            if kind.is_dir() {
                std::fs::create_dir_all(&dst).map_err(io("create", &dst))?;
                copy(&src, &dst)?;
            } else if kind.is_file() {
                std::fs::copy(&src, &dst).map_err(io("copy", &src))?;
                std::fs::File::open(&dst)
                    .and_then(|f| f.sync_all())
                    .map_err(io("fsync", &dst))?;
            }
        }
        std::fs::File::open(to)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", to))
    }
    let aside = place.dir.join(UNENCRYPTED);
    if !aside.exists() {
        return Ok(());
    }
    copy(&aside, place.files)?;
    wipe(&aside)
}

/// Record at the broker that the state at `opened` is being removed (blocking): the
/// counter moves past the disk's version with holder [`REMOVED`].
pub fn record_removal(session: &mut BrokerSession, opened: &Opened) -> Result<(), StateError> {
    let counter = session
        .counter(&opened.resource)
        .map_err(StateError::Broker)?;
    let top = counter.value.max(opened.version);
    session
        .advance(
            &opened.resource,
            &CounterUpdate {
                expect: counter.value,
                value: top.checked_add(1).ok_or(StateError::Exhausted(top))?,
                holder: removed_holder(&opened.name),
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

    fn decide_w(disk: Option<u64>, c: &Counter) -> Result<Decision, StateError> {
        decide(disk.map(|v| (v, None)), c, "w", "r/w/state-key", "volume:a")
    }

    #[test]
    fn a_fresh_state_starts_after_the_brokers_version() {
        assert_eq!(decide_w(None, &at(0, "")).unwrap(), Decision::Fresh(1));
        assert_eq!(
            decide_w(None, &at(7, "removed/w")).unwrap(),
            Decision::Fresh(8)
        );
        // A copy of removed state on the disk is wiped, never served.
        assert_eq!(
            decide_w(Some(3), &at(7, "removed/w")).unwrap(),
            Decision::Fresh(8)
        );
    }

    #[test]
    fn a_disk_at_or_ahead_of_the_broker_moves_on() {
        assert_eq!(
            decide_w(Some(4), &at(4, "volume:a/w")).unwrap(),
            Decision::Continue(5)
        );
        // A crash between the disk's write and the broker's.
        assert_eq!(
            decide_w(Some(5), &at(4, "volume:a/w")).unwrap(),
            Decision::Continue(6)
        );
    }

    #[test]
    fn an_older_disk_is_refused_naming_both_versions() {
        let e = decide_w(Some(3), &at(5, "volume:a/w")).unwrap_err();
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
            decide_w(None, &at(2, "volume:a/w")),
            Err(StateError::Missing { broker: 2 })
        ));
    }

    #[test]
    fn another_workloads_counter_is_refused() {
        for holder in ["volume:a/other", "removed/other", "removed", "x"] {
            assert!(
                matches!(
                    decide_w(Some(2), &at(2, holder)),
                    Err(StateError::Shared { .. })
                ),
                "{holder}"
            );
        }
    }

    #[test]
    fn state_that_moved_away_is_named_and_a_release_can_be_taken_back() {
        assert!(matches!(
            decide_w(Some(3), &at(5, "volume:b/w")),
            Err(StateError::MigratedAway { broker: 5, .. })
        ));
        assert!(matches!(
            decide_w(None, &at(5, "volume:b/w")),
            Err(StateError::MigratedAway { broker: 5, .. })
        ));
        // Our own unfinished release, at our version: taken back.
        let release = at(4, "releasing:m1:ab/w");
        assert_eq!(
            decide(Some((4, Some("m1"))), &release, "w", "r", "volume:a").unwrap(),
            Decision::Continue(5)
        );
        // Any other release (another migration, another version, no record of it)
        // is left for the broker to settle.
        for disk in [
            Some((4, Some("m2"))),
            Some((4, None)),
            Some((3, Some("m1"))),
            None,
        ] {
            assert!(
                matches!(
                    decide(disk, &release, "w", "r", "volume:a"),
                    Err(StateError::Lease { .. })
                ),
                "{disk:?}"
            );
        }
        // Equal versions held by another appliance: never continued (the disk's
        // record may be a write whose compare-and-set failed).
        assert!(matches!(
            decide_w(Some(6), &at(6, "volume:b/w")),
            Err(StateError::MigratedAway { .. })
        ));
    }

    #[test]
    fn the_counter_never_wraps() {
        assert!(matches!(
            decide_w(Some(u64::MAX), &at(u64::MAX, "volume:a/w")),
            Err(StateError::Exhausted(_))
        ));
    }

    #[test]
    fn a_wipe_leaves_nothing_under_the_name_and_finishes_after_a_crash() {
        let root = std::env::temp_dir().join(format!("cvm-wipe-{}", std::process::id()));
        let dir = root.join("w");
        std::fs::create_dir_all(dir.join("files/a")).unwrap();
        std::fs::write(dir.join("files/a/f"), b"x").unwrap();
        wipe(&dir).unwrap();
        assert!(!dir.exists());
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        wipe(&dir).unwrap();
        // A rename that happened before a crash: finished at the next start.
        std::fs::create_dir_all(root.join(".wipe-w-1/files")).unwrap();
        finish_wipes(&root);
        assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
        std::fs::remove_dir_all(&root).unwrap();
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
            released: None,
        };
        write_record(&d, &r).unwrap();
        assert_eq!(read_record(&d).unwrap(), Some(r));
        std::fs::write(d.join(RECORD), b"{").unwrap();
        assert!(matches!(read_record(&d), Err(StateError::Corrupt { .. })));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
