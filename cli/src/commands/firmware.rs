//! `cvm firmware`: fetch the pinned SEV-SNP and TDX firmware, verify it, show its
//! measurement metadata.

use std::path::PathBuf;

use anyhow::Context as _;
use cvm_ovmf::pinned::{self, FetchOptions, PinnedFirmware};
use serde::Serialize;

use crate::paths;

/// Arguments of `cvm firmware`.
#[derive(Debug, clap::Args)]
pub struct FirmwareArgs {
    /// Folder holding local copies of the pinned .deb packages, tried after the download
    /// [default: $CVM_FIRMWARE_DEBS, then ../shared/firmware].
    #[arg(long, value_name = "DIR")]
    pub debs: Vec<PathBuf>,
    /// Do not ask Debian; use the cache and local copies only.
    #[arg(long)]
    pub no_download: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    package: &'static str,
    version: &'static str,
    path: PathBuf,
    sha256: &'static str,
    sev_sections: Vec<String>,
    sev_ap_reset_eip: Option<String>,
    sev_kernel_hashes_table: Option<String>,
    tdx_sections: Vec<String>,
}

/// The local package folders to try, in order.
pub fn local_dirs(given: &[PathBuf]) -> Vec<PathBuf> {
    if !given.is_empty() {
        return given.to_vec();
    }
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("CVM_FIRMWARE_DEBS") {
        dirs.push(PathBuf::from(d));
    }
    dirs.push(PathBuf::from("../shared/firmware"));
    dirs
}

/// Run `cvm firmware`.
pub fn run(args: FirmwareArgs) -> anyhow::Result<()> {
    let opts = FetchOptions {
        download: !args.no_download,
        local_dirs: local_dirs(&args.debs),
    };
    let reports = [pinned::AMDSEV, pinned::INTELTDX]
        .iter()
        .map(|fw| report(fw, &opts))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.json {
        return super::print_json(&reports);
    }
    for r in &reports {
        println!(
            "{} {}: {} (sha256 {})",
            r.package,
            r.version,
            r.path.display(),
            r.sha256
        );
        for s in &r.sev_sections {
            println!("  sev  {s}");
        }
        if let Some(eip) = &r.sev_ap_reset_eip {
            println!("  sev  AP reset EIP {eip}");
        }
        if let Some(t) = &r.sev_kernel_hashes_table {
            println!("  sev  kernel hashes table {t}");
        }
        for s in &r.tdx_sections {
            println!("  tdx  {s}");
        }
    }
    Ok(())
}

fn report(fw: &PinnedFirmware, opts: &FetchOptions) -> anyhow::Result<Report> {
    let path = pinned::fetch(fw, &paths::cache_dir(), opts)?;
    let image = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
    let sev = cvm_ovmf::parse_sev(&image).ok();
    let tdx = cvm_ovmf::parse_tdx(&image)
        .with_context(|| format!("{} has no TDX metadata", path.display()))?;
    Ok(Report {
        package: fw.package,
        version: fw.version,
        path,
        sha256: fw.sha256,
        sev_sections: sev
            .iter()
            .flat_map(|m| &m.sections)
            .map(|s| format!("{:?} gpa {:#x} size {:#x}", s.kind, s.gpa, s.size))
            .collect(),
        sev_ap_reset_eip: sev.as_ref().map(|m| format!("{:#x}", m.ap_reset_eip)),
        sev_kernel_hashes_table: sev
            .as_ref()
            .and_then(|m| m.hash_table)
            .map(|(gpa, size)| format!("gpa {gpa:#x} size {size:#x}")),
        tdx_sections: tdx
            .iter()
            .map(|s| {
                format!(
                    "{:?} gpa {:#x} memory {:#x} file {:#x}+{:#x} attributes {:#x}",
                    s.kind, s.gpa, s.memory_size, s.data_offset, s.raw_size, s.attributes
                )
            })
            .collect(),
    })
}
