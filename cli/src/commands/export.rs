//! `cvm export`: the image's GPT disk in a form a hypervisor or cloud imports: `raw`,
//! `qcow2`, `azure-vhd` (fixed VHD) or `gcp-tar` (`disk.raw` in a tar.gz, with the
//! guest OS features beside it). The upload and VM creation commands are in
//! `scripts/deploy-azure` and `scripts/deploy-gcp`.

use std::path::PathBuf;

use anyhow::Context as _;
use cvm_image::export::{self, Format};

use crate::paths;

/// Arguments of `cvm export`.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// raw, qcow2, azure-vhd or gcp-tar.
    #[arg(long)]
    pub format: String,
    /// Image folder written by `cvm build`.
    #[arg(long, default_value = paths::DEFAULT_IMAGE_DIR)]
    pub image: PathBuf,
    /// Output file [default: disk.raw, disk.qcow2, disk.vhd or disk.tar.gz in the image
    /// folder's parent, named after the image folder].
    #[arg(long, value_name = "PATH")]
    pub out: Option<PathBuf>,
    /// Replace an existing output file.
    #[arg(long)]
    pub force: bool,
    /// Print what was written as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `cvm export`.
pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    // The format is checked before anything is read or written.
    let format: Format = args.format.parse()?;
    let manifest = super::read_manifest(&args.image)?;
    let disk = manifest.disk.as_ref().with_context(|| {
        format!(
            "image {} has no disk (it was built with --no-uki)",
            args.image.display()
        )
    })?;
    let source = args.image.join(&disk.artifact.file);
    let (size, sha256) = export::digest_file(&source)?;
    anyhow::ensure!(
        size == disk.artifact.size && sha256 == disk.artifact.sha256,
        "disk {} is not the one the manifest lists (sha256 {sha256}); rebuild the image",
        source.display()
    );
    let out = match args.out {
        Some(out) => out,
        None => {
            let name = args
                .image
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "image".into());
            let dir = args.image.parent().unwrap_or(std::path::Path::new("."));
            dir.join(format!("{name}-{}", format.default_file()))
        }
    };
    // The VHD's identifier is the disk's, so two exports of one image are identical.
    let mut unique_id = [0u8; 16];
    hex::decode_to_slice(disk.info.disk_guid.replace('-', ""), &mut unique_id)
        .context("the manifest's disk GUID is not 32 hex digits")?;
    let exported = export::export(
        &source,
        format,
        &out,
        args.force,
        manifest.source_date_epoch,
        unique_id,
    )?;
    if args.json {
        return super::print_json(&exported);
    }
    println!(
        "{} {:>12} bytes  sha256 {}",
        exported.path.display(),
        exported.size,
        exported.sha256
    );
    if let Some(features) = &exported.guest_os_features {
        println!(
            "guest OS features for the GCE image: {} ({})",
            features.display(),
            export::GCP_GUEST_OS_FEATURES.join(",")
        );
    }
    Ok(())
}
