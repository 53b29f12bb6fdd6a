//! The vTPM PCRs of a `qemu`-platform boot, computed offline: QEMU direct kernel boot
//! with OVMF and the kernel's EFI stub (PCR 4 and PCR 9), and PID1's runtime
//! measurements (PCR 15, see [`super::runtime`]).
//!
//! Measured on Debian's OVMF (`OVMF_CODE_4M.fd`) with QEMU 10 and Linux 6.12's EFI stub:
//! - PCR 4: the kernel's Authenticode hash (EV_EFI_BOOT_SERVICES_APPLICATION), then
//!   "Calling EFI Application from Boot Option" (EV_EFI_ACTION), then a separator.
//!   QEMU hands OVMF the bzImage with its setup header patched for the boot (loader
//!   type, heap, command-line pointer, initrd address and size), and that patched image
//!   is what OVMF hashes. The initrd address depends on the guest's memory below 4 GiB,
//!   so PCR 4 depends on the memory size and the initrd size.
//! - PCR 9: the EFI stub measures the load options (the command line OVMF built:
//!   `<cmdline> initrd=initrd`, UTF-16LE with its NUL) and then the initrd, each a
//!   tagged event (EV_EVENT_TAG) whose digest is over the raw bytes.
//!
//! The UEFI disk boot (`cvm run --disk`: OVMF starts `EFI/BOOT/BOOTX64.EFI`, the UKI,
//! whose systemd stub 254 starts the kernel), read from the firmware log of a real boot:
//! - PCR 4: "Calling EFI Application from Boot Option", a separator, the UKI's
//!   Authenticode hash, then the kernel's (the stub loads the `.linux` section through
//!   `LoadImage`, unpatched). No guest-memory dependence.
//! - PCR 9: the load options the stub hands the kernel (the `.cmdline` section,
//!   UTF-16LE with its NUL, no `initrd=`), then the `.initrd` section.
//! - PCR 11: the stub's section measurements ([`super::uki::pcr11`]).
//!
//! EDK2-based cloud firmware follows the same sequence, so the same events are the
//! reference for the `azure` and `gcp` targets; there they are unconfirmed (no cloud
//! here), while PCR 9 and 11 come from the stub and the kernel and do not depend on it.

use sha2::{Digest as _, Sha256};

use super::authenticode::{PeError, authenticode};

/// The EV_EFI_ACTION OVMF logs before starting the kernel.
pub const CALLING_EFI_APPLICATION: &str = "Calling EFI Application from Boot Option";
/// What an EV_SEPARATOR measures: four zero bytes.
pub const SEPARATOR: [u8; 4] = [0; 4];

/// QEMU's `ACPI_DATA_SIZE` reserve below the top of low memory (x86 loader).
const ACPI_DATA_SIZE: u64 = 0x20000 + 0x8000;
/// Where QEMU puts the real-mode code and the command line for protocol ≥ 2.02.
const REAL_ADDR: u32 = 0x10000;
const CMDLINE_ADDR: u32 = 0x20000;
/// q35: RAM below 4 GiB is all of it up to 2.75 GiB, else 2 GiB.
const Q35_LOWMEM_SPLIT: u64 = 0xb000_0000;
const Q35_LOWMEM: u64 = 0x8000_0000;

/// A kernel whose boot QEMU's loader would refuse or that this model does not cover.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QemuBootError {
    /// Not a bzImage with a modern boot protocol.
    #[error("kernel is not a bzImage with boot protocol 2.02 or later")]
    NotBzImage,
    /// The initrd does not fit below the initrd limit.
    #[error("initrd of {0} bytes does not fit in low memory")]
    InitrdTooLarge(usize),
    /// The kernel is not a PE image (no EFI stub).
    #[error("kernel has no EFI stub")]
    Pe(#[from] PeError),
    /// The UKI lacks a section the boot needs.
    #[error("the UKI has no usable {0} section")]
    UkiSection(&'static str),
}

/// The inputs of a direct kernel boot.
#[derive(Debug, Clone, Copy)]
pub struct DirectBoot<'a> {
    /// The bzImage file.
    pub kernel: &'a [u8],
    /// The initrd file, if any.
    pub initrd: Option<&'a [u8]>,
    /// The `-append` string.
    pub cmdline: &'a str,
    /// Guest memory (`-m`), MiB.
    pub memory_mib: u64,
}

