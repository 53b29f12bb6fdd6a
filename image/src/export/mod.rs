//! Cloud and hypervisor forms of the disk `cvm build` wrote: `raw` (the disk itself),
//! `qcow2` (by `qemu-img convert`), `azure-vhd` (a fixed VHD) and `gcp-tar` (`disk.raw`
//! in a gzip-compressed old-GNU tar, with the guest OS features GCE needs beside it).
//! Every export is written to a temporary name in the destination's folder and renamed
//! into place, so a failed export never leaves a partial file where a good one was.

pub mod tar;
pub mod vhd;

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Guest OS features of the GCE image: UEFI boot, SEV-SNP and TDX confidential VMs,
/// and the gVNIC network device.
pub const GCP_GUEST_OS_FEATURES: [&str; 4] =
    ["UEFI_COMPATIBLE", "SEV_SNP_CAPABLE", "TDX_CAPABLE", "GVNIC"];

/// The member name GCE requires inside the tar.
pub const GCP_MEMBER: &str = "disk.raw";

/// An export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// The GPT disk as it is.
    Raw,
    /// QEMU's copy-on-write format.
    Qcow2,
    /// A fixed-size VHD for Azure.
    AzureVhd,
    /// `disk.raw` in a tar.gz for Google Compute Engine.
    GcpTar,
}

impl Format {
    /// Every format, by its name.
    pub const ALL: [(&'static str, Format); 4] = [
        ("raw", Format::Raw),
        ("qcow2", Format::Qcow2),
        ("azure-vhd", Format::AzureVhd),
        ("gcp-tar", Format::GcpTar),
    ];

    /// The file name an export of this format gets by default.
    pub fn default_file(self) -> &'static str {
        match self {
            Format::Raw => "disk.raw",
            Format::Qcow2 => "disk.qcow2",
            Format::AzureVhd => "disk.vhd",
            Format::GcpTar => "disk.tar.gz",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = ExportError;
    fn from_str(s: &str) -> Result<Self, ExportError> {
        Self::ALL
            .iter()
            .find(|(name, _)| *name == s)
            .map(|(_, f)| *f)
            .ok_or_else(|| ExportError::UnknownFormat(s.to_owned()))
    }
}

/// An export that failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Not one of [`Format::ALL`].
    #[error("unknown export format {0:?} (known: raw, qcow2, azure-vhd, gcp-tar)")]
    UnknownFormat(String),
    /// The destination exists and overwriting was not asked for.
    #[error("{0} exists; pass --force to replace it")]
    Exists(PathBuf),
    /// Azure takes only disks of whole MiB.
    #[error("the disk is {0} bytes, not a whole number of MiB, which Azure requires")]
    NotWholeMib(u64),
    /// `qemu-img` failed or is missing.
    #[error("qemu-img convert failed: {0} (install qemu-utils: ./scripts/setup)")]
    QemuImg(String),
    /// Reading the disk or writing the export.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ExportError {
    let path = path.to_owned();
    move |source| ExportError::Io { op, path, source }
}

/// What an export wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Exported {
    /// The format.
    pub format: Format,
    /// The export.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// For `gcp-tar`: the JSON file with the image's guest OS features.
    pub guest_os_features: Option<PathBuf>,
}

