//! A sealed snapshot of a workload's state: what a source appliance sends a destination
//! when it migrates the workload.
//!
//! ```text
//! snapshot = CBOR array [ "cvm-snapshot/1",
//!                         bstr header (JSON: workload, version, migration, counts, sha256),
//!                         bstr COSE_Encrypt0 (tag 16) -- the entries, AES-256-GCM ]
//! entries  = CBOR array of [ path (text, "/"-separated, relative), bstr contents | null (a folder) ]
//! ```
//!
//! The key is derived from the workload's state key and the migration's id, so only an
//! appliance the broker releases that state key to can open it, and a snapshot of one
//! migration cannot be replayed into another. The Encrypt0's external AAD is the
//! SHA-256 of the header, so a header cannot be swapped onto other contents; the header
//! also carries the SHA-256 of the entries, checked after decryption. Entries are
//! sorted by path, so equal states give equal plaintexts.

use std::path::{Component, Path};

use coset::{CoseEncrypt0, TaggedCborSerializable as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// The outer array's first element.
pub const FORMAT: &str = "cvm-snapshot/1";
/// Largest snapshot (the sum of its files).
pub const MAX_BYTES: u64 = 256 << 20;
/// Most entries (files and folders).
pub const MAX_ENTRIES: u64 = 1 << 20;

/// A snapshot that cannot be made or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    /// Not the format.
    #[error("snapshot is malformed: {0}")]
    Malformed(String),
    /// Larger than the limits.
    #[error("snapshot is over the limit: {0}")]
    TooLarge(String),
    /// The state holds something a snapshot does not carry.
    #[error("{0} is not a regular file or folder (links and devices are not carried)")]
    Unsupported(String),
    /// A path that would leave the state folder.
    #[error("snapshot path {0:?} is not a plain relative path")]
    BadPath(String),
    /// Decryption failed: another key, another migration, or changed bytes.
    #[error("snapshot does not decrypt (another state key, another migration, or changed bytes)")]
    Decrypt,
    /// The decrypted entries are not the ones the header describes.
    #[error("snapshot contents have sha256 {actual}, not the header's {expected}")]
    Digest {
        /// The header's.
        expected: String,
        /// The decrypted entries'.
        actual: String,
    },
    /// A file operation failed.
    #[error("{0}")]
    Io(String),
}

fn io(op: &str, p: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let what = format!("{op} {}", p.display());
    move |e| SnapshotError::Io(format!("{what}: {e}"))
}

/// What a snapshot says about itself, readable before it is decrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// The workload.
    pub workload: String,
    /// The state version the source released.
    pub version: u64,
    /// The migration's id.
    pub migration: String,
    /// Entries.
    pub entries: u64,
    /// Bytes of file contents.
    pub bytes: u64,
    /// SHA-256 of the CBOR entries, hex.
    pub sha256: String,
}

/// One file (contents) or folder (`None`), by its relative path.
pub type Entry = (String, Option<Vec<u8>>);

