//! A deterministic newc (`070701`) cpio writer, the format the kernel unpacks into its
//! initramfs.
//!
//! Determinism: entries are written in byte order of their paths, parents before
//! children; every entry has uid/gid 0, the same mtime, inode numbers counted from 1 in
//! that order, and no host metadata at all.

use std::collections::BTreeMap;

/// One entry of the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A directory with permission bits `mode`.
    Dir {
        /// Permission bits.
        mode: u32,
    },
    /// A regular file.
    File {
        /// Permission bits.
        mode: u32,
        /// Contents.
        data: Vec<u8>,
    },
    /// A character device node.
    CharDev {
        /// Permission bits.
        mode: u32,
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;

/// An archive under construction: paths are relative, without a leading `/`.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

/// A path that cannot go into the archive.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpioError {
    /// Empty, `.`/`..` components, or a NUL.
    #[error("initramfs path {0:?} is not a clean absolute path")]
    BadPath(String),
    /// Two different entries for one path.
    #[error("initramfs path {0} is added twice with different contents")]
    Conflict(String),
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add `entry` at absolute `path`, creating parent directories (mode 0755).
    pub fn add(&mut self, path: &str, entry: Entry) -> Result<(), CpioError> {
        let rel = clean(path)?;
        let mut parent = String::new();
        let components: Vec<&str> = rel.split('/').collect();
        for c in &components[..components.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            self.entries
                .entry(parent.clone())
                .or_insert(Entry::Dir { mode: 0o755 });
        }
        match self.entries.get(&rel) {
            Some(existing) if *existing != entry => {
                // A directory implied by a child may be declared explicitly later.
                if matches!((existing, &entry), (Entry::Dir { .. }, Entry::Dir { .. })) {
                    self.entries.insert(rel, entry);
                    return Ok(());
                }
                Err(CpioError::Conflict(path.to_owned()))
            }
            _ => {
                self.entries.insert(rel, entry);
                Ok(())
            }
        }
    }

    /// The entries, in archive order.
    pub fn entries(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    /// Serialise with every mtime set to `mtime`.
    pub fn to_bytes(&self, mtime: u64) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (path, entry)) in self.entries.iter().enumerate() {
            let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir { mode } => (S_IFDIR | mode, 2, &[], (0, 0)),
                Entry::File { mode, data } => (S_IFREG | mode, 1, data, (0, 0)),
                Entry::CharDev { mode, major, minor } => (S_IFCHR | mode, 1, &[], (*major, *minor)),
            };
            write_entry(
                &mut out,
                ino as u32 + 1,
                mode,
                nlink,
                mtime,
                path,
                data,
                rdev,
            );
        }
        write_entry(&mut out, 0, 0, 1, 0, "TRAILER!!!", &[], (0, 0));
        out
    }
}

fn clean(path: &str) -> Result<String, CpioError> {
    let bad = || CpioError::BadPath(path.to_owned());
    let rel = path.strip_prefix('/').ok_or_else(bad)?;
    if rel.is_empty()
        || rel.contains('\0')
        || rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(bad());
    }
    Ok(rel.to_owned())
}

#[allow(clippy::too_many_arguments)]
fn write_entry(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u64,
    name: &str,
    data: &[u8],
    rdev: (u32, u32),
) {
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        mtime as u32,
        data.len() as u32,
        0, // devmajor
        0, // devminor
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// An archive that does not parse as newc.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpioReadError {
    /// The bytes end inside an entry.
    #[error("initramfs archive truncated at byte {0}")]
    Truncated(usize),
    /// Not a newc header.
    #[error("initramfs archive: no newc header at byte {0}")]
    Magic(usize),
    /// A header field is not hex or a name is not UTF-8.
    #[error("initramfs archive: malformed header at byte {0}")]
    Header(usize),
}

