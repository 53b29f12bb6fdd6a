//! `measurements.json`: for every target the image boots on, the values a verifier
//! compares evidence with, each with the inputs it depends on and how far it has been
//! confirmed. Every build writes it and lists it in the manifest, so the image identity
//! (the digest of the manifest) covers the reference values as well.
//!
//! - `qemu`: PCR 4, 9 and 15 of the direct boot `cvm run` performs (`memory_mib` guest
//!   memory; PCR 4 depends on it), confirmed against swtpm in the VM tests.
//! - `qemu_disk`: PCR 4, 9, 11 and 15 of the UKI booted from the GPT disk
//!   (`cvm run --disk`), confirmed the same way.
//! - `snp`: the launch digest of the direct boot with `kernel-hashes=on` and the pinned
//!   `OVMF.amdsev.fd`, for every vCPU count of [`SNP_VCPUS`] on every model of
//!   [`SNP_CPUS`] (`cvm measure --platform snp` computes any other shape).
//! - `tdx`: MRTD of the pinned `OVMF.inteltdx.ms.fd`. RTMR0–2 are not modelled (see
//!   [`TDX_NOT_MODELLED`]).
//! - `azure`, `gcp`: PCR 4, 9, 11 and 15 of the UKI booted from the exported disk by
//!   EDK2-derived cloud firmware, predicted from the event sequence OVMF follows and
//!   marked unconfirmed: no cloud is reachable from CI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::manifest::FirmwareInfo;
use crate::measure::qemu::{self, DirectBoot, PredictedEvent, QemuReference, QemuReferenceError};
use crate::measure::snp::{
    CpuType, KernelInputs, SnpLaunch, SnpMeasureError, VmmType, measure_snp,
};
use crate::measure::tdx::{PageOrder, TdxMeasureError, measure_mrtd};
use crate::sha256_hex;

/// Bumped on incompatible changes of this format.
pub const MEASUREMENTS_SCHEMA: u32 = 1;

/// The vCPU counts the SNP launch digest is computed for (each VMSA is measured, so the
/// digest depends on the count).
pub const SNP_VCPUS: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];

/// The vCPU models the SNP launch digest is computed for (the VMSA carries the model's
/// CPUID signature): QEMU's default for SNP and the two generations clouds offer.
pub const SNP_CPUS: [CpuType; 3] = [CpuType::EpycV4, CpuType::Milan, CpuType::Genoa];

/// SEV features of every VMSA: SNP active, as on current KVM hosts.
pub const SNP_GUEST_FEATURES: u64 = 0x1;

/// The TDX registers not predicted, and why.
pub const TDX_NOT_MODELLED: [(&str, &str); 3] = [
    (
        "rtmr0",
        "the TD HOB, the variable store and QEMU's ACPI tables: depends on the VM shape; \
         capture it from a golden boot",
    ),
    (
        "rtmr1",
        "TDVF's measurements of the boot path (the PCR 1-7 equivalents), not modelled; \
         capture it from a golden boot",
    ),
    (
        "rtmr2",
        "the EFI stub's measurements (the PCR 8-15 equivalents), not modelled; capture it \
         from a golden boot",
    ),
];

/// Which firmware the cloud targets boot with and what is known of their values.
const AZURE_FIRMWARE: &str = "Microsoft UEFI (EDK2-based) under the Hyper-V paravisor, \
     Secure Boot off unless the UKI is signed by a key its db trusts";
const GCP_FIRMWARE: &str =
    "Google's UEFI (EDK2-based), Secure Boot off unless the UKI is signed by a key its db trusts";
const CLOUD_CONFIRMATION: &str = "unconfirmed: predicted from the event sequence OVMF \
     follows for the same disk (confirmed in the VM tests); PCR 9, 11 and 15 come from \
     the stub, the kernel and PID1, not from the firmware. Check the first boot's event \
     log against these events";
const QEMU_CONFIRMATION: &str = "confirmed: the VM tests boot this path under QEMU with \
     OVMF and swtpm and compare these values with the vTPM's PCRs";