/// Read the state folder `dir` into sorted entries. Links, devices and other special
/// files are refused, never skipped: a snapshot carries all of the state or nothing.
pub fn collect(dir: &Path) -> Result<Vec<Entry>, SnapshotError> {
    fn walk(
        root: &Path,
        dir: &Path,
        out: &mut Vec<Entry>,
        bytes: &mut u64,
    ) -> Result<(), SnapshotError> {
        for e in std::fs::read_dir(dir).map_err(io("list", dir))? {
            let e = e.map_err(io("list", dir))?;
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .map_err(|_| SnapshotError::BadPath(path.display().to_string()))?
                .to_str()
                .ok_or_else(|| SnapshotError::BadPath(path.display().to_string()))?
                .to_owned();
            let kind = e.file_type().map_err(io("stat", &path))?;
            if kind.is_dir() {
                out.push((rel, None));
                walk(root, &path, out, bytes)?;
            } else if kind.is_file() {
                let data = std::fs::read(&path).map_err(io("read", &path))?;
                *bytes += data.len() as u64;
                if *bytes > MAX_BYTES {
                    return Err(SnapshotError::TooLarge(format!("over {MAX_BYTES} bytes")));
                }
                out.push((rel, Some(data)));
            } else {
                return Err(SnapshotError::Unsupported(rel));
            }
            if out.len() as u64 > MAX_ENTRIES {
                return Err(SnapshotError::TooLarge(format!(
                    "over {MAX_ENTRIES} entries"
                )));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out, &mut 0)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A relative path of normal components only.
fn check_path(p: &str) -> Result<(), SnapshotError> {
    let plain = !p.is_empty()
        && Path::new(p)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if plain {
        Ok(())
    } else {
        Err(SnapshotError::BadPath(p.to_owned()))
    }
}

fn encode_entries(entries: &[Entry]) -> Result<Zeroizing<Vec<u8>>, SnapshotError> {
    let value = ciborium::Value::Array(
        entries
            .iter()
            .map(|(p, d)| {
                ciborium::Value::Array(vec![
                    ciborium::Value::Text(p.clone()),
                    match d {
                        Some(b) => ciborium::Value::Bytes(b.clone()),
                        None => ciborium::Value::Null,
                    },
                ])
            })
            .collect(),
    );
    let mut out = Zeroizing::new(Vec::new());
    ciborium::into_writer(&value, &mut *out)
        .map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    Ok(out)
}

fn decode_entries(bytes: &[u8]) -> Result<Vec<Entry>, SnapshotError> {
    let bad = |m: &str| SnapshotError::Malformed(m.to_owned());
    let value: ciborium::Value =
        ciborium::from_reader(bytes).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    let ciborium::Value::Array(items) = value else {
        return Err(bad("entries are not an array"));
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let ciborium::Value::Array(pair) = item else {
            return Err(bad("an entry is not a pair"));
        };
        let mut pair = pair.into_iter();
        let (Some(ciborium::Value::Text(path)), Some(data), None) =
            (pair.next(), pair.next(), pair.next())
        else {
            return Err(bad("an entry is not [path, contents]"));
        };
        check_path(&path)?;
        let data = match data {
            ciborium::Value::Bytes(b) => Some(b),
            ciborium::Value::Null => None,
            _ => return Err(bad("contents are neither bytes nor null")),
        };
        out.push((path, data));
    }
    Ok(out)
}

/// The AES-256-GCM key of the snapshot of migration `migration` under `state_key`.
pub fn key(state_key: &[u8], migration: &str) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(b"cvm snapshot v1\0");
    h.update(migration.as_bytes());
    h.update([0]);
    h.update(state_key);
    Zeroizing::new(h.finalize().into())
}

/// Seal `entries` of `workload` at state `version` for migration `migration`.
pub fn seal(
    workload: &str,
    version: u64,
    migration: &str,
    entries: &[Entry],
    state_key: &[u8],
) -> Result<Vec<u8>, SnapshotError> {
    use aes_gcm::KeyInit as _;
    for (p, _) in entries {
        check_path(p)?;
    }
    let plain = encode_entries(entries)?;
    let header = Header {
        workload: workload.to_owned(),
        version,
        migration: migration.to_owned(),
        entries: entries.len() as u64,
        bytes: entries
            .iter()
            .filter_map(|e| e.1.as_ref())
            .map(|d| d.len() as u64)
            .sum(),
        sha256: hex::encode(Sha256::digest(&*plain)),
    };
    let header_bytes =
        serde_json::to_vec(&header).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&*key(state_key, migration))
        .map_err(|_| SnapshotError::Decrypt)?;
    let aad = Sha256::digest(&header_bytes);
    let encrypt0 = crate::cose::seal(&cipher, &plain, &aad).ok_or(SnapshotError::Decrypt)?;
    let outer = ciborium::Value::Array(vec![
        ciborium::Value::Text(FORMAT.to_owned()),
        ciborium::Value::Bytes(header_bytes),
        ciborium::Value::Bytes(
            encrypt0
                .to_tagged_vec()
                .map_err(|e| SnapshotError::Malformed(e.to_string()))?,
        ),
    ]);
    let mut out = Vec::new();
    ciborium::into_writer(&outer, &mut out).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    Ok(out)
}

/// A snapshot whose structure parsed: its header can be read, nothing is trusted yet.
#[derive(Debug, Clone)]
pub struct Parsed {
    /// The header (unauthenticated until [`Parsed::open`] succeeds).
    pub header: Header,
    header_bytes: Vec<u8>,
    encrypt0: CoseEncrypt0,
}

/// Parse a snapshot's structure.
pub fn parse(bytes: &[u8]) -> Result<Parsed, SnapshotError> {
    let bad = |m: &str| SnapshotError::Malformed(m.to_owned());
    let value: ciborium::Value =
        ciborium::from_reader(bytes).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    let ciborium::Value::Array(parts) = value else {
        return Err(bad("not a CBOR array"));
    };
    let mut parts = parts.into_iter();
    let (
        Some(ciborium::Value::Text(format)),
        Some(ciborium::Value::Bytes(header_bytes)),
        Some(ciborium::Value::Bytes(encrypt0)),
        None,
    ) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not [format, header, ciphertext]"));
    };
    if format != FORMAT {
        return Err(SnapshotError::Malformed(format!(
            "format {format:?} is not {FORMAT:?}"
        )));
    }
    let header: Header = serde_json::from_slice(&header_bytes)
        .map_err(|e| SnapshotError::Malformed(format!("header: {e}")))?;
    if header.bytes > MAX_BYTES || header.entries > MAX_ENTRIES {
        return Err(SnapshotError::TooLarge(format!(
            "{} entries, {} bytes",
            header.entries, header.bytes
        )));
    }
    let encrypt0 = CoseEncrypt0::from_tagged_slice(&encrypt0)
        .map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    Ok(Parsed {
        header,
        header_bytes,
        encrypt0,
    })
}

