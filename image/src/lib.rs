//! Builds the guest image.
//!
//! Trust-chain place: host side, outside the TCB, but everything it writes is measured
//! at boot (kernel → PCR 4 / launch digest, initramfs and command line → PCR 9 / launch
//! digest), so its output must be byte-for-byte reproducible.
//!
//! Inputs: a kernel (built from Debian's source with `kernel-config/`, cached, or a
//! prebuilt bzImage), the `cvm-init` and `cvm-agent` binaries, PID1's configuration,
//! `SOURCE_DATE_EPOCH`. Output: a folder with `bzImage`, `initramfs.cpio.zst`,
//! `cmdline`, `measurements.json` and `manifest.json`.
//!
//! It also computes launch measurements offline ([`measure`]: vTPM PCRs, the SEV-SNP
//! launch digest, TDX MRTD), which every build records per target ([`measurements`]).
//!
//! For UEFI boots (a disk under QEMU, Azure, GCP) it also assembles a unified kernel
//! image ([`uki`]) and a GPT disk holding it ([`disk`]), which [`export`] turns into
//! each cloud's format.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod cpio;
pub mod disk;
pub mod export;
pub mod kernel;
pub mod libs;
pub mod manifest;
pub mod measure;
pub mod measurements;
pub mod pe;
pub mod uki;

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
    (
        "/usr/sbin/tune2fs",
        &["/usr/sbin/tune2fs", "/sbin/tune2fs"],
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
    /// The unified kernel image.
    pub const UKI: &str = "uki.efi";
    /// The GPT disk with the UKI on its EFI system partition.
    pub const DISK: &str = "disk.raw";
    /// The reference values of every target.
    pub const MEASUREMENTS: &str = "measurements.json";
}

/// The UEFI boot artifacts to build besides the direct-boot ones.
#[derive(Debug, Clone)]
pub struct UkiSpec {
    /// The systemd EFI stub.
    pub stub: PathBuf,
    /// The disk's partition sizes.
    pub layout: disk::DiskLayout,
    /// Sign the UKI for Secure Boot with this key.
    pub signing: Option<uki::Signing>,
}