/// The regular files of a newc archive, by absolute path (later entries win, as when
/// the kernel unpacks). Untrusted bytes: never panics.
pub fn read_files(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, CpioReadError> {
    let mut files = BTreeMap::new();
    let mut at = 0usize;
    let align = |n: usize| n.div_ceil(4) * 4;
    loop {
        let header = bytes
            .get(at..at + 110)
            .ok_or(CpioReadError::Truncated(at))?;
        if &header[..6] != b"070701" {
            return Err(CpioReadError::Magic(at));
        }
        let field = |i: usize| -> Result<usize, CpioReadError> {
            let hex = std::str::from_utf8(&header[6 + i * 8..14 + i * 8])
                .map_err(|_| CpioReadError::Header(at))?;
            usize::from_str_radix(hex, 16).map_err(|_| CpioReadError::Header(at))
        };
        let mode = field(1)?;
        let filesize = field(6)?;
        let namesize = field(11)?;
        let name_end = at
            .checked_add(110 + namesize)
            .ok_or(CpioReadError::Header(at))?;
        let name = bytes
            .get(at + 110..name_end)
            .ok_or(CpioReadError::Truncated(at))?;
        let name = name.strip_suffix(&[0]).ok_or(CpioReadError::Header(at))?;
        let name = std::str::from_utf8(name).map_err(|_| CpioReadError::Header(at))?;
        let data_start = align(name_end);
        let data_end = data_start
            .checked_add(filesize)
            .ok_or(CpioReadError::Header(at))?;
        let data = bytes
            .get(data_start..data_end)
            .ok_or(CpioReadError::Truncated(data_start))?;
        if name == "TRAILER!!!" {
            return Ok(files);
        }
        if mode as u32 & 0o170000 == S_IFREG {
            files.insert(format!("/{}", name.trim_start_matches('/')), data.to_vec());
        }
        at = align(data_end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Archive {
        let mut a = Archive::new();
        a.add(
            "/usr/bin/x",
            Entry::File {
                mode: 0o755,
                data: b"hello".to_vec(),
            },
        )
        .unwrap();
        a.add(
            "/dev/console",
            Entry::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        )
        .unwrap();
        a.add(
            "/init",
            Entry::File {
                mode: 0o755,
                data: vec![1, 2, 3],
            },
        )
        .unwrap();
        a
    }

    #[test]
    fn parents_are_created_and_order_is_sorted() {
        let archive = sample();
        let names: Vec<&String> = archive.entries.keys().collect();
        assert_eq!(
            names,
            ["dev", "dev/console", "init", "usr", "usr/bin", "usr/bin/x"]
        );
    }

    #[test]
    fn same_input_same_bytes_whatever_the_insertion_order() {
        let mut b = Archive::new();
        b.add(
            "/init",
            Entry::File {
                mode: 0o755,
                data: vec![1, 2, 3],
            },
        )
        .unwrap();
        b.add(
            "/dev/console",
            Entry::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        )
        .unwrap();
        b.add(
            "/usr/bin/x",
            Entry::File {
                mode: 0o755,
                data: b"hello".to_vec(),
            },
        )
        .unwrap();
        assert_eq!(sample().to_bytes(7), b.to_bytes(7));
        assert_ne!(sample().to_bytes(7), sample().to_bytes(8));
    }

    #[test]
    fn header_layout_is_newc() {
        let bytes = sample().to_bytes(0x5f5e100);
        assert_eq!(&bytes[..6], b"070701");
        // First entry is "dev": a directory with nlink 2, namesize 4.
        let field = |i: usize| {
            u32::from_str_radix(
                std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).unwrap(),
                16,
            )
            .unwrap()
        };
        assert_eq!(field(0), 1);
        assert_eq!(field(1), S_IFDIR | 0o755);
        assert_eq!(field(5), 0x5f5e100);
        assert_eq!(field(11), 4);
        assert_eq!(&bytes[110..114], b"dev\0");
        assert_eq!(bytes.len() % 4, 0);
        let tail = String::from_utf8_lossy(&bytes[bytes.len() - 128..]);
        assert!(tail.contains("TRAILER!!!"));
    }

    #[test]
    fn bad_paths_and_conflicts_are_refused() {
        let mut a = sample();
        for p in ["relative", "/", "/a/../b", "/a//b"] {
            assert_eq!(
                a.add(p, Entry::Dir { mode: 0o755 }),
                Err(CpioError::BadPath(p.into()))
            );
        }
        assert_eq!(
            a.add(
                "/init",
                Entry::File {
                    mode: 0o755,
                    data: vec![9]
                }
            ),
            Err(CpioError::Conflict("/init".into()))
        );
        a.add("/usr", Entry::Dir { mode: 0o700 }).unwrap();
    }

    #[test]
    fn reader_returns_the_files_the_writer_wrote() {
        let a = sample();
        let files = read_files(&a.to_bytes(7)).unwrap();
        assert_eq!(
            files.get("/usr/bin/x").map(Vec::as_slice),
            Some(&b"hello"[..])
        );
        assert!(files.keys().all(|k| k.starts_with('/')));
        // Truncated and foreign bytes are named, not panicked on.
        let bytes = a.to_bytes(7);
        for cut in [0, 5, 111, bytes.len() - 1] {
            assert!(read_files(&bytes[..cut]).is_err());
        }
        assert_eq!(read_files(b"not a cpio archive at all, but long enough to hold a header....................................................."), Err(CpioReadError::Magic(0)));
    }
}
