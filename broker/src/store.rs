//! The broker's store: resources (`resources/<repository>/<type>/<tag>`), counters
//! (`counters/<repository>/<type>/<tag>`, JSON) and named documents (reference values,
//! the resource policy) as files under one folder.
//!
//! Every write goes to a temporary file in the same folder, is fsynced, renamed over
//! the target and the folder fsynced: a crash leaves either the old or the new content,
//! never a torn file. Temporary files a crash left behind are removed when the store is
//! opened. Paths come only from validated [`ResourcePath`]s and fixed document names,
//! so nothing outside the folder is ever touched.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cvm_kbs_client::counter::Counter;

use crate::resource_path::ResourcePath;

/// Largest resource (a key or a small secret).
pub const MAX_RESOURCE: usize = 1 << 20;
/// Largest document (reference values, a policy).
pub const MAX_DOCUMENT: usize = 4 << 20;
/// Largest stored counter (a number and a short holder label).
const MAX_COUNTER: usize = 4 << 10;
/// Marks a temporary file: never a valid resource-path part (`~` is not allowed there).
const TEMP_MARK: &str = "~tmp~";

/// The documents the broker keeps besides resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Document {
    /// Reference values (JSON from `cvm measure`).
    ReferenceValues,
    /// The resource policy (Rego).
    ResourcePolicy,
}

impl Document {
    fn file(self) -> &'static str {
        match self {
            Document::ReferenceValues => "reference-values.json",
            Document::ResourcePolicy => "resource-policy.rego",
        }
    }
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Too large.
    #[error("{what} of {size} bytes is larger than the limit of {limit}")]
    TooLarge {
        /// What was written.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A stored file does not parse.
    #[error("store: {path} is corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A file operation failed.
    #[error("store: {op} {path} failed")]
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

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StoreError {
    let path = path.to_owned();
    move |source| StoreError::Io { op, path, source }
}

/// The store under one folder.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    next_temp: AtomicU64,
}

impl Store {
    /// Open (creating) the store at `root`, removing temporary files a crash left.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        fs::create_dir_all(root.join("resources")).map_err(io("create", root))?;
        let store = Self {
            root: root.to_owned(),
            next_temp: AtomicU64::new(0),
        };
        store.remove_stale(root)?;
        Ok(store)
    }

    fn remove_stale(&self, dir: &Path) -> Result<(), StoreError> {
        for entry in fs::read_dir(dir).map_err(io("list", dir))? {
            let entry = entry.map_err(io("list", dir))?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(io("stat", &path))?;
            if file_type.is_dir() {
                self.remove_stale(&path)?;
            } else if entry.file_name().to_string_lossy().contains(TEMP_MARK) {
                fs::remove_file(&path).map_err(io("remove stale", &path))?;
            }
        }
        Ok(())
    }

    fn counter_file(&self, path: &ResourcePath) -> PathBuf {
        let [repo, kind, tag] = path.parts();
        self.root.join("counters").join(repo).join(kind).join(tag)
    }

    /// A counter (value 0 and no holder if never written). A stored counter that does
    /// not parse is an error, never a silent 0 (that would undo rollback protection).
    pub fn get_counter(&self, path: &ResourcePath) -> Result<Counter, StoreError> {
        let file = self.counter_file(path);
        match self.read(&file, MAX_COUNTER)? {
            None => Ok(Counter::default()),
            Some(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
                path: file,
                reason: e.to_string(),
            }),
        }
    }

    /// Write a counter (the caller has compared and holds the lock).
    pub fn put_counter(&self, path: &ResourcePath, counter: &Counter) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(counter).map_err(|e| StoreError::Corrupt {
            path: self.counter_file(path),
            reason: e.to_string(),
        })?;
        self.write_atomic(&self.counter_file(path), &bytes)
    }

    fn resource_file(&self, path: &ResourcePath) -> PathBuf {
        let [repo, kind, tag] = path.parts();
        self.root.join("resources").join(repo).join(kind).join(tag)
    }

    /// Write `bytes` to `target` atomically and durably.
    fn write_atomic(&self, target: &Path, bytes: &[u8]) -> Result<(), StoreError> {
        let dir = target.parent().unwrap_or(&self.root);
        fs::create_dir_all(dir).map_err(io("create", dir))?;
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let temp = dir.join(format!(
            "{name}{TEMP_MARK}{}-{}",
            std::process::id(),
            self.next_temp.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&temp)
                .map_err(io("create", &temp))?;
            f.write_all(bytes).map_err(io("write", &temp))?;
            f.sync_all().map_err(io("fsync", &temp))?;
            fs::rename(&temp, target).map_err(io("rename", target))?;
            sync_dir(dir)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result
    }

    fn read(&self, file: &Path, limit: usize) -> Result<Option<Vec<u8>>, StoreError> {
        match fs::read(file) {
            Ok(b) if b.len() > limit => Err(StoreError::TooLarge {
                what: "stored file",
                size: b.len(),
                limit,
            }),
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("read", file)(e)),
        }
    }

    /// Store a resource, replacing any previous value.
    pub fn put_resource(&self, path: &ResourcePath, bytes: &[u8]) -> Result<(), StoreError> {
        if bytes.len() > MAX_RESOURCE {
            return Err(StoreError::TooLarge {
                what: "resource",
                size: bytes.len(),
                limit: MAX_RESOURCE,
            });
        }
        self.write_atomic(&self.resource_file(path), bytes)
    }

    /// A resource, if stored.
    pub fn get_resource(&self, path: &ResourcePath) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(&self.resource_file(path), MAX_RESOURCE)
    }

    /// Remove a resource; whether it existed.
    pub fn remove_resource(&self, path: &ResourcePath) -> Result<bool, StoreError> {
        let file = self.resource_file(path);
        match fs::remove_file(&file) {
            Ok(()) => {
                sync_dir(file.parent().unwrap_or(&self.root))?;
                Ok(true)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io("remove", &file)(e)),
        }
    }

    /// Store a document, replacing any previous version.
    pub fn put_document(&self, doc: Document, bytes: &[u8]) -> Result<(), StoreError> {
        if bytes.len() > MAX_DOCUMENT {
            return Err(StoreError::TooLarge {
                what: doc.file(),
                size: bytes.len(),
                limit: MAX_DOCUMENT,
            });
        }
        self.write_atomic(&self.root.join(doc.file()), bytes)
    }

    /// A document, if stored.
    pub fn get_document(&self, doc: Document) -> Result<Option<Vec<u8>>, StoreError> {
        self.read(&self.root.join(doc.file()), MAX_DOCUMENT)
    }
}

/// fsync a folder so a rename or unlink in it is durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}