/// The os-release embedded in the UKI (`.osrel`): what the appliance is, for the stub
/// and for anyone inspecting the disk.
pub fn os_release() -> String {
    let version = env!("CARGO_PKG_VERSION");
    format!(
        "NAME=cvm\nID=cvm\nVERSION_ID={version}\nPRETTY_NAME=\"cvm {version} confidential VM appliance\"\n"
    )
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
    /// Also build the UKI and the disk.
    pub uki: Option<UkiSpec>,
    /// The firmware the SNP and TDX reference values are computed with.
    pub targets: measurements::TargetFirmware,
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
    /// The UKI could not be assembled.
    #[error(transparent)]
    Uki(#[from] uki::UkiError),
    /// The disk could not be written.
    #[error(transparent)]
    Disk(#[from] disk::DiskError),
    /// The initramfs just built does not unpack (a bug, not an input error).
    #[error("the initramfs just built does not unpack")]
    Initramfs(#[source] InitramfsError),
    /// The reference values could not be computed.
    #[error(transparent)]
    Measurements(#[from] measurements::MeasurementsError),
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
    // The stub is checked first: a missing one should not cost an initramfs build.
    let stub = spec
        .uki
        .as_ref()
        .map(|u| uki::read_stub(&u.stub))
        .transpose()?;
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
    let uki = match (&stub, &spec.uki) {
        (Some(stub), Some(uki_spec)) => {
            let release = uki::kernel_release(&kernel);
            let bytes = uki::assemble(
                stub,
                &uki::UkiParts {
                    kernel: &kernel,
                    initrd: &initramfs,
                    cmdline: &spec.cmdline,
                    osrel: &os_release(),
                    uname: release.as_deref(),
                },
            )?;
            let bytes = match &uki_spec.signing {
                Some(signing) => uki::sign(&bytes, signing, spec.source_date_epoch)?,
                None => bytes,
            };
            Some((bytes, sha256_hex(stub)))
        }
        _ => None,
    };
    let signing_cert_sha256 = match spec.uki.as_ref().and_then(|u| u.signing.as_ref()) {
        Some(signing) => Some(sha256_hex(&read_input(
            "signing certificate",
            &signing.cert,
        )?)),
        None => None,
    };
    let measurements_json = {
        let unpacked = crate::initramfs_files(&initramfs).map_err(ImageError::Initramfs)?;
        let inputs = measurements::ImageInputs {
            kernel: &kernel,
            initramfs: &initramfs,
            initramfs_files: &unpacked,
            cmdline: &spec.cmdline,
            uki: uki.as_ref().map(|(bytes, _)| bytes.as_slice()),
            qemu_firmware: spec.firmware.as_ref(),
        };
        let m = measurements::compute(&inputs, &spec.targets)?;
        json_file(&m, &out.join(files::MEASUREMENTS))?
    };
    let mut manifest = Manifest {
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
        uki: uki
            .as_ref()
            .map(|(bytes, stub_sha256)| manifest::UkiArtifact {
                artifact: artifact(files::UKI, bytes),
                stub_sha256: stub_sha256.clone(),
                osrel: os_release(),
                uname: uki::kernel_release(&kernel),
                signing_cert_sha256: signing_cert_sha256.clone(),
            }),
        disk: None,
        measurements: Some(artifact(files::MEASUREMENTS, &measurements_json)),
    };

    let staging = Staging::new(out)?;
    let mut entries: Vec<(&str, &[u8])> = vec![
        (files::KERNEL, &kernel),
        (files::INITRAMFS, &initramfs),
        (files::CMDLINE, spec.cmdline.as_bytes()),
    ];
    if let (Some((bytes, _)), Some(u)) = (&uki, &spec.uki) {
        entries.push((files::UKI, bytes));
        let path = staging.dir.join(files::DISK);
        let info = disk::write(&path, bytes, u.layout)?;
        let (size, sha256) = export::digest_file(&path).map_err(|e| ImageError::Output {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        manifest.disk = Some(manifest::DiskArtifact {
            artifact: Artifact {
                file: files::DISK.to_owned(),
                size,
                sha256,
            },
            info,
        });
    }
    entries.push((files::MEASUREMENTS, &measurements_json));
    let manifest_json = json_file(&manifest, &out.join(files::MANIFEST))?;
    entries.push((files::MANIFEST, &manifest_json));
    staging.write(&entries)?;
    staging.swap_in()?;
    Ok(manifest)
}

/// Pretty JSON with a final newline, for a file of the image folder at `path`.
fn json_file<T: serde::Serialize>(value: &T, path: &Path) -> Result<Vec<u8>, ImageError> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| ImageError::Output {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?;
    bytes.push(b'\n');
    Ok(bytes)
}

/// The identity of an image: the SHA-256 of its `manifest.json`, which lists every
/// artifact's digest.
pub fn identity(manifest_json: &[u8]) -> String {
    sha256_hex(manifest_json)
}

/// A fresh sibling folder of the output that is swapped in for it once complete, so a
/// failed build leaves the previous image intact.
struct Staging {
    out: PathBuf,
    dir: PathBuf,
    old: PathBuf,
}

fn output_error(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.to_owned();
    move |source| ImageError::Output { path, source }
}

impl Staging {
    fn new(out: &Path) -> Result<Self, ImageError> {
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        fs::create_dir_all(parent).map_err(output_error(parent))?;
        let name = out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image".into());
        let dir = parent.join(format!(".{name}.new"));
        let old = parent.join(format!(".{name}.old"));
        for stale in [&dir, &old] {
            if stale.exists() {
                fs::remove_dir_all(stale).map_err(output_error(stale))?;
            }
        }
        fs::create_dir_all(&dir).map_err(output_error(&dir))?;
        Ok(Self {
            out: out.to_owned(),
            dir,
            old,
        })
    }

    fn write(&self, entries: &[(&str, &[u8])]) -> Result<(), ImageError> {
        use std::io::Write as _;
        for (file, bytes) in entries {
            let path = self.dir.join(file);
            let mut f = fs::File::create(&path).map_err(output_error(&path))?;
            f.write_all(bytes).map_err(output_error(&path))?;
            f.sync_all().map_err(output_error(&path))?;
        }
        Ok(())
    }

    fn swap_in(&self) -> Result<(), ImageError> {
        let out = &self.out;
        if out.exists() {
            fs::rename(out, &self.old).map_err(output_error(out))?;
        }
        fs::rename(&self.dir, out).map_err(output_error(out))?;
        if self.old.exists() {
            fs::remove_dir_all(&self.old).map_err(output_error(&self.old))?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    // A build that failed half-way leaves no half-written folder behind.
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