/// The bzImage as QEMU's x86 loader passes it to the firmware: the setup header
/// patched the way `x86_load_linux` does for protocol ≥ 2.02 kernels.
pub fn patched_kernel(boot: &DirectBoot<'_>) -> Result<Vec<u8>, QemuBootError> {
    let k = boot.kernel;
    let word = |at: usize| k.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let dword = |at: usize| {
        k.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if dword(0x202) != Some(0x5372_6448) {
        return Err(QemuBootError::NotBzImage);
    }
    let protocol = word(0x206).ok_or(QemuBootError::NotBzImage)?;
    let loadflags = *k.get(0x211).ok_or(QemuBootError::NotBzImage)?;
    if protocol < 0x202 || loadflags & 0x01 == 0 {
        return Err(QemuBootError::NotBzImage);
    }
    let xloadflags = word(0x236).unwrap_or(0);
    let mut out = k.to_vec();
    out[0x210] = 0xb0; // type_of_loader: QEMU
    out[0x211] |= 0x80; // CAN_USE_HEAP
    out[0x224..0x226].copy_from_slice(&((CMDLINE_ADDR - REAL_ADDR - 0x200) as u16).to_le_bytes());
    out[0x228..0x22c].copy_from_slice(&CMDLINE_ADDR.to_le_bytes());
    if let Some(initrd) = boot.initrd {
        let ram = boot.memory_mib << 20;
        let below_4g = if ram >= Q35_LOWMEM_SPLIT {
            Q35_LOWMEM
        } else {
            ram
        };
        // XLF_CAN_BE_LOADED_ABOVE_4G lifts the header's initrd_addr_max.
        let mut initrd_max: u64 = if protocol >= 0x20c && xloadflags & 0x2 != 0 {
            u64::from(u32::MAX)
        } else {
            u64::from(dword(0x22c).ok_or(QemuBootError::NotBzImage)?)
        };
        if initrd_max >= below_4g.saturating_sub(ACPI_DATA_SIZE) {
            initrd_max = below_4g.saturating_sub(ACPI_DATA_SIZE + 1);
        }
        let size = initrd.len() as u64;
        if size >= initrd_max {
            return Err(QemuBootError::InitrdTooLarge(initrd.len()));
        }
        let addr = ((initrd_max - size) & !4095) as u32;
        out[0x218..0x21c].copy_from_slice(&addr.to_le_bytes());
        out[0x21c..0x220].copy_from_slice(&(size as u32).to_le_bytes());
    }
    Ok(out)
}

/// One event a reference value is made of.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PredictedEvent {
    /// The PCR.
    pub pcr: u32,
    /// What was measured.
    pub description: String,
    /// Lower-case hex of its sha256 digest.
    pub sha256: String,
}

/// Replay `events` (all for one PCR) from zero.
pub fn replay(events: &[PredictedEvent]) -> [u8; 32] {
    let mut pcr = [0u8; 32];
    for e in events {
        let mut h = Sha256::new();
        h.update(pcr);
        // Digests come from this module as 64 hex characters.
        h.update(hex::decode(&e.sha256).unwrap_or_default());
        pcr = h.finalize().into();
    }
    pcr
}

/// The value of every PCR `events` touch, and of the runtime PCR when PID1's
/// `runtime_events` are predicted.
fn pcr_values(
    events: &[PredictedEvent],
    runtime_events: &[PredictedEvent],
) -> std::collections::BTreeMap<u32, String> {
    let mut pcrs = std::collections::BTreeMap::new();
    for e in events {
        pcrs.entry(e.pcr).or_insert_with(|| {
            let of: Vec<PredictedEvent> =
                events.iter().filter(|x| x.pcr == e.pcr).cloned().collect();
            hex::encode(replay(&of))
        });
    }
    if !runtime_events.is_empty() {
        pcrs.insert(
            super::runtime::RUNTIME_PCR,
            hex::encode(replay(runtime_events)),
        );
    }
    pcrs
}

/// The PCR 4 events of a direct boot.
pub fn pcr4_events(boot: &DirectBoot<'_>) -> Result<Vec<PredictedEvent>, QemuBootError> {
    let kernel = authenticode::<Sha256>(&patched_kernel(boot)?)?;
    Ok(vec![
        PredictedEvent {
            pcr: 4,
            description:
                "EV_EFI_BOOT_SERVICES_APPLICATION: Authenticode of the kernel as QEMU passes it"
                    .into(),
            sha256: hex::encode(kernel),
        },
        PredictedEvent {
            pcr: 4,
            description: format!("EV_EFI_ACTION: {CALLING_EFI_APPLICATION}"),
            sha256: hex::encode(Sha256::digest(CALLING_EFI_APPLICATION)),
        },
        PredictedEvent {
            pcr: 4,
            description: "EV_SEPARATOR".into(),
            sha256: hex::encode(Sha256::digest(SEPARATOR)),
        },
    ])
}

