//! The records on disk, changed only through a write-ahead entry, so that a crash or a
//! power-off at any point loses no acknowledged change and leaves no half-applied one.
//!
//! Layout under the root (the workload's `/data`, on the appliance's encrypted volume):
//! - `head.json` — `{version, next_badge, audit_len}`: the last applied change, the next
//!   badge number, and the length of the audit trail that change left.
//! - `badges/17.json` — a bucket: the current records of badges numbered 17 × 128 to
//!   18 × 128 − 1, in id order. A few dozen files for a few thousand badges rather than
//!   one each: a migration or a backup copies the state file by file, and on an
//!   appliance every file costs more than its bytes (encryption context, metadata,
//!   a wipe when the copy moves away), while a request reads one bucket of ≈ 30 KiB.
//! - `employees/0a.json` — a bucket of the index from an employee's id to their open
//!   (pending or approved) badge; the bucket is the first byte of the id's sha256
//!   modulo [`INDEX_BUCKETS`].
//! - `audit.jsonl` — the audit trail: one line per change, with the records it wrote.
//! - `pending.json` — the change being applied, present only until it is.
//!
//! A change is committed in this order: `pending.json` is written in full, synced and
//! renamed into place (the commit point); the audit trail is cut back to `audit_len`
//! (dropping whatever a crashed attempt appended), the entry appended and synced; each
//! bucket the change touches is read, updated and written to a new file, the new files
//! are synced (the first sync's journal commit carries most of the data, so the rest are
//! cheap) and renamed over the old ones; `head.json` is replaced (a new file, synced,
//! renamed over the old one); `pending.json` is removed. Until then `pending.json`
//! holds the whole change, and any request first finishes a change left pending:
//! applying an entry's records to a bucket that already holds them changes nothing, so
//! every step may be repeated, and each bucket is either the old file or the new.
//!
//! Records written by the layout before buckets (`badges/B000001.json`,
//! `employees/E000042`) are moved into buckets when the store is opened.
//!
//! Concurrent changes are not coordinated here: the policy serves one request at a time
//! (`http.concurrency: 1`).

use std::collections::BTreeMap;
use std::collections::btree_map::Entry as Slot;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::model::{Badge, Role, Status};

/// Badges per bucket file.
pub const BUCKET: u64 = 128;
/// Buckets of the employee index.
pub const INDEX_BUCKETS: u8 = 16;

/// The number in a badge id (`B000042` → 42).
fn badge_number(id: &str) -> Option<u64> {
    if !crate::model::valid_badge_id(id) {
        return None;
    }
    id[1..].parse().ok()
}

fn index_bucket_of(employee_id: &str) -> u8 {
    Sha256::digest(employee_id.as_bytes())[0] % INDEX_BUCKETS
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError(e.to_string()))
}

/// What an audit entry did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// An employee requested a badge.
    Request,
    /// A manager approved it.
    Approve,
    /// A manager rejected it.
    Reject,
    /// Security revoked it.
    Revoke,
    /// Security imported badge records in bulk.
    Import,
}

/// One change: a line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// The version this change creates (1, 2, …).
    pub seq: u64,
    /// When (seconds since the epoch).
    pub at: u64,
    /// Who (the caller token's `sub`).
    pub actor: String,
    /// In which role.
    pub role: Role,
    /// What.
    pub action: Action,
    /// The records as the change left them.
    pub badges: Vec<Badge>,
    /// The next badge number after the change.
    pub next_badge: u64,
}

/// `head.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// The last applied change's `seq` (0: none).
    pub version: u64,
    /// The next badge number.
    pub next_badge: u64,
    /// Bytes of `audit.jsonl` that hold applied changes.
    pub audit_len: u64,
}

/// The records could not be read or written.
#[derive(Debug)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError(format!("{what} {}: {e}", path.display()))
}

/// The records under one folder.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// What `GET /state` reports: enough to compare two copies of the records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// The last applied change.
    pub version: u64,
    /// Badges by status.
    pub pending: u64,
    /// Approved (active) badges.
    pub approved: u64,
    /// Rejected badges.
    pub rejected: u64,
    /// Revoked badges.
    pub revoked: u64,
    /// sha256 over every badge record (in id order) and the audit trail.
    pub sha256: String,
}

