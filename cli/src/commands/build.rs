//! `cvm build`: kernel (built and cached, or prebuilt) + initramfs + manifest, and for
//! UEFI boots the UKI and the GPT disk that holds it.

use std::path::PathBuf;

use anyhow::Context as _;
use cvm_image::disk::DiskLayout;
use cvm_image::measurements::{PinnedImage, TargetFirmware};
use cvm_image::{DEFAULT_CMDLINE, FirmwareInfo, ImageSpec, UkiSpec, kernel};
use cvm_ovmf::pinned::{self, FetchOptions, PinnedFirmware};

use crate::paths;

/// Arguments of `cvm build`.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Use this prebuilt bzImage (e.g. Debian's backports kernel) instead of building one.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Output folder; replaced as a whole only when the build succeeds.
    #[arg(long, default_value = paths::DEFAULT_IMAGE_DIR)]
    pub out: PathBuf,
    /// PID1 binary [default: cvm-init of the `guest` cargo profile, beside this cvm's folder].
    #[arg(long, value_name = "PATH")]
    pub init: Option<PathBuf>,
    /// Agent binary [default: cvm-agent of the `guest` cargo profile, beside this cvm's folder].
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
    /// Workload runtime binary [default: cvm-wasm of the `guest` cargo profile].
    #[arg(long, value_name = "PATH")]
    pub runtime: Option<PathBuf>,
    /// PID1 configuration file [default: the built-in image/files/init.json].
    #[arg(long, value_name = "PATH")]
    pub init_config: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Parallel jobs for the kernel build [default: number of CPUs].
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Leave out the state volume tools (cryptsetup, mke2fs and their libraries): a
    /// smaller image whose guest can hold no persistent state.
    #[arg(long)]
    pub stateless: bool,
    /// The systemd EFI stub the UKI is assembled from (Debian's systemd-boot-efi, from
    /// bookworm-backports).
    #[arg(long, value_name = "PATH", default_value = cvm_image::uki::DEFAULT_STUB)]
    pub stub: PathBuf,
    /// Size of the disk's EFI system partition, MiB (FAT32: at least 33).
    #[arg(long, value_name = "MIB", default_value_t = DiskLayout::default().esp_mib)]
    pub esp_size: u64,
    /// Size of the disk's empty state partition, MiB.
    #[arg(long, value_name = "MIB", default_value_t = DiskLayout::default().state_mib)]
    pub state_size: u64,
    /// Build only the direct-boot artifacts (kernel, initramfs, command line): no UKI,
    /// no disk.
    #[arg(long)]
    pub no_uki: bool,
    /// Sign the UKI for Secure Boot with this private key (PEM); needs --sign-cert. The
    /// signing time is SOURCE_DATE_EPOCH, so the signed UKI is reproducible too.
    #[arg(
        long,
        value_name = "PEM",
        requires = "sign_cert",
        conflicts_with = "no_uki"
    )]
    pub sign_key: Option<PathBuf>,
    /// The certificate of --sign-key (PEM): the one enrolled in the firmware's db, or
    /// one issued under it.
    #[arg(long, value_name = "PEM", requires = "sign_key")]
    pub sign_cert: Option<PathBuf>,
    /// Folders with local copies of the pinned SNP and TDX firmware packages, whose
    /// launch measurements go into measurements.json [default: $CVM_FIRMWARE_DEBS,
    /// ../shared/firmware; then the cache, then Debian].
    #[arg(long, value_name = "DIR")]
    pub debs: Vec<PathBuf>,
    /// Print the manifest as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The pinned SNP and TDX firmware: the hardware targets' launch measurements include it.
fn target_firmware(debs: &[PathBuf]) -> anyhow::Result<TargetFirmware> {
    let opts = FetchOptions {
        download: true,
        local_dirs: super::firmware::local_dirs(debs),
    };
    let get = |fw: &PinnedFirmware, target: &str| -> anyhow::Result<PinnedImage> {
        let path = pinned::fetch(fw, &paths::cache_dir(), &opts).with_context(|| {
            format!(
                "the {target} reference values need {} {} (pass --debs DIR with a copy of the package)",
                fw.package, fw.version
            )
        })?;
        let bytes =
            std::fs::read(&path).with_context(|| format!("read firmware {}", path.display()))?;
        Ok(PinnedImage {
            package: fw.package.to_owned(),
            version: fw.version.to_owned(),
            file: fw.file_name().to_owned(),
            bytes,
        })
    };
    Ok(TargetFirmware {
        snp: Some(get(&pinned::AMDSEV, "snp")?),
        tdx: Some(get(&pinned::INTELTDX, "tdx")?),
    })
}