/// The load options OVMF gives the kernel for `cmdline`: UTF-16LE with a NUL, and
/// ` initrd=initrd` appended when there is an initrd.
pub fn load_options(cmdline: &str, initrd: bool) -> Vec<u8> {
    let text = if initrd {
        format!("{cmdline} initrd=initrd\0")
    } else {
        format!("{cmdline}\0")
    };
    text.encode_utf16().flat_map(u16::to_le_bytes).collect()
}

/// The PCR 9 events of a direct boot (the EFI stub's tagged events).
pub fn pcr9_events(boot: &DirectBoot<'_>) -> Vec<PredictedEvent> {
    let mut events = vec![PredictedEvent {
        pcr: 9,
        description: "EV_EVENT_TAG: LOADED_IMAGE::LoadOptions (the kernel command line)".into(),
        sha256: hex::encode(Sha256::digest(load_options(
            boot.cmdline,
            boot.initrd.is_some(),
        ))),
    }];
    if let Some(initrd) = boot.initrd {
        events.push(PredictedEvent {
            pcr: 9,
            description: "EV_EVENT_TAG: Linux initrd".into(),
            sha256: hex::encode(Sha256::digest(initrd)),
        });
    }
    events
}

/// The PCR 4, 9 and 11 events of a UEFI boot of `uki` from disk, and the UKI's
/// command line and initrd (for the runtime events).
pub fn uki_events(uki: &[u8]) -> Result<UkiBoot, QemuBootError> {
    let sections = crate::uki::measured_sections(uki)?;
    let section = |name: &'static str| {
        sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.as_slice())
            .ok_or(QemuBootError::UkiSection(name))
    };
    let kernel = section(".linux")?;
    let initrd = section(".initrd")?;
    let cmdline = String::from_utf8(section(".cmdline")?.to_vec())
        .map_err(|_| QemuBootError::UkiSection(".cmdline"))?;
    let event = |pcr, description: String, digest: &[u8]| PredictedEvent {
        pcr,
        description,
        sha256: hex::encode(digest),
    };
    let mut events = vec![
        event(
            4,
            format!("EV_EFI_ACTION: {CALLING_EFI_APPLICATION}"),
            &Sha256::digest(CALLING_EFI_APPLICATION),
        ),
        event(4, "EV_SEPARATOR".into(), &Sha256::digest(SEPARATOR)),
        event(
            4,
            "EV_EFI_BOOT_SERVICES_APPLICATION: Authenticode of the UKI".into(),
            &authenticode::<Sha256>(uki)?,
        ),
        event(
            4,
            "EV_EFI_BOOT_SERVICES_APPLICATION: Authenticode of the UKI's kernel".into(),
            &authenticode::<Sha256>(kernel)?,
        ),
        event(
            9,
            "EV_EVENT_TAG: LOADED_IMAGE::LoadOptions (the UKI's command line)".into(),
            &Sha256::digest(load_options(&cmdline, false)),
        ),
        event(
            9,
            "EV_EVENT_TAG: Linux initrd".into(),
            &Sha256::digest(initrd),
        ),
    ];
    let known = super::uki::MEASURED_SECTIONS;
    for name in known {
        if let Some((_, data)) = sections.iter().find(|(n, _)| n == name) {
            let mut with_nul = name.as_bytes().to_vec();
            with_nul.push(0);
            events.push(event(
                11,
                format!("EV_IPL: {name} (name)"),
                &Sha256::digest(&with_nul),
            ));
            events.push(event(11, format!("EV_IPL: {name}"), &Sha256::digest(data)));
        }
    }
    Ok(UkiBoot {
        events,
        uki_sha256: hex::encode(Sha256::digest(uki)),
        kernel_sha256: hex::encode(Sha256::digest(kernel)),
        initrd: initrd.to_vec(),
        cmdline,
    })
}

/// What [`uki_events`] found.
#[derive(Debug, Clone)]
pub struct UkiBoot {
    /// PCR 4, 9 and 11 events, in log order per PCR.
    pub events: Vec<PredictedEvent>,
    /// sha256 of the UKI.
    pub uki_sha256: String,
    /// sha256 of the `.linux` section.
    pub kernel_sha256: String,
    /// The `.initrd` section.
    pub initrd: Vec<u8>,
    /// The `.cmdline` section.
    pub cmdline: String,
}