impl Store {
    /// The records under `root`, with any change a crash left pending finished.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let store = Self { root: root.into() };
        for dir in ["badges", "employees"] {
            let p = store.root.join(dir);
            fs::create_dir_all(&p).map_err(|e| io("create", &p, e))?;
        }
        // Before a pending change is finished: that change is newer than any record
        // the old layout holds.
        store.adopt_old_layout()?;
        store.recover()?;
        Ok(store)
    }

    /// Move records of the layout before buckets (`badges/B000001.json`, and the index
    /// `employees/E000042`, rebuilt from the records) into buckets, then delete them.
    /// A crash midway leaves the old files, and doing it again writes the same buckets.
    fn adopt_old_layout(&self) -> Result<(), StoreError> {
        let list = |dir: &str, old: fn(&str) -> bool| -> Result<Vec<PathBuf>, StoreError> {
            let p = self.path(dir);
            let mut out = Vec::new();
            for e in fs::read_dir(&p).map_err(|e| io("list", &p, e))? {
                let e = e.map_err(|e| io("list", &p, e))?;
                if e.file_name().to_str().is_some_and(old) {
                    out.push(e.path());
                }
            }
            out.sort();
            Ok(out)
        };
        let records = list("badges", |n| {
            n.strip_suffix(".json")
                .is_some_and(|id| badge_number(id).is_some())
        })?;
        let index = list("employees", crate::model::valid_employee_id)?;
        if records.is_empty() && index.is_empty() {
            return Ok(());
        }
        let mut badges = Vec::with_capacity(records.len());
        for p in &records {
            let b = fs::read(p).map_err(|e| io("read", p, e))?;
            badges.push(
                serde_json::from_slice::<Badge>(&b)
                    .map_err(|e| StoreError(format!("{} is corrupt: {e}", p.display())))?,
            );
        }
        self.write_records(&badges)?;
        for p in records.iter().chain(&index) {
            fs::remove_file(p).map_err(|e| io("remove", p, e))?;
        }
        self.sync_dir("badges")?;
        self.sync_dir("employees")
    }

    fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The applied state's head.
    pub fn head(&self) -> Result<Head, StoreError> {
        let p = self.path("head.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| StoreError(format!("{} is corrupt: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Head {
                next_badge: 1,
                ..Head::default()
            }),
            Err(e) => Err(io("read", &p, e)),
        }
    }

    /// A badge by id.
    pub fn badge(&self, id: &str) -> Result<Option<Badge>, StoreError> {
        let Some(number) = badge_number(id) else {
            return Ok(None);
        };
        Ok(self
            .bucket(number / BUCKET)?
            .into_iter()
            .find(|b| b.id == id))
    }

    /// The id of the employee's open badge, if any.
    pub fn open_badge_of(&self, employee_id: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .index_bucket(index_bucket_of(employee_id))?
            .remove(employee_id))
    }

    /// Badges in id order after the badge `after` (a valid id), at most `limit`.
    pub fn badges_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Badge>, StoreError> {
        let after = match after {
            None => None,
            Some(id) => match badge_number(id) {
                Some(n) => Some(n),
                // More digits than any badge number has: none comes after it.
                None if crate::model::valid_badge_id(id) => return Ok(Vec::new()),
                None => return Err(StoreError(format!("{id:?} is not a badge id"))),
            },
        };
        let mut out = Vec::new();
        for n in self.buckets()? {
            if after.is_some_and(|a| n < a / BUCKET) {
                continue;
            }
            for b in self.bucket(n)? {
                if after.is_none_or(|a| badge_number(&b.id).is_some_and(|x| x > a)) {
                    if out.len() == limit {
                        return Ok(out);
                    }
                    out.push(b);
                }
            }
        }
        Ok(out)
    }

    /// Every badge, in id order.
    pub fn all(&self) -> Result<Vec<Badge>, StoreError> {
        self.badges_after(None, usize::MAX)
    }

    /// The numbers of the badge buckets on disk, in order.
    fn buckets(&self) -> Result<Vec<u64>, StoreError> {
        let dir = self.path("badges");
        let mut out: Vec<u64> = fs::read_dir(&dir)
            .map_err(|e| io("list", &dir, e))?
            .filter_map(|e| {
                let name = e.ok()?.file_name().into_string().ok()?;
                let n = name.strip_suffix(".json")?;
                // Only the canonical spelling: `07.json` or a leftover `7.json.tmp`
                // is not a bucket.
                n.parse::<u64>().ok().filter(|v| v.to_string() == n)
            })
            .collect();
        out.sort_unstable();
        Ok(out)
    }

    /// The records in badge bucket `n` (none if it does not exist yet).
    fn bucket(&self, n: u64) -> Result<Vec<Badge>, StoreError> {
        self.read_json(&format!("badges/{n}.json"))
    }

    /// Index bucket `n`: employee id → open badge id.
    fn index_bucket(&self, n: u8) -> Result<BTreeMap<String, String>, StoreError> {
        self.read_json(&format!("employees/{n:02x}.json"))
    }

    /// `name` parsed, or the default if it does not exist.
    fn read_json<T: Default + serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<T, StoreError> {
        let p = self.path(name);
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| StoreError(format!("{} is corrupt: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(io("read", &p, e)),
        }
    }

    /// The audit trail's entries after `after`, at most `limit`, read line by line
    /// (the trail grows with every change; it is never read whole into memory).
    pub fn audit(&self, after: u64, limit: usize) -> Result<Vec<Entry>, StoreError> {
        use std::io::BufRead as _;
        let head = self.head()?;
        let mut out = Vec::new();
        for line in self.audit_reader(head.audit_len)?.split(b'\n') {
            let line = line.map_err(|e| io("read", &self.path("audit.jsonl"), e))?;
            if line.is_empty() {
                continue;
            }
            let e: Entry = serde_json::from_slice(&line)
                .map_err(|e| StoreError(format!("audit trail is corrupt: {e}")))?;
            if e.seq > after {
                out.push(e);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The applied part of the audit trail (its first `len` bytes); a trail shorter
    /// than that is an error, never padded or read as less.
    fn audit_reader(&self, len: u64) -> Result<Box<dyn std::io::BufRead>, StoreError> {
        use std::io::Read as _;
        let p = self.path("audit.jsonl");
        let f = match fs::File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && len == 0 => {
                return Ok(Box::new(std::io::empty()));
            }
            Err(e) => return Err(io("open", &p, e)),
        };
        let actual = f.metadata().map_err(|e| io("stat", &p, e))?.len();
        if actual < len {
            return Err(shorter(&p, actual, len));
        }
        Ok(Box::new(std::io::BufReader::new(f.take(len))))
    }

    /// Counts and a digest of the records and the audit trail.
    pub fn summary(&self) -> Result<Summary, StoreError> {
        let head = self.head()?;
        let mut h = Sha256::new();
        let mut s = Summary {
            version: head.version,
            pending: 0,
            approved: 0,
            rejected: 0,
            revoked: 0,
            sha256: String::new(),
        };
        for b in self.all()? {
            match b.status {
                Status::Pending => s.pending += 1,
                Status::Approved => s.approved += 1,
                Status::Rejected => s.rejected += 1,
                Status::Revoked => s.revoked += 1,
            }
            let line = to_json(&b)?;
            h.update(&line);
            h.update(b"\n");
        }
        let mut audit = self.audit_reader(head.audit_len)?;
        loop {
            let chunk = audit
                .fill_buf()
                .map_err(|e| io("read", &self.path("audit.jsonl"), e))?;
            if chunk.is_empty() {
                break;
            }
            h.update(chunk);
            let n = chunk.len();
            audit.consume(n);
        }
        s.sha256 = hex(&h.finalize());
        Ok(s)
    }

    /// Commit one change: durable when this returns.
    pub fn commit(&self, mut entry: Entry) -> Result<Entry, StoreError> {
        let head = self.head()?;
        entry.seq = head.version + 1;
        let bytes = to_json(&entry)?;
        self.replace("pending.json", &bytes)?;
        self.apply(&entry, head)?;
        Ok(entry)
    }

    /// Finish a change a crash left pending.
    fn recover(&self) -> Result<(), StoreError> {
        let p = self.path("pending.json");
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("read", &p, e)),
        };
        let entry: Entry = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError(format!("{} is corrupt: {e}", p.display())))?;
        let head = self.head()?;
        if entry.seq == head.version + 1 {
            self.apply(&entry, head)
        } else if entry.seq <= head.version {
            // Applied; only the removal was lost.
            fs::remove_file(&p).map_err(|e| io("remove", &p, e))
        } else {
            Err(StoreError(format!(
                "pending change {} does not follow version {}",
                entry.seq, head.version
            )))
        }
    }

    fn apply(&self, entry: &Entry, head: Head) -> Result<(), StoreError> {
        let audit = self.path("audit.jsonl");
        let mut line = to_json(entry)?;
        line.push(b'\n');
        let mut f = fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&audit)
            .map_err(|e| io("open", &audit, e))?;
        // Whatever a crashed attempt appended past the applied length goes; a trail
        // shorter than the head says is damage, refused rather than padded.
        let actual = f.metadata().map_err(|e| io("stat", &audit, e))?.len();
        if actual < head.audit_len {
            return Err(shorter(&audit, actual, head.audit_len));
        }
        f.set_len(head.audit_len)
            .and_then(|()| {
                use std::io::Seek as _;
                f.seek(std::io::SeekFrom::End(0))?;
                f.write_all(&line)?;
                f.sync_all()
            })
            .map_err(|e| io("append to", &audit, e))?;
        self.write_records(&entry.badges)?;
        let new_head = Head {
            version: entry.seq,
            next_badge: entry.next_badge,
            audit_len: head.audit_len + line.len() as u64,
        };
        let bytes = to_json(&new_head)?;
        self.replace("head.json", &bytes)?;
        let p = self.path("pending.json");
        fs::remove_file(&p).map_err(|e| io("remove", &p, e))?;
        self.sync_dir("")
    }

    /// Put `badges` (in order; a later record of the same badge wins) into their
    /// buckets and the employee index: each touched bucket is written to a new file,
    /// all of them synced, then renamed over the old ones. Repeating it changes nothing.
    fn write_records(&self, badges: &[Badge]) -> Result<(), StoreError> {
        let mut buckets: BTreeMap<u64, Vec<Badge>> = BTreeMap::new();
        let mut index: BTreeMap<u8, BTreeMap<String, String>> = BTreeMap::new();
        for b in badges {
            let number = badge_number(&b.id)
                .ok_or_else(|| StoreError(format!("{:?} is not a badge id", b.id)))?;
            let n = number / BUCKET;
            let bucket = match buckets.entry(n) {
                Slot::Occupied(e) => e.into_mut(),
                Slot::Vacant(e) => e.insert(self.bucket(n)?),
            };
            match bucket.binary_search_by_key(&number, |x| badge_number(&x.id).unwrap_or(0)) {
                Ok(i) => bucket[i] = b.clone(),
                Err(i) => bucket.insert(i, b.clone()),
            }
            let k = index_bucket_of(&b.employee_id);
            let map = match index.entry(k) {
                Slot::Occupied(e) => e.into_mut(),
                Slot::Vacant(e) => e.insert(self.index_bucket(k)?),
            };
            if b.status.is_open() {
                map.insert(b.employee_id.clone(), b.id.clone());
            } else if map.get(&b.employee_id) == Some(&b.id) {
                map.remove(&b.employee_id);
            }
        }
        let mut files = Vec::with_capacity(buckets.len() + index.len());
        for (n, records) in &buckets {
            files.push((format!("badges/{n}.json"), to_json(records)?));
        }
        for (k, map) in &index {
            files.push((format!("employees/{k:02x}.json"), to_json(map)?));
        }
        self.replace_all(&files)?;
        self.sync_dir("badges")?;
        self.sync_dir("employees")
    }

    /// Replace each `(name, bytes)`: every new file is written, then all are synced,
    /// then renamed into place (a crash leaves each file old or new, never torn).
    fn replace_all(&self, files: &[(String, impl AsRef<[u8]>)]) -> Result<(), StoreError> {
        let mut tmps = Vec::with_capacity(files.len());
        for (name, bytes) in files {
            let tmp = self.path(&format!("{name}.tmp"));
            fs::write(&tmp, bytes.as_ref()).map_err(|e| io("write", &tmp, e))?;
            tmps.push(tmp);
        }
        for tmp in &tmps {
            fs::File::open(tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| io("sync", tmp, e))?;
        }
        for ((name, _), tmp) in files.iter().zip(&tmps) {
            let p = self.path(name);
            fs::rename(tmp, &p).map_err(|e| io("rename into", &p, e))?;
        }
        Ok(())
    }

    /// Replace `name` with `bytes`: a new file, synced, renamed over the old one.
    fn replace(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.replace_all(&[(name.to_owned(), bytes)])?;
        let parent = Path::new(name)
            .parent()
            .and_then(Path::to_str)
            .unwrap_or("");
        self.sync_dir(parent)
    }

    /// Make renames in a folder durable. Where the platform cannot sync a folder
    /// (some WASI hosts), ext4's ordering of a rename after the synced data it names
    /// still holds.
    fn sync_dir(&self, name: &str) -> Result<(), StoreError> {
        let p = self.root.join(name);
        match fs::File::open(&p).and_then(|d| d.sync_all()) {
            Ok(()) => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Unsupported
                        | std::io::ErrorKind::PermissionDenied
                        | std::io::ErrorKind::IsADirectory
                        | std::io::ErrorKind::InvalidInput
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(io("sync", &p, e)),
        }
    }
}

fn shorter(p: &Path, actual: u64, len: u64) -> StoreError {
    StoreError(format!(
        "audit trail {} is shorter ({actual} bytes) than its head says ({len})",
        p.display()
    ))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