/// `SOURCE_DATE_EPOCH`, or 0 so that a build without it is still deterministic.
pub fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(0),
    }
}

/// Run `cvm build`.
pub fn run(args: BuildArgs) -> anyhow::Result<()> {
    let epoch = source_date_epoch()?;
    // Before the kernel build: a missing firmware should not cost one.
    let targets = target_firmware(&args.debs)?;
    let kernel = match &args.kernel {
        Some(path) => kernel::prebuilt(path)?,
        None => {
            let jobs = args
                .jobs
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            kernel::build(&paths::cache_dir(), jobs)?
        }
    };
    let init_config = match &args.init_config {
        Some(p) => {
            std::fs::read(p).with_context(|| format!("read PID1 configuration {}", p.display()))?
        }
        None => cvm_image::DEFAULT_INIT_CONFIG.to_vec(),
    };
    let firmware = cvm_ovmf::dev_firmware(std::path::Path::new(cvm_ovmf::DEBIAN_OVMF_DIR))
        .map(|fw| FirmwareInfo {
            package: fw.package,
            code_sha256: fw.code_sha256,
        })
        .ok();
    let spec = ImageSpec {
        state_tools: !args.stateless,
        kernel,
        init: args.init.unwrap_or_else(|| paths::guest_binary("cvm-init")),
        agent: args
            .agent
            .unwrap_or_else(|| paths::guest_binary("cvm-agent")),
        runtime: args
            .runtime
            .unwrap_or_else(|| paths::guest_binary("cvm-wasm")),
        init_config,
        cmdline: args.cmdline,
        source_date_epoch: epoch,
        firmware,
        uki: (!args.no_uki).then(|| UkiSpec {
            stub: args.stub.clone(),
            layout: DiskLayout {
                esp_mib: args.esp_size,
                state_mib: args.state_size,
            },
            signing: args
                .sign_key
                .clone()
                .zip(args.sign_cert.clone())
                .map(|(key, cert)| cvm_image::uki::Signing { key, cert }),
        }),
        targets,
    };
    for (what, path, flag) in [
        ("PID1", &spec.init, "init"),
        ("agent", &spec.agent, "agent"),
        ("workload runtime", &spec.runtime, "runtime"),
    ] {
        if !path.is_file() {
            anyhow::bail!(
                "{what} binary {} not found: build the guest binaries first \
                 (./scripts/build-guest) or pass --{flag}",
                path.display(),
            );
        }
    }
    let manifest = cvm_image::build(&spec, &args.out)?;
    let manifest_path = args.out.join(cvm_image::files::MANIFEST);
    let identity = cvm_image::identity(
        &std::fs::read(&manifest_path)
            .with_context(|| format!("read {}", manifest_path.display()))?,
    );
    if args.json {
        return super::print_json(
            &serde_json::json!({ "out": args.out, "identity": identity, "manifest": manifest }),
        );
    }
    eprintln!("image written to {}", args.out.display());
    let mut artifacts = vec![&manifest.kernel, &manifest.initramfs, &manifest.cmdline];
    artifacts.extend(manifest.uki.as_ref().map(|u| &u.artifact));
    artifacts.extend(manifest.disk.as_ref().map(|d| &d.artifact));
    artifacts.extend(manifest.measurements.as_ref());
    for a in artifacts {
        println!("{:<20} {:>10} bytes  sha256 {}", a.file, a.size, a.sha256);
    }
    println!("image identity: sha256 {identity} (of manifest.json)");
    println!("kernel source: {}", manifest.kernel_source);
    println!("initramfs files: {}", manifest.initramfs_files.len());
    Ok(())
}