impl Parsed {
    /// Decrypt with the state key and check the entries against the header.
    pub fn open(&self, state_key: &[u8]) -> Result<Vec<Entry>, SnapshotError> {
        let aad = Sha256::digest(&self.header_bytes);
        let plain = crate::cose::open(
            &self.encrypt0,
            &*key(state_key, &self.header.migration),
            &aad,
        )
        .map(Zeroizing::new)
        .map_err(|e| match e {
            crate::cose::OpenError::Algorithm(_) => SnapshotError::Malformed("not A256GCM".into()),
            crate::cose::OpenError::Iv => SnapshotError::Malformed("IV is not 12 bytes".into()),
            crate::cose::OpenError::KeyLength(_) | crate::cose::OpenError::Decrypt => {
                SnapshotError::Decrypt
            }
        })?;
        let actual = hex::encode(Sha256::digest(&*plain));
        if actual != self.header.sha256 {
            return Err(SnapshotError::Digest {
                expected: self.header.sha256.clone(),
                actual,
            });
        }
        let entries = decode_entries(&plain)?;
        if entries.len() as u64 != self.header.entries {
            return Err(SnapshotError::Malformed(format!(
                "{} entries, the header says {}",
                entries.len(),
                self.header.entries
            )));
        }
        Ok(entries)
    }
}