/// A pinned firmware image the hardware targets are measured with.
#[derive(Debug, Clone)]
pub struct PinnedImage {
    /// Debian package.
    pub package: String,
    /// Exact package version.
    pub version: String,
    /// The image's file name.
    pub file: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// Firmware for the targets whose launch measurements include it; a target without its
/// firmware is left out of the document.
#[derive(Debug, Clone, Default)]
pub struct TargetFirmware {
    /// `OVMF.amdsev.fd`.
    pub snp: Option<PinnedImage>,
    /// `OVMF.inteltdx.ms.fd`.
    pub tdx: Option<PinnedImage>,
}

/// What the values are computed from: the image's artifacts.
#[derive(Debug, Clone, Copy)]
pub struct ImageInputs<'a> {
    /// The bzImage.
    pub kernel: &'a [u8],
    /// The compressed initramfs.
    pub initramfs: &'a [u8],
    /// The initramfs's regular files, by absolute path (PID1's measurements).
    pub initramfs_files: &'a BTreeMap<String, Vec<u8>>,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The UKI, when the build made one.
    pub uki: Option<&'a [u8]>,
    /// The firmware the `qemu` targets run on.
    pub qemu_firmware: Option<&'a FirmwareInfo>,
}

/// The reference values of one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measurements {
    /// [`MEASUREMENTS_SCHEMA`].
    pub schema: u32,
    /// Direct boot under QEMU with a vTPM.
    pub qemu: QemuTarget,
    /// The UKI booted from the GPT disk under QEMU with a vTPM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qemu_disk: Option<QemuTarget>,
    /// SEV-SNP direct boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snp: Option<SnpTarget>,
    /// TDX.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tdx: Option<TdxTarget>,
    /// Azure confidential VM booting the exported VHD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub azure: Option<CloudTarget>,
    /// GCP confidential VM booting the exported tar.gz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<CloudTarget>,
}

/// A `qemu` target: the PCRs and the events they are made of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuTarget {
    /// The firmware whose event sequence the values follow.
    pub firmware: Option<FirmwareInfo>,
    /// How the values were confirmed.
    pub confirmation: String,
    /// PCRs, events and inputs (guest memory for a direct boot; vCPUs do not matter).
    pub reference: QemuReference,
}

/// A pinned firmware, as the document names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareRef {
    /// Debian package.
    pub package: String,
    /// Exact package version.
    pub version: String,
    /// File name of the image.
    pub file: String,
    /// sha256 of the image.
    pub sha256: String,
}

impl From<&PinnedImage> for FirmwareRef {
    fn from(p: &PinnedImage) -> Self {
        Self {
            package: p.package.clone(),
            version: p.version.clone(),
            file: p.file.clone(),
            sha256: sha256_hex(&p.bytes),
        }
    }
}

/// The `snp` target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpTarget {
    /// The firmware measured into the digest.
    pub firmware: FirmwareRef,
    /// The VMM (its reset vector and VMSA conventions).
    pub vmm: String,
    /// SEV features of every VMSA, hex.
    pub guest_features: String,
    /// Kernel, initrd and command line are in the digest through QEMU's
    /// `kernel-hashes=on` table.
    pub kernel_hashes: bool,
    /// One digest per vCPU count and model.
    pub launch_digests: Vec<SnpDigest>,
}

/// The SNP launch digest of one VM shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpDigest {
    /// vCPUs.
    pub vcpus: u32,
    /// QEMU vCPU model.
    pub vcpu_type: String,
    /// The launch digest (SHA-384), hex.
    pub measurement: String,
}

/// The `tdx` target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxTarget {
    /// The firmware MRTD covers.
    pub firmware: FirmwareRef,
    /// Page-add and extend order assumed (upstream KVM and QEMU).
    pub page_order: String,
    /// MRTD (SHA-384), hex.
    pub mrtd: String,
    /// Registers not predicted, and why.
    pub not_modelled: BTreeMap<String, String>,
}

/// An `azure` or `gcp` target: the vTPM PCRs of the UKI boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudTarget {
    /// The firmware the values assume.
    pub firmware: String,
    /// How far the values are confirmed.
    pub confirmation: String,
    /// sha256 of the UKI (vCPUs, memory and disk size do not enter these PCRs).
    pub uki_sha256: String,
    /// Expected sha256 PCR values by index.
    pub pcrs: BTreeMap<u32, String>,
    /// The firmware and stub events of PCR 4, 9 and 11, in log order.
    pub events: Vec<PredictedEvent>,
    /// PID1's events in PCR 15, in log order.
    pub runtime_events: Vec<PredictedEvent>,
}

