//! `cvm measure`: reference values computed offline.
//!
//! `--platform snp`: the SEV-SNP launch digest. Its flags mirror the `sev-snp-measure`
//! tool; without them it measures the image `cvm build` wrote, booted with the pinned
//! `OVMF.amdsev.fd` as `cvm`'s SNP command line does (EPYC-v4, guest features 0x1).
//!
//! `--platform qemu`: the vTPM PCRs (4, 9 and 15, sha256) of the image booted by
//! `cvm run` with `--memory` MiB, or with `--boot disk` (4, 9, 11 and 15) of its UKI
//! booted from its GPT disk by `cvm run --disk`: see `cvm_image::measure::qemu`.
//!
//! `--platform tdx`: MRTD of the pinned `OVMF.inteltdx.ms.fd` (or `--ovmf`). RTMR0 depends
//! on the VM shape and QEMU's ACPI tables and is captured from a golden boot instead.

use std::path::PathBuf;

use anyhow::Context as _;
use cvm_image::measure::qemu::{self, DirectBoot, QemuReference};
use cvm_image::measure::rvps;
use cvm_image::measure::snp::{CpuType, KernelInputs, SnpLaunch, VmmType, measure_snp};
use cvm_image::measure::tdx::{PageOrder, measure_mrtd};
use cvm_ovmf::pinned::{self, FetchOptions};
use serde::Serialize;

use crate::paths;

/// Arguments of `cvm measure`.
#[derive(Debug, clap::Args)]
pub struct MeasureArgs {
    /// Platform to compute reference values for.
    #[arg(long, value_parser = ["snp", "tdx", "qemu"])]
    pub platform: String,
    /// qemu: how the image boots: `direct` (QEMU loads the kernel) or `disk` (the
    /// firmware boots the UKI from the image's GPT disk, `cvm run --disk`).
    #[arg(long, default_value = "direct", value_parser = ["direct", "disk"])]
    pub boot: String,
    /// qemu: guest memory in MiB (the initrd address, and so PCR 4, depends on it).
    #[arg(long, default_value_t = cvm_image::measure::qemu::DEFAULT_MEMORY_MIB)]
    pub memory: u64,
    /// TDX: order of page adds and extends; `single` as upstream KVM, `two` for older stacks.
    #[arg(long, default_value = "single", value_parser = ["single", "two"])]
    pub page_order: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 2)]
    pub vcpus: u32,
    /// vCPU model (EPYC, EPYC-v4, EPYC-Rome, EPYC-Milan, EPYC-Genoa, EPYC-Turin, …).
    #[arg(long, default_value = "EPYC-v4")]
    pub vcpu_type: CpuType,
    /// SEV features of every VMSA, hex (0x1: SNP on current hosts; 0x21 adds DebugSwap).
    #[arg(long, default_value = "0x1", value_parser = parse_u64)]
    pub guest_features: u64,
    /// VMM: qemu or ec2.
    #[arg(long, default_value = "qemu")]
    pub vmm_type: VmmType,
    /// Firmware [default: the pinned OVMF.amdsev.fd, see `cvm firmware`].
    #[arg(long, value_name = "PATH")]
    pub ovmf: Option<PathBuf>,
    /// Kernel [default: the image's bzImage].
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initrd [default: the image's initramfs, or none when --kernel is given].
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: the image's, or empty when --kernel is given].
    #[arg(long)]
    pub append: Option<String>,
    /// qemu: the init-data the guest is started with (`cvm initdata`); pins PCR 8.
    #[arg(long, value_name = "PATH")]
    pub initdata: Option<PathBuf>,
    /// Image folder whose kernel, initramfs and command line are measured by default.
    #[arg(long, default_value = paths::DEFAULT_IMAGE_DIR)]
    pub image: PathBuf,
    /// Folders with local copies of the pinned firmware packages.
    #[arg(long, value_name = "DIR")]
    pub debs: Vec<PathBuf>,
    /// Print one JSON document instead of the bare hex digest.
    #[arg(long)]
    pub json: bool,
    /// Print the reference values as a Trustee RVPS registration message (`sample`
    /// provenance) instead.
    #[arg(long, conflicts_with = "json")]
    pub rvps: bool,
}