/// Reference values of the UEFI disk boot [`uki_events`] describes; `initramfs_files`
/// are its initrd's files when that is a cvm initramfs (PCR 15 is then predicted too).
pub fn uki_reference(
    boot: UkiBoot,
    initramfs_files: Option<&std::collections::BTreeMap<String, Vec<u8>>>,
) -> Result<QemuReference, QemuReferenceError> {
    let runtime_events = match initramfs_files {
        Some(files) => super::runtime::boot_events(files, &boot.cmdline)?,
        None => Vec::new(),
    };
    Ok(QemuReference {
        platform: "qemu".into(),
        pcrs: pcr_values(&boot.events, &runtime_events),
        events: boot.events,
        runtime_events,
        inputs: QemuInputs {
            boot: BootPath::UkiDisk,
            uki_sha256: Some(boot.uki_sha256),
            initdata_digest: None,
            kernel_sha256: boot.kernel_sha256,
            initrd_sha256: Some(hex::encode(Sha256::digest(&boot.initrd))),
            cmdline: boot.cmdline,
            memory_mib: None,
        },
    })
}

/// How the firmware reached the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootPath {
    /// QEMU's `-kernel`/`-initrd`/`-append`.
    #[default]
    Direct,
    /// OVMF boots the UKI from the GPT disk.
    UkiDisk,
}

/// The guest memory `cvm run` gives a VM by default, MiB (PCR 4 depends on it).
pub const DEFAULT_MEMORY_MIB: u64 = 1024;

/// Reference values of a `qemu`-platform boot: the sha256 PCRs a verifier checks and the
/// events they are made of.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuReference {
    /// Always `qemu`.
    pub platform: String,
    /// Expected sha256 PCR values by index (4, 9, and 15 when the initramfs holds PID1).
    pub pcrs: std::collections::BTreeMap<u32, String>,
    /// The firmware and EFI-stub events of PCR 4 and 9 (and 11 for a UKI), in log order.
    pub events: Vec<PredictedEvent>,
    /// PID1's boot events in the runtime PCR, in log order (empty when the initrd is
    /// not a cvm initramfs).
    pub runtime_events: Vec<PredictedEvent>,
    /// The inputs.
    pub inputs: QemuInputs,
}

/// What a [`QemuReference`] was computed from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuInputs {
    /// The boot path.
    #[serde(default)]
    pub boot: BootPath,
    /// sha256 of the UKI, for [`BootPath::UkiDisk`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uki_sha256: Option<String>,
    /// sha256 of the bzImage file.
    pub kernel_sha256: String,
    /// sha256 of the initrd file.
    pub initrd_sha256: Option<String>,
    /// The `-append` string.
    pub cmdline: String,
    /// Guest memory, MiB (a direct boot's PCR 4 depends on it; a UKI boot's does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    /// The init-data digest (hex) whose PCR 8 value the reference pins, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initdata_digest: Option<String>,
}

/// Compute the reference values of a direct boot; `initramfs_files` are the initrd's
/// files when it is a cvm initramfs (PCR 15 is then predicted too).
pub fn reference(
    boot: &DirectBoot<'_>,
    initramfs_files: Option<&std::collections::BTreeMap<String, Vec<u8>>>,
) -> Result<QemuReference, QemuReferenceError> {
    let mut events = pcr4_events(boot)?;
    events.extend(pcr9_events(boot));
    let runtime_events = match initramfs_files {
        Some(files) => super::runtime::boot_events(files, boot.cmdline)?,
        None => Vec::new(),
    };
    Ok(QemuReference {
        platform: "qemu".into(),
        pcrs: pcr_values(&events, &runtime_events),
        events,
        runtime_events,
        inputs: QemuInputs {
            boot: BootPath::Direct,
            uki_sha256: None,
            initdata_digest: None,
            kernel_sha256: hex::encode(Sha256::digest(boot.kernel)),
            initrd_sha256: boot.initrd.map(|i| hex::encode(Sha256::digest(i))),
            cmdline: boot.cmdline.to_owned(),
            memory_mib: Some(boot.memory_mib),
        },
    })
}

/// Reference values could not be computed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum QemuReferenceError {
    /// The kernel or initrd does not fit the boot model.
    #[error(transparent)]
    Boot(#[from] QemuBootError),
    /// The initramfs lacks what PID1 measures.
    #[error(transparent)]
    Runtime(#[from] super::runtime::RuntimeError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_options_are_utf16_with_initrd_suffix() {
        let lo = load_options("a", true);
        assert_eq!(&lo[..2], b"a\0");
        assert_eq!(lo.len(), ("a initrd=initrd".len() + 1) * 2);
        assert_eq!(load_options("a", false), b"a\0\0\0");
    }

    #[test]
    fn non_bzimage_is_refused() {
        let boot = DirectBoot {
            kernel: &[0u8; 1024],
            initrd: None,
            cmdline: "",
            memory_mib: 1024,
        };
        assert_eq!(patched_kernel(&boot), Err(QemuBootError::NotBzImage));
    }
}
