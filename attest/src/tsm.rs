//! configfs-tsm (Linux ≥ 6.7): the kernel's one interface to ask the TEE for a signed
//! report over caller-chosen data, whatever the TEE (`sev_guest`, `tdx_guest`, …).
//! A report is one directory under `/sys/kernel/config/tsm/report/`: write `inblob`,
//! read `outblob` (and `auxblob`), and compare `generation` around the read so a
//! concurrent writer cannot hand us a report over someone else's data.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Where configfs-tsm reports live.
pub const TSM_REPORT_DIR: &str = "/sys/kernel/config/tsm/report";

/// A report could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum TsmError {
    /// No configfs-tsm in this kernel, or configfs not mounted.
    #[error("configfs-tsm is not available ({0} is missing)")]
    Unavailable(PathBuf),
    /// The kernel has configfs-tsm but no TEE driver provides reports.
    #[error(
        "configfs-tsm has no report provider: this guest is not running in a TEE that offers reports"
    )]
    NoProvider,
    /// Another TEE answered than the one asked for.
    #[error("configfs-tsm provider is {actual}, expected {expected}")]
    Provider {
        /// Wanted.
        expected: &'static str,
        /// Found.
        actual: String,
    },
    /// Another writer changed the request while we read.
    #[error("configfs-tsm report changed while it was read (generation {before} → {after})")]
    Raced {
        /// Generation after our write.
        before: u64,
        /// Generation after our read.
        after: u64,
    },
    /// A configfs file operation failed.
    #[error("configfs-tsm {op} {path} failed")]
    Io {
        /// What.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// What the TEE returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsmReport {
    /// The provider's name (`sev_guest`, `tdx_guest`).
    pub provider: String,
    /// The report (SNP) or quote (TDX).
    pub outblob: Vec<u8>,
    /// Auxiliary data (SNP: the host's certificate table), when any.
    pub auxblob: Option<Vec<u8>>,
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TsmError {
    let path = path.to_owned();
    move |source| TsmError::Io { op, path, source }
}

/// Removes the report directory however the request ends.
struct Entry(PathBuf);

impl Drop for Entry {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.0);
    }
}

fn read_generation(dir: &Path) -> Result<u64, TsmError> {
    let path = dir.join("generation");
    let text = fs::read_to_string(&path).map_err(io("read", &path))?;
    text.trim().parse().map_err(|_| TsmError::Io {
        op: "parse",
        path,
        source: std::io::Error::other("generation is not a number"),
    })
}

/// Ask the provider `expected` under `root` (normally [`TSM_REPORT_DIR`]) for a report
/// over `inblob`, at `privlevel` when given (SNP's VMPL).
pub fn report(
    root: &Path,
    expected: &'static str,
    inblob: &[u8; 64],
    privlevel: Option<u32>,
) -> Result<TsmReport, TsmError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if !root.is_dir() {
        return Err(TsmError::Unavailable(root.to_owned()));
    }
    let dir = root.join(format!(
        "cvm-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    match fs::create_dir(&dir) {
        Ok(()) => {}
        // Linux refuses the directory itself while no TEE driver is registered.
        Err(e) if e.raw_os_error() == Some(libc_enxio()) => return Err(TsmError::NoProvider),
        Err(e) => return Err(io("create", &dir)(e)),
    }
    let entry = Entry(dir);
    let dir = &entry.0;

    let provider_path = dir.join("provider");
    let provider = match fs::read_to_string(&provider_path) {
        Ok(p) => p.trim().to_owned(),
        Err(e) if e.raw_os_error() == Some(libc_enxio()) => return Err(TsmError::NoProvider),
        Err(e) => return Err(io("read", &provider_path)(e)),
    };
    if provider != expected {
        return Err(TsmError::Provider {
            expected,
            actual: provider,
        });
    }
    if let Some(level) = privlevel {
        let path = dir.join("privlevel");
        fs::write(&path, level.to_string()).map_err(io("write", &path))?;
    }
    let inblob_path = dir.join("inblob");
    fs::write(&inblob_path, inblob).map_err(io("write", &inblob_path))?;
    let before = read_generation(dir)?;
    let out_path = dir.join("outblob");
    let outblob = match fs::read(&out_path) {
        Ok(b) => b,
        Err(e) if e.raw_os_error() == Some(libc_enxio()) => return Err(TsmError::NoProvider),
        Err(e) => return Err(io("read", &out_path)(e)),
    };
    let aux_path = dir.join("auxblob");
    let auxblob = match fs::read(&aux_path) {
        Ok(b) if !b.is_empty() => Some(b),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io("read", &aux_path)(e)),
    };
    let after = read_generation(dir)?;
    if after != before {
        return Err(TsmError::Raced { before, after });
    }
    Ok(TsmReport {
        provider,
        outblob,
        auxblob,
    })
}

/// ENXIO ("no such device or address"), what configfs-tsm returns without a provider.
const fn libc_enxio() -> i32 {
    6
}