impl MeasureArgs {
    /// The arguments of `cvm measure --platform qemu --image IMAGE --memory MIB`.
    pub fn for_image(image: PathBuf, memory: u64, boot: &str) -> Self {
        Self {
            platform: "qemu".into(),
            boot: boot.to_owned(),
            memory,
            page_order: "single".into(),
            vcpus: 2,
            vcpu_type: CpuType::EpycV4,
            guest_features: 0x1,
            vmm_type: VmmType::Qemu,
            ovmf: None,
            kernel: None,
            initrd: None,
            append: None,
            initdata: None,
            image,
            debs: Vec::new(),
            json: false,
            rvps: false,
        }
    }
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number (decimal or 0x-prefixed hex)"))
}

#[derive(Debug, Serialize)]
struct Report {
    platform: &'static str,
    measurement: String,
    vcpus: u32,
    vcpu_type: String,
    guest_features: String,
    vmm_type: String,
    ovmf: PathBuf,
    ovmf_sha256: String,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Option<String>,
}

fn read(what: &str, path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("read {what} {}", path.display()))
}

#[derive(Debug, Serialize)]
struct TdxReport {
    platform: &'static str,
    mrtd: String,
    page_order: String,
    ovmf: PathBuf,
    ovmf_sha256: String,
    rtmr0: &'static str,
}

/// The firmware to measure: `--ovmf`, or the pinned build for the platform.
fn firmware(
    args: &MeasureArgs,
    pinned_fw: &pinned::PinnedFirmware,
) -> anyhow::Result<(PathBuf, Vec<u8>)> {
    let path = match &args.ovmf {
        Some(p) => p.clone(),
        None => {
            let opts = FetchOptions {
                download: true,
                local_dirs: super::firmware::local_dirs(&args.debs),
            };
            pinned::fetch(pinned_fw, &paths::cache_dir(), &opts)?
        }
    };
    let bytes = read("firmware", &path)?;
    Ok((path, bytes))
}

/// The targets of `measurements.json` the broker can appraise evidence against.
pub const RECORDED_TARGETS: [&str; 4] = ["qemu", "qemu-disk", "snp", "tdx"];

/// The reference document (as `cvm measure --json` prints it) that the image folder's
/// `measurements.json` records for `target`, and the image identity. The file must be
/// the one the manifest lists: reference values are never taken from a file that does
/// not match the image they claim to describe.
pub fn recorded_reference(
    image: &std::path::Path,
    target: &str,
    vcpus: u32,
    cpu: CpuType,
) -> anyhow::Result<(String, serde_json::Value)> {
    use cvm_image::measurements::Measurements;
    let manifest_path = image.join(cvm_image::files::MANIFEST);
    // One read: the identity and the listing are of the same bytes.
    let manifest_bytes = read("image manifest", &manifest_path)?;
    let identity = cvm_image::identity(&manifest_bytes);
    let m: cvm_image::Manifest = serde_json::from_slice(&manifest_bytes)
        .with_context(|| format!("{} is malformed", manifest_path.display()))?;
    let listed = m.measurements.as_ref().with_context(|| {
        format!(
            "image {} has no measurements.json (built by an older cvm): rebuild it",
            image.display()
        )
    })?;
    let path = image.join(&listed.file);
    let bytes = read("reference values", &path)?;
    let actual = cvm_image::sha256_hex(&bytes);
    anyhow::ensure!(
        actual == listed.sha256,
        "{} has sha256 {actual}, not the {} the image's manifest lists: refusing its reference values",
        path.display(),
        listed.sha256
    );
    let doc: Measurements = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is malformed", path.display()))?;
    let missing = || anyhow::anyhow!("{} has no {target} target", path.display());
    let values = match target {
        "qemu" => serde_json::to_value(&doc.qemu.reference)?,
        "qemu-disk" => serde_json::to_value(&doc.qemu_disk.ok_or_else(missing)?.reference)?,
        "snp" => {
            let snp = doc.snp.ok_or_else(missing)?;
            let shape = cpu.to_string();
            let d = snp
                .launch_digests
                .iter()
                .find(|d| d.vcpus == vcpus && d.vcpu_type == shape)
                .with_context(|| {
                    format!(
                        "{} has no SNP launch digest for {vcpus} vCPUs of {shape}: \
                         compute it with `cvm measure --platform snp --vcpus {vcpus} --vcpu-type {shape}`",
                        path.display()
                    )
                })?;
            serde_json::json!({
                "platform": "snp",
                "measurement": d.measurement,
                "vcpus": vcpus,
                "vcpu_type": shape,
                "guest_features": snp.guest_features,
                "ovmf_sha256": snp.firmware.sha256,
            })
        }
        "tdx" => {
            let tdx = doc.tdx.ok_or_else(missing)?;
            serde_json::json!({
                "platform": "tdx",
                "mrtd": tdx.mrtd,
                "page_order": tdx.page_order,
                "ovmf_sha256": tdx.firmware.sha256,
            })
        }
        other => anyhow::bail!(
            "unknown target {other:?}; known: {}",
            RECORDED_TARGETS.join(", ")
        ),
    };
    Ok((identity, values))
}

