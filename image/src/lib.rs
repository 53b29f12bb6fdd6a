//! Builds the guest image.
//!
//! Trust-chain place: host side, outside the TCB, but everything it writes is measured
//! at boot (kernel → PCR 4 / launch digest, initramfs and command line → PCR 9 / launch
//! digest), so its output must be byte-for-byte reproducible.
//!
//! Inputs: a kernel (built from Debian's source with `kernel-config/`, cached, or a
//! prebuilt bzImage), the `cvm-init` and `cvm-agent` binaries, PID1's configuration,
//! `SOURCE_DATE_EPOCH`. Output: a folder with `bzImage`, `initramfs.cpio.zst`,
//! `cmdline` and `manifest.json`.
//!
//! It also computes launch measurements offline ([`measure`]): the SEV-SNP launch digest.
//!
//! Non-goals (later issues): UKI, GPT disk, cloud exports.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod cpio;
pub mod kernel;
pub mod libs;
pub mod manifest;
pub mod measure;

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

pub use kernel::Kernel;
pub use manifest::{Artifact, FileEntry, FirmwareInfo, Manifest};

/// PID1's default configuration, baked at `/etc/cvm/init.json`.
pub const DEFAULT_INIT_CONFIG: &[u8] = include_bytes!("../files/init.json");
/// The default kernel command line.
pub const DEFAULT_CMDLINE: &str =
    "console=ttyS0 quiet panic=-1 lsm=lockdown,bpf,landlock,yama lockdown=confidentiality ip=dhcp";
/// Guest path of PID1.
pub const GUEST_INIT: &str = "/init";
/// Guest path of the agent.
pub const GUEST_AGENT: &str = "/usr/bin/cvm-agent";
/// Guest path of the per-workload Wasm runtime the agent starts.
pub const GUEST_RUNTIME: &str = "/usr/bin/cvm-wasm";
/// Guest path of PID1's configuration.
pub const GUEST_INIT_CONFIG: &str = "/etc/cvm/init.json";
/// Host tools PID1 runs to create and unlock the encrypted state volume, at the same
/// path in the guest: (guest path, host candidates, Debian package).
pub const STATE_TOOLS: &[(&str, &[&str], &str)] = &[
    (
        "/usr/sbin/cryptsetup",
        &["/usr/sbin/cryptsetup", "/sbin/cryptsetup"],
        "cryptsetup-bin",
    ),
    (
        "/usr/sbin/mke2fs",
        &["/usr/sbin/mke2fs", "/sbin/mke2fs"],
        "e2fsprogs",
    ),
];

/// Largest initramfs `initramfs_files` unpacks (the image's is about 12 MB).
pub const MAX_INITRAMFS: usize = 512 << 20;

/// The regular files of a zstd-compressed newc initramfs, by absolute path.
pub fn initramfs_files(
    compressed: &[u8],
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, InitramfsError> {
    use std::io::Read as _;
    let mut cpio = Vec::new();
    zstd::stream::read::Decoder::new(compressed)
        .and_then(|d| d.take(MAX_INITRAMFS as u64 + 1).read_to_end(&mut cpio))
        .map_err(|e| InitramfsError::Zstd(e.to_string()))?;
    if cpio.len() > MAX_INITRAMFS {
        return Err(InitramfsError::Zstd("too large".into()));
    }
    Ok(cpio::read_files(&cpio)?)
}

/// An initramfs that does not unpack.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InitramfsError {
    /// Not zstd, or larger than [`MAX_INITRAMFS`] unpacked.
    #[error("initramfs is not zstd data of at most {MAX_INITRAMFS} bytes: {0}")]
    Zstd(String),
    /// Not a newc archive.
    #[error(transparent)]
    Cpio(#[from] cpio::CpioReadError),
}

/// zstd level of the initramfs: high ratio, still fast to decompress.
pub const ZSTD_LEVEL: i32 = 19;

/// File names inside an image folder.
pub mod files {
    /// The kernel.
    pub const KERNEL: &str = "bzImage";
    /// The compressed initramfs.
    pub const INITRAMFS: &str = "initramfs.cpio.zst";
    /// The kernel command line.
    pub const CMDLINE: &str = "cmdline";
    /// The manifest.
    pub const MANIFEST: &str = "manifest.json";
}

/// What to build.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// The kernel to use.
    pub kernel: Kernel,
    /// The PID1 binary.
    pub init: PathBuf,
    /// The agent binary.
    pub agent: PathBuf,
    /// The per-workload runtime binary (`cvm-wasm`).
    pub runtime: PathBuf,
    /// PID1's configuration file contents.
    pub init_config: Vec<u8>,
    /// Kernel command line.
    pub cmdline: String,
    /// Timestamp of every archive entry.
    pub source_date_epoch: u64,
    /// Firmware the image is meant for, recorded in the manifest.
    pub firmware: Option<FirmwareInfo>,
    /// Include the state volume tools ([`STATE_TOOLS`]); without them the image is
    /// smaller and can hold no persistent state.
    pub state_tools: bool,
}