/// Reference values that could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum MeasurementsError {
    /// The vTPM model refused the kernel, initrd or UKI.
    #[error("PCR reference values: {0}")]
    Qemu(#[from] QemuReferenceError),
    /// The SNP launch digest could not be computed.
    #[error("SNP launch digest of {vcpus} × {cpu}: {source}")]
    Snp {
        /// vCPUs.
        vcpus: u32,
        /// Model.
        cpu: CpuType,
        /// The cause.
        #[source]
        source: SnpMeasureError,
    },
    /// MRTD could not be computed.
    #[error("TDX MRTD of {file}: {source}")]
    Tdx {
        /// The firmware file.
        file: String,
        /// The cause.
        #[source]
        source: TdxMeasureError,
    },
}

/// Compute the reference values of every target `firmware` allows.
pub fn compute(
    image: &ImageInputs<'_>,
    firmware: &TargetFirmware,
) -> Result<Measurements, MeasurementsError> {
    let direct = DirectBoot {
        kernel: image.kernel,
        initrd: Some(image.initramfs),
        cmdline: image.cmdline,
        memory_mib: qemu::DEFAULT_MEMORY_MIB,
    };
    let files = Some(image.initramfs_files);
    let qemu_target = |reference| QemuTarget {
        firmware: image.qemu_firmware.cloned(),
        confirmation: QEMU_CONFIRMATION.to_owned(),
        reference,
    };
    let disk = image
        .uki
        .map(|uki| -> Result<QemuReference, MeasurementsError> {
            let boot = qemu::uki_events(uki).map_err(QemuReferenceError::from)?;
            Ok(qemu::uki_reference(boot, files)?)
        })
        .transpose()?;
    let cloud = |firmware: &str, r: &QemuReference| CloudTarget {
        firmware: firmware.to_owned(),
        confirmation: CLOUD_CONFIRMATION.to_owned(),
        uki_sha256: r.inputs.uki_sha256.clone().unwrap_or_default(),
        pcrs: r.pcrs.clone(),
        events: r.events.clone(),
        runtime_events: r.runtime_events.clone(),
    };
    Ok(Measurements {
        schema: MEASUREMENTS_SCHEMA,
        qemu: qemu_target(qemu::reference(&direct, files)?),
        azure: disk.as_ref().map(|r| cloud(AZURE_FIRMWARE, r)),
        gcp: disk.as_ref().map(|r| cloud(GCP_FIRMWARE, r)),
        qemu_disk: disk.map(qemu_target),
        snp: firmware.snp.as_ref().map(|fw| snp(image, fw)).transpose()?,
        tdx: firmware.tdx.as_ref().map(tdx).transpose()?,
    })
}

fn snp(image: &ImageInputs<'_>, fw: &PinnedImage) -> Result<SnpTarget, MeasurementsError> {
    let mut launch_digests = Vec::with_capacity(SNP_VCPUS.len() * SNP_CPUS.len());
    for cpu in SNP_CPUS {
        for vcpus in SNP_VCPUS {
            let launch = SnpLaunch {
                firmware: &fw.bytes,
                vcpus,
                cpu,
                guest_features: SNP_GUEST_FEATURES,
                vmm: VmmType::Qemu,
                kernel: Some(KernelInputs {
                    kernel: image.kernel,
                    initrd: image.initramfs,
                    cmdline: image.cmdline,
                }),
            };
            let digest = measure_snp(&launch).map_err(|source| MeasurementsError::Snp {
                vcpus,
                cpu,
                source,
            })?;
            launch_digests.push(SnpDigest {
                vcpus,
                vcpu_type: cpu.to_string(),
                measurement: hex::encode(digest),
            });
        }
    }
    Ok(SnpTarget {
        firmware: fw.into(),
        vmm: "qemu".to_owned(),
        guest_features: format!("{SNP_GUEST_FEATURES:#x}"),
        kernel_hashes: true,
        launch_digests,
    })
}

fn tdx(fw: &PinnedImage) -> Result<TdxTarget, MeasurementsError> {
    let mrtd = measure_mrtd(&fw.bytes, PageOrder::SinglePass).map_err(|source| {
        MeasurementsError::Tdx {
            file: fw.file.clone(),
            source,
        }
    })?;
    Ok(TdxTarget {
        firmware: fw.into(),
        page_order: "single".to_owned(),
        mrtd: hex::encode(mrtd),
        not_modelled: TDX_NOT_MODELLED
            .iter()
            .map(|(r, why)| ((*r).to_owned(), (*why).to_owned()))
            .collect(),
    })
}