/// Run `cvm measure`.
pub fn run(args: MeasureArgs) -> anyhow::Result<()> {
    match args.platform.as_str() {
        "tdx" => run_tdx(&args),
        "qemu" => run_qemu(&args),
        _ => run_snp(args),
    }
}

fn run_tdx(args: &MeasureArgs) -> anyhow::Result<()> {
    let (ovmf, firmware) = firmware(args, &pinned::INTELTDX)?;
    let order = match args.page_order.as_str() {
        "two" => PageOrder::TwoPass,
        _ => PageOrder::SinglePass,
    };
    let mrtd = hex::encode(measure_mrtd(&firmware, order)?);
    if args.rvps {
        let values = [("mr_td".to_owned(), vec![mrtd])].into_iter().collect();
        return super::print_json(&rvps::sample_message(&values));
    }
    if !args.json {
        println!("{mrtd}");
        return Ok(());
    }
    super::print_json(&TdxReport {
        platform: "tdx",
        mrtd,
        page_order: args.page_order.clone(),
        ovmf_sha256: cvm_image::sha256_hex(&firmware),
        ovmf,
        rtmr0: "not computed: depends on the VM shape and QEMU's ACPI tables; capture it from a golden boot",
    })
}

fn run_snp(args: MeasureArgs) -> anyhow::Result<()> {
    let (ovmf, firmware) = firmware(&args, &pinned::AMDSEV)?;
    // Explicit inputs win; with none, measure the image folder.
    let (kernel, initrd, append) = match &args.kernel {
        Some(k) => (
            Some(k.clone()),
            args.initrd.clone(),
            Some(args.append.clone().unwrap_or_default()),
        ),
        None => {
            let m = super::read_manifest(&args.image)?;
            super::verify_image(&args.image, &m)?;
            (
                Some(args.image.join(&m.kernel.file)),
                Some(
                    args.initrd
                        .clone()
                        .unwrap_or_else(|| args.image.join(&m.initramfs.file)),
                ),
                Some(args.append.clone().unwrap_or(m.cmdline_text)),
            )
        }
    };
    let kernel_bytes = kernel.as_deref().map(|p| read("kernel", p)).transpose()?;
    let initrd_bytes = initrd
        .as_deref()
        .map(|p| read("initrd", p))
        .transpose()?
        .unwrap_or_default();
    let launch = SnpLaunch {
        firmware: &firmware,
        vcpus: args.vcpus,
        cpu: args.vcpu_type,
        guest_features: args.guest_features,
        vmm: args.vmm_type,
        kernel: kernel_bytes.as_deref().map(|k| KernelInputs {
            kernel: k,
            initrd: &initrd_bytes,
            cmdline: append.as_deref().unwrap_or_default(),
        }),
    };
    let digest = hex::encode(measure_snp(&launch)?);
    if args.rvps {
        let values = [("snp_launch_measurement".to_owned(), vec![digest])]
            .into_iter()
            .collect();
        return super::print_json(&rvps::sample_message(&values));
    }
    if !args.json {
        println!("{digest}");
        return Ok(());
    }
    super::print_json(&Report {
        platform: "snp",
        measurement: digest,
        vcpus: args.vcpus,
        vcpu_type: args.vcpu_type.to_string(),
        guest_features: format!("{:#x}", args.guest_features),
        vmm_type: format!("{:?}", args.vmm_type).to_lowercase(),
        ovmf_sha256: cvm_image::sha256_hex(&firmware),
        ovmf,
        kernel,
        initrd,
        append,
    })
}