/// Exports `disk` as `format` to `out`. `mtime` is the time recorded in the archive or
/// footer (`SOURCE_DATE_EPOCH`), `unique_id` the VHD's identifier.
pub fn export(
    disk: &Path,
    format: Format,
    out: &Path,
    force: bool,
    mtime: u64,
    unique_id: [u8; 16],
) -> Result<Exported, ExportError> {
    if out.exists() && !force {
        return Err(ExportError::Exists(out.to_owned()));
    }
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let tmp = tempfile::Builder::new()
        .prefix(".cvm-export-")
        .tempfile_in(dir)
        .map_err(io("create a temporary file in", dir))?;
    let len = std::fs::metadata(disk).map_err(io("read", disk))?.len();
    match format {
        Format::Raw => copy_sparse(disk, tmp.path(), len)?,
        Format::Qcow2 => qemu_img(disk, tmp.path())?,
        Format::AzureVhd => {
            if len % (1 << 20) != 0 {
                return Err(ExportError::NotWholeMib(len));
            }
            copy_sparse(disk, tmp.path(), len)?;
            let mut f = File::options()
                .append(true)
                .open(tmp.path())
                .map_err(io("write", tmp.path()))?;
            f.write_all(&vhd::footer(len, mtime, unique_id))
                .map_err(io("write", tmp.path()))?;
        }
        Format::GcpTar => {
            let mut src = File::open(disk).map_err(io("read", disk))?;
            let file = File::create(tmp.path()).map_err(io("write", tmp.path()))?;
            // No file name and a zero time in the gzip header: the bytes depend only
            // on the disk.
            let gz = flate2::GzBuilder::new()
                .mtime(0)
                .write(BufWriter::new(file), flate2::Compression::default());
            let mut gz = gz;
            tar::write_sparse(&mut gz, GCP_MEMBER, &mut src, len, mtime)
                .map_err(io("write", tmp.path()))?;
            gz.finish()
                .and_then(|mut w| w.flush())
                .map_err(io("write", tmp.path()))?;
        }
    }
    let guest_os_features = match format {
        Format::GcpTar => {
            let path = out
                .with_extension("")
                .with_extension("guest-os-features.json");
            let doc = serde_json::json!({
                "guestOsFeatures": GCP_GUEST_OS_FEATURES
                    .iter()
                    .map(|t| serde_json::json!({ "type": t }))
                    .collect::<Vec<_>>(),
            });
            let mut text = serde_json::to_vec_pretty(&doc).unwrap_or_default();
            text.push(b'\n');
            std::fs::write(&path, text).map_err(io("write", &path))?;
            Some(path)
        }
        _ => None,
    };
    tmp.as_file().sync_all().map_err(io("write", tmp.path()))?;
    tmp.persist(out).map_err(|e| ExportError::Io {
        op: "rename into place",
        path: out.to_owned(),
        source: e.error,
    })?;
    let (size, sha256) = digest_file(out)?;
    Ok(Exported {
        format,
        path: out.to_owned(),
        size,
        sha256,
        guest_os_features,
    })
}

/// Size and lower-case hex SHA-256 of a file, read in chunks.
pub fn digest_file(path: &Path) -> Result<(u64, String), ExportError> {
    use sha2::{Digest as _, Sha256};
    use std::io::Read as _;
    let mut f = File::open(path).map_err(io("read", path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(h.finalize())))
}

/// Copies `len` bytes, leaving holes where the source has zero blocks.
fn copy_sparse(from: &Path, to: &Path, len: u64) -> Result<(), ExportError> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut src = File::open(from).map_err(io("read", from))?;
    let runs = tar::data_runs(&mut src, len).map_err(io("read", from))?;
    let mut dst = File::create(to).map_err(io("write", to))?;
    dst.set_len(len).map_err(io("write", to))?;
    let mut buf = vec![0u8; 1 << 20];
    for (offset, run) in runs {
        src.seek(SeekFrom::Start(offset))
            .map_err(io("read", from))?;
        dst.seek(SeekFrom::Start(offset)).map_err(io("write", to))?;
        let mut left = run;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            src.read_exact(&mut buf[..n]).map_err(io("read", from))?;
            dst.write_all(&buf[..n]).map_err(io("write", to))?;
            left -= n as u64;
        }
    }
    Ok(())
}

fn qemu_img(from: &Path, to: &Path) -> Result<(), ExportError> {
    let out = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(from)
        .arg(to)
        .output()
        .map_err(|e| ExportError::QemuImg(e.to_string()))?;
    if !out.status.success() {
        return Err(ExportError::QemuImg(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(())
}