/// Write `entries` under the empty folder `dir`. Nothing is synced: the caller makes
/// the whole file system durable at once (thousands of small files, one sync) before
/// it relies on them.
pub fn write_into(entries: &[Entry], dir: &Path) -> Result<(), SnapshotError> {
    use std::io::Write as _;
    for (rel, data) in entries {
        check_path(rel)?;
        let path = dir.join(rel);
        match data {
            None => std::fs::create_dir_all(&path).map_err(io("create", &path))?,
            Some(bytes) => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(io("create", parent))?;
                }
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .and_then(|mut f| f.write_all(bytes))
                    .map_err(io("write", &path))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(root: &Path) {
        std::fs::create_dir_all(root.join("data/badges")).unwrap();
        std::fs::create_dir_all(root.join("data/empty")).unwrap();
        std::fs::write(root.join("data/head.json"), b"{\"version\":4}").unwrap();
        std::fs::write(root.join("data/badges/B000001.json"), b"{}").unwrap();
        std::fs::write(root.join("data/zero"), b"").unwrap();
    }

    #[test]
    fn a_state_round_trips_and_equal_states_seal_equal_contents() {
        let a = tempfile::tempdir().unwrap();
        tree(a.path());
        let entries = collect(a.path()).unwrap();
        assert_eq!(entries.len(), 6);
        assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
        let key = [7u8; 32];
        let sealed = seal("badge", 4, "m1", &entries, &key).unwrap();
        let parsed = parse(&sealed).unwrap();
        assert_eq!(
            (parsed.header.workload.as_str(), parsed.header.version),
            ("badge", 4)
        );
        let opened = parsed.open(&key).unwrap();
        assert_eq!(opened, entries);
        let b = tempfile::tempdir().unwrap();
        let dest = b.path().join("files");
        std::fs::create_dir(&dest).unwrap();
        write_into(&opened, &dest).unwrap();
        assert_eq!(collect(&dest).unwrap(), entries);
        // Another sealing of the same state: other IV, same header digest.
        let again = parse(&seal("badge", 4, "m1", &entries, &key).unwrap()).unwrap();
        assert_eq!(again.header, parsed.header);
    }

    #[test]
    fn tampered_twins_are_refused_by_name() {
        let a = tempfile::tempdir().unwrap();
        tree(a.path());
        let entries = collect(a.path()).unwrap();
        let key = [7u8; 32];
        let sealed = seal("badge", 4, "m1", &entries, &key).unwrap();
        // Another state key, or the key of another migration.
        assert_eq!(
            parse(&sealed).unwrap().open(&[8u8; 32]).unwrap_err(),
            SnapshotError::Decrypt
        );
        // A changed ciphertext byte (the last byte is the GCM tag's).
        let mut bent = sealed.clone();
        let last = bent.len() - 1;
        bent[last] ^= 1;
        assert_eq!(
            parse(&bent).unwrap().open(&key).unwrap_err(),
            SnapshotError::Decrypt
        );
        // A header swapped in from another snapshot (the AAD binds the header).
        let other = seal("badge", 9, "m1", &entries, &key).unwrap();
        let mut swapped = parse(&sealed).unwrap();
        let donor = parse(&other).unwrap();
        swapped.header = donor.header.clone();
        swapped.header_bytes = donor.header_bytes.clone();
        assert_eq!(swapped.open(&key).unwrap_err(), SnapshotError::Decrypt);
        // Not a snapshot.
        assert!(matches!(parse(b"\x80"), Err(SnapshotError::Malformed(_))));
        // A path that leaves the folder, sealed or written.
        let evil = vec![("../x".to_owned(), Some(b"x".to_vec()))];
        assert!(matches!(
            seal("badge", 1, "m", &evil, &key),
            Err(SnapshotError::BadPath(_))
        ));
        assert!(matches!(
            write_into(&evil, a.path()),
            Err(SnapshotError::BadPath(_))
        ));
    }

    #[test]
    fn links_are_refused_not_skipped() {
        let a = tempfile::tempdir().unwrap();
        tree(a.path());
        std::os::unix::fs::symlink("/etc/passwd", a.path().join("data/link")).unwrap();
        assert_eq!(
            collect(a.path()).unwrap_err(),
            SnapshotError::Unsupported("data/link".into())
        );
    }
}