/// The boot inputs: explicit flags win; with none, the image folder.
fn boot_inputs(args: &MeasureArgs) -> anyhow::Result<(Vec<u8>, Option<Vec<u8>>, String)> {
    match &args.kernel {
        Some(k) => Ok((
            read("kernel", k)?,
            args.initrd
                .as_deref()
                .map(|p| read("initrd", p))
                .transpose()?,
            args.append.clone().unwrap_or_default(),
        )),
        None => {
            let m = super::read_manifest(&args.image)?;
            super::verify_image(&args.image, &m)?;
            let initrd = args
                .initrd
                .clone()
                .unwrap_or_else(|| args.image.join(&m.initramfs.file));
            Ok((
                read("kernel", &args.image.join(&m.kernel.file))?,
                Some(read("initrd", &initrd)?),
                args.append.clone().unwrap_or(m.cmdline_text),
            ))
        }
    }
}

/// The reference values of the image (or explicit inputs) on the `qemu` platform.
pub fn qemu_reference(args: &MeasureArgs) -> anyhow::Result<QemuReference> {
    // PCR 15 is predicted only for a cvm initramfs (one that holds PID1).
    let cvm_files = |initrd: &[u8]| {
        cvm_image::initramfs_files(initrd)
            .ok()
            .filter(|f| f.contains_key("/init"))
    };
    let mut reference = if args.boot == "disk" {
        let m = super::read_manifest(&args.image)?;
        super::verify_image(&args.image, &m)?;
        let uki = m.uki.as_ref().with_context(|| {
            format!(
                "image {} has no UKI (it was built with --no-uki)",
                args.image.display()
            )
        })?;
        let bytes = read("UKI", &args.image.join(&uki.artifact.file))?;
        anyhow::ensure!(
            cvm_image::sha256_hex(&bytes) == uki.artifact.sha256,
            "UKI {} does not match the image's manifest",
            args.image.join(&uki.artifact.file).display()
        );
        let boot = qemu::uki_events(&bytes)?;
        let files = cvm_files(&boot.initrd);
        qemu::uki_reference(boot, files.as_ref())?
    } else {
        let (kernel, initrd, cmdline) = boot_inputs(args)?;
        let files = initrd.as_deref().and_then(cvm_files);
        let boot = DirectBoot {
            kernel: &kernel,
            initrd: initrd.as_deref(),
            cmdline: &cmdline,
            memory_mib: args.memory,
        };
        qemu::reference(&boot, files.as_ref())?
    };
    if let Some(path) = &args.initdata {
        let body = std::fs::read_to_string(path)
            .with_context(|| format!("read init-data {}", path.display()))?;
        let data = cvm_kbs_client::initdata::InitData::parse(&body)
            .with_context(|| format!("init-data {}", path.display()))?;
        reference.pcrs.insert(
            cvm_kbs_client::initdata::TPM_PCR,
            hex::encode(data.tpm_pcr8()),
        );
        reference.inputs.initdata_digest = Some(hex::encode(&data.digest));
    }
    Ok(reference)
}

fn run_qemu(args: &MeasureArgs) -> anyhow::Result<()> {
    let reference = qemu_reference(args)?;
    if args.rvps {
        let values = reference
            .pcrs
            .iter()
            .map(|(pcr, v)| (rvps::tpm_pcr_name(*pcr), vec![v.clone()]))
            .collect();
        return super::print_json(&rvps::sample_message(&values));
    }
    if args.json {
        return super::print_json(&reference);
    }
    for (pcr, value) in &reference.pcrs {
        println!("pcr{pcr:<2} sha256 {value}");
    }
    Ok(())
}