/// An image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// An input file is missing or unreadable.
    #[error("read {what} {path} failed")]
    Input {
        /// What the input is.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An input binary is not an ELF executable.
    #[error("{what} {path} is not an ELF executable")]
    NotElf {
        /// What the input is.
        what: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A tool the state volume needs is not installed on the build host.
    #[error("{tool} is not installed (package {package}: run ./scripts/setup)")]
    MissingTool {
        /// The guest path of the tool.
        tool: &'static str,
        /// The Debian package that has it.
        package: &'static str,
    },
    /// PID1's configuration is not JSON.
    #[error("PID1 configuration is not valid JSON")]
    BadInitConfig(#[source] serde_json::Error),
    /// The command line contains a newline or NUL.
    #[error("kernel command line must be one line without NUL bytes")]
    BadCmdline,
    /// Library resolution failed.
    #[error(transparent)]
    Libs(#[from] libs::LibsError),
    /// Archive construction failed.
    #[error(transparent)]
    Cpio(#[from] cpio::CpioError),
    /// The kernel is unusable.
    #[error(transparent)]
    Kernel(#[from] kernel::KernelError),
    /// Writing the output failed.
    #[error("write image {path} failed")]
    Output {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn read_input(what: &'static str, path: &Path) -> Result<Vec<u8>, ImageError> {
    fs::read(path).map_err(|source| ImageError::Input {
        what,
        path: path.to_owned(),
        source,
    })
}

fn read_elf(what: &'static str, path: &Path) -> Result<Vec<u8>, ImageError> {
    let bytes = read_input(what, path)?;
    if !bytes.starts_with(b"\x7fELF") {
        return Err(ImageError::NotElf {
            what,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The uncompressed initramfs archive for `spec`.
pub fn initramfs_archive(spec: &ImageSpec) -> Result<cpio::Archive, ImageError> {
    use cpio::Entry;
    let init = read_elf("PID1 binary", &spec.init)?;
    let agent = read_elf("agent binary", &spec.agent)?;
    let runtime = read_elf("workload runtime binary", &spec.runtime)?;
    serde_json::from_slice::<serde_json::Value>(&spec.init_config)
        .map_err(ImageError::BadInitConfig)?;

    let mut a = cpio::Archive::new();
    // The kernel opens /dev/console for PID1 before any devtmpfs is mounted.
    a.add(
        "/dev/console",
        Entry::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    )?;
    for dir in ["/proc", "/sys", "/run", "/tmp", "/etc"] {
        a.add(dir, Entry::Dir { mode: 0o755 })?;
    }
    a.add(
        GUEST_INIT,
        Entry::File {
            mode: 0o755,
            data: init,
        },
    )?;
    a.add(
        GUEST_AGENT,
        Entry::File {
            mode: 0o755,
            data: agent,
        },
    )?;
    a.add(
        GUEST_RUNTIME,
        Entry::File {
            mode: 0o755,
            data: runtime,
        },
    )?;
    a.add(
        GUEST_INIT_CONFIG,
        Entry::File {
            mode: 0o644,
            data: spec.init_config.clone(),
        },
    )?;
    let mut tools = Vec::new();
    let wanted: &[(&str, &[&str], &str)] = if spec.state_tools { STATE_TOOLS } else { &[] };
    for (guest, candidates, package) in wanted {
        let host = candidates
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .ok_or(ImageError::MissingTool {
                tool: guest,
                package,
            })?;
        let data = read_elf("state volume tool", host)?;
        a.add(guest, Entry::File { mode: 0o755, data })?;
        tools.push(host.to_owned());
    }
    let mut binaries: Vec<&Path> = vec![&spec.init, &spec.agent, &spec.runtime];
    binaries.extend(tools.iter().map(PathBuf::as_path));
    for lib in libs::resolve(&binaries)? {
        let data = read_input("shared library", &lib)?;
        let guest = lib.to_string_lossy().into_owned();
        a.add(&guest, Entry::File { mode: 0o755, data })?;
    }
    Ok(a)
}

/// Build the image into `out` (replaced as a whole, so a failed build leaves the
/// previous image intact) and return its manifest.
pub fn build(spec: &ImageSpec, out: &Path) -> Result<Manifest, ImageError> {
    if spec.cmdline.contains(['\n', '\0']) {
        return Err(ImageError::BadCmdline);
    }
    let archive = initramfs_archive(spec)?;
    let cpio = archive.to_bytes(spec.source_date_epoch);
    let initramfs =
        zstd::bulk::compress(&cpio, ZSTD_LEVEL).map_err(|source| ImageError::Output {
            path: out.join(files::INITRAMFS),
            source,
        })?;
    let kernel = read_input("kernel", &spec.kernel.bzimage)?;
    kernel::check_bzimage_bytes(&spec.kernel.bzimage, &kernel)?;

    let initramfs_files = archive
        .entries()
        .filter_map(|(path, e)| match e {
            cpio::Entry::File { data, .. } => Some(FileEntry {
                path: format!("/{path}"),
                size: data.len() as u64,
                sha256: sha256_hex(data),
            }),
            _ => None,
        })
        .collect();
    let artifact = |file: &str, bytes: &[u8]| Artifact {
        file: file.to_owned(),
        size: bytes.len() as u64,
        sha256: sha256_hex(bytes),
    };
    let manifest = Manifest {
        schema: manifest::MANIFEST_SCHEMA,
        source_date_epoch: spec.source_date_epoch,
        kernel: artifact(files::KERNEL, &kernel),
        kernel_source: spec.kernel.source.clone(),
        kernel_config_sha256: spec.kernel.config_sha256.clone(),
        initramfs: artifact(files::INITRAMFS, &initramfs),
        cmdline: artifact(files::CMDLINE, spec.cmdline.as_bytes()),
        cmdline_text: spec.cmdline.clone(),
        firmware: spec.firmware.clone(),
        initramfs_files,
    };
    let mut manifest_json =
        serde_json::to_vec_pretty(&manifest).map_err(|e| ImageError::Output {
            path: out.join(files::MANIFEST),
            source: std::io::Error::other(e),
        })?;
    manifest_json.push(b'\n');

    write_folder(
        out,
        &[
            (files::KERNEL, &kernel),
            (files::INITRAMFS, &initramfs),
            (files::CMDLINE, spec.cmdline.as_bytes()),
            (files::MANIFEST, &manifest_json),
        ],
    )?;
    Ok(manifest)
}

/// Write `entries` into a fresh sibling folder, then swap it in for `out`.
fn write_folder(out: &Path, entries: &[(&str, &[u8])]) -> Result<(), ImageError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| ImageError::Output { path, source }
    };
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(err(parent))?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    let staging = parent.join(format!(".{name}.new"));
    let old = parent.join(format!(".{name}.old"));
    for stale in [&staging, &old] {
        if stale.exists() {
            fs::remove_dir_all(stale).map_err(err(stale))?;
        }
    }
    fs::create_dir_all(&staging).map_err(err(&staging))?;
    for (file, bytes) in entries {
        let path = staging.join(file);
        let mut f = fs::File::create(&path).map_err(err(&path))?;
        use std::io::Write as _;
        f.write_all(bytes).map_err(err(&path))?;
        f.sync_all().map_err(err(&path))?;
    }
    if out.exists() {
        fs::rename(out, &old).map_err(err(out))?;
    }
    fs::rename(&staging, out).map_err(err(out))?;
    if old.exists() {
        fs::remove_dir_all(&old).map_err(err(&old))?;
    }
    Ok(())
}
