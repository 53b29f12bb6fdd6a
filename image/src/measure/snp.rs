//! The AMD SEV-SNP launch digest (MEASUREMENT in the attestation report) of a QEMU
//! direct-boot launch with `kernel-hashes=on`.
//!
//! The digest is a SHA-384 chain over one PAGE_INFO per launch-update page (SEV-SNP ABI
//! spec, "SNP_LAUNCH_UPDATE" / "PAGE_INFO"): the whole firmware as normal pages at
//! `4 GiB - size`; then the firmware's SEV metadata ranges (zero, secrets and CPUID
//! pages, and the page holding the kernel/initrd/cmdline hashes table); then one VMSA
//! page per vCPU, whose initial register state depends on the vCPU model, the VMM and
//! the guest features.

use sha2::{Digest as _, Sha256, Sha384};

use cvm_ovmf::{MetadataError, SevMetadata, SevSectionKind};

/// Size of a launch digest.
pub const DIGEST_LEN: usize = 48;
const PAGE: usize = 4096;
const FOUR_GIB: u64 = 1 << 32;
/// The address every VMSA page is measured at.
const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
/// Where the BSP starts: the x86 reset vector.
const BSP_EIP: u64 = 0xFFFF_FFF0;

/// PAGE_INFO.page_type values.
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum PageType {
    Normal = 1,
    Vmsa = 2,
    Zero = 3,
    Secrets = 5,
    Cpuid = 6,
}

/// The vCPU models QEMU offers for SEV-SNP guests; the model's CPUID signature is the
/// initial RDX of every vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuType {
    /// EPYC (Naples) and its versions.
    Epyc,
    /// EPYC-v1.
    EpycV1,
    /// EPYC-v2.
    EpycV2,
    /// EPYC-IBPB.
    EpycIbpb,
    /// EPYC-v3.
    EpycV3,
    /// EPYC-v4.
    EpycV4,
    /// EPYC-Rome.
    Rome,
    /// EPYC-Rome-v1.
    RomeV1,
    /// EPYC-Rome-v2.
    RomeV2,
    /// EPYC-Rome-v3.
    RomeV3,
    /// EPYC-Milan.
    Milan,
    /// EPYC-Milan-v1.
    MilanV1,
    /// EPYC-Milan-v2.
    MilanV2,
    /// EPYC-Genoa.
    Genoa,
    /// EPYC-Genoa-v1.
    GenoaV1,
    /// EPYC-Turin.
    Turin,
    /// EPYC-Turin-v1.
    TurinV1,
    /// EPYC-Turin-v2.
    TurinV2,
}

const CPU_NAMES: &[(&str, CpuType)] = &[
    ("EPYC", CpuType::Epyc),
    ("EPYC-v1", CpuType::EpycV1),
    ("EPYC-v2", CpuType::EpycV2),
    ("EPYC-IBPB", CpuType::EpycIbpb),
    ("EPYC-v3", CpuType::EpycV3),
    ("EPYC-v4", CpuType::EpycV4),
    ("EPYC-Rome", CpuType::Rome),
    ("EPYC-Rome-v1", CpuType::RomeV1),
    ("EPYC-Rome-v2", CpuType::RomeV2),
    ("EPYC-Rome-v3", CpuType::RomeV3),
    ("EPYC-Milan", CpuType::Milan),
    ("EPYC-Milan-v1", CpuType::MilanV1),
    ("EPYC-Milan-v2", CpuType::MilanV2),
    ("EPYC-Genoa", CpuType::Genoa),
    ("EPYC-Genoa-v1", CpuType::GenoaV1),
    ("EPYC-Turin", CpuType::Turin),
    ("EPYC-Turin-v1", CpuType::TurinV1),
    ("EPYC-Turin-v2", CpuType::TurinV2),
];

impl std::str::FromStr for CpuType {
    type Err = SnpMeasureError;
    fn from_str(s: &str) -> Result<Self, SnpMeasureError> {
        CPU_NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(s))
            .map(|(_, t)| *t)
            .ok_or_else(|| SnpMeasureError::UnknownCpu(s.to_owned()))
    }
}

impl std::fmt::Display for CpuType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = CPU_NAMES
            .iter()
            .find(|(_, t)| t == self)
            .map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

impl CpuType {
    /// CPUID leaf 1 EAX signature of the model (family, model, stepping).
    pub fn signature(self) -> u32 {
        use CpuType::*;
        let (family, model, stepping) = match self {
            Epyc | EpycV1 | EpycV2 | EpycIbpb | EpycV3 | EpycV4 => (23, 1, 2),
            Rome | RomeV1 | RomeV2 | RomeV3 => (23, 49, 0),
            Milan | MilanV1 | MilanV2 => (25, 1, 1),
            Genoa | GenoaV1 => (25, 17, 0),
            Turin | TurinV1 | TurinV2 => (26, 0, 0),
        };
        cpuid_signature(family, model, stepping)
    }
}

/// Encode family/model/stepping as CPUID Fn0000_0001_EAX does (extended family and
/// model fields for family > 0xf).
pub fn cpuid_signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (family_low, family_high) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (family_high << 20)
        | (((model >> 4) & 0xf) << 16)
        | (family_low << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// Which VMM launches the guest: they differ in initial segment attributes and in the
/// order of the CPUID page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmType {
    /// QEMU/KVM (default).
    Qemu,
    /// AWS EC2.
    Ec2,
}

impl std::str::FromStr for VmmType {
    type Err = SnpMeasureError;
    fn from_str(s: &str) -> Result<Self, SnpMeasureError> {
        match s.to_ascii_lowercase().as_str() {
            "qemu" => Ok(VmmType::Qemu),
            "ec2" => Ok(VmmType::Ec2),
            // Google launches with its own firmware and publishes the digests as signed
            // endorsements; its VMSA model is not reproduced here.
            "gce" => Err(SnpMeasureError::VmmNotModelled(
                "gce: use Google's launch endorsements for the firmware digest",
            )),
            _ => Err(SnpMeasureError::UnknownVmm(s.to_owned())),
        }
    }
}

/// Everything the launch digest depends on.
#[derive(Debug, Clone)]
pub struct SnpLaunch<'a> {
    /// The firmware image (`OVMF.amdsev.fd`).
    pub firmware: &'a [u8],
    /// Number of vCPUs.
    pub vcpus: u32,
    /// vCPU model.
    pub cpu: CpuType,
    /// SEV features enabled in every VMSA (0x1 = SNP active on current hosts).
    pub guest_features: u64,
    /// The VMM.
    pub vmm: VmmType,
    /// Kernel, initrd and command line for `kernel-hashes=on`; `None` without a kernel.
    pub kernel: Option<KernelInputs<'a>>,
}

/// The direct-boot inputs whose hashes the firmware checks.
#[derive(Debug, Clone, Copy)]
pub struct KernelInputs<'a> {
    /// bzImage.
    pub kernel: &'a [u8],
    /// Initrd (empty when none).
    pub initrd: &'a [u8],
    /// Command line exactly as QEMU passes it (QEMU does not trim it).
    pub cmdline: &'a str,
}

/// Inputs that cannot be measured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnpMeasureError {
    /// The firmware's SEV metadata is missing or malformed.
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    /// The firmware is not a whole number of pages or does not fit below 4 GiB.
    #[error("firmware size {0} is not a multiple of 4 KiB below 4 GiB")]
    FirmwareSize(usize),
    /// A kernel was given but the firmware has no kernel hashes table.
    #[error(
        "a kernel was given but the firmware has no SNP kernel hashes section (use OVMF.amdsev)"
    )]
    NoHashesTable,
    /// The hashes table does not fit in its page.
    #[error("the firmware's kernel hashes table at {0:#x} does not fit in its page")]
    HashesTableOutOfPage(u64),
    /// Zero vCPUs.
    #[error("at least one vCPU is needed")]
    NoVcpus,
    /// Not a known vCPU model.
    #[error(
        "unknown vCPU type {0:?} (known: EPYC, EPYC-v4, EPYC-Rome, EPYC-Milan, EPYC-Genoa, EPYC-Turin and their versions)"
    )]
    UnknownCpu(String),
    /// Not a known VMM.
    #[error("unknown VMM type {0:?} (known: qemu, ec2)")]
    UnknownVmm(String),
    /// A VMM whose launch is not modelled.
    #[error("VMM type not modelled: {0}")]
    VmmNotModelled(&'static str),
}

/// The running digest.
struct Gctx([u8; DIGEST_LEN]);

impl Gctx {
    fn update(&mut self, page_type: PageType, gpa: u64, contents: &[u8; DIGEST_LEN]) {
        let mut info = [0u8; 0x70];
        info[..48].copy_from_slice(&self.0);
        info[48..96].copy_from_slice(contents);
        info[96..98].copy_from_slice(&0x70u16.to_le_bytes());
        info[98] = page_type as u8;
        // is_imi, vmpl3/2/1 permissions and a reserved byte stay zero.
        info[104..112].copy_from_slice(&gpa.to_le_bytes());
        self.0 = Sha384::digest(info).into();
    }

    fn pages(&mut self, page_type: PageType, gpa: u64, data: &[u8]) {
        for (i, page) in data.chunks(PAGE).enumerate() {
            self.update(
                page_type,
                gpa + (i * PAGE) as u64,
                &Sha384::digest(page).into(),
            );
        }
    }

    fn empty_pages(&mut self, page_type: PageType, gpa: u64, size: u64) {
        for i in 0..size / PAGE as u64 {
            self.update(page_type, gpa + i * PAGE as u64, &[0; DIGEST_LEN]);
        }
    }
}

/// Compute the launch digest.
pub fn measure_snp(launch: &SnpLaunch<'_>) -> Result<[u8; DIGEST_LEN], SnpMeasureError> {
    if launch.vcpus == 0 {
        return Err(SnpMeasureError::NoVcpus);
    }
    let fw = launch.firmware;
    if fw.is_empty() || !fw.len().is_multiple_of(PAGE) || fw.len() as u64 > FOUR_GIB {
        return Err(SnpMeasureError::FirmwareSize(fw.len()));
    }
    let meta = cvm_ovmf::parse_sev(fw)?;
    let mut g = Gctx([0; DIGEST_LEN]);
    g.pages(PageType::Normal, FOUR_GIB - fw.len() as u64, fw);
    metadata_pages(&mut g, &meta, launch)?;
    let bsp = vmsa(BSP_EIP, launch);
    let ap = vmsa(meta.ap_reset_eip.into(), launch);
    for i in 0..launch.vcpus {
        let page = if i == 0 { &bsp } else { &ap };
        g.update(PageType::Vmsa, VMSA_GPA, &Sha384::digest(page).into());
    }
    Ok(g.0)
}

fn metadata_pages(
    g: &mut Gctx,
    meta: &SevMetadata,
    launch: &SnpLaunch<'_>,
) -> Result<(), SnpMeasureError> {
    let has_hashes = meta
        .sections
        .iter()
        .any(|s| s.kind == SevSectionKind::KernelHashes);
    if launch.kernel.is_some() && !has_hashes {
        return Err(SnpMeasureError::NoHashesTable);
    }
    for s in &meta.sections {
        match s.kind {
            SevSectionKind::SnpSecMem | SevSectionKind::SvsmCaa => {
                g.empty_pages(PageType::Zero, s.gpa, s.size)
            }
            SevSectionKind::SnpSecrets => g.empty_pages(PageType::Secrets, s.gpa, PAGE as u64),
            // EC2 adds the CPUID page after every other range.
            SevSectionKind::Cpuid if launch.vmm == VmmType::Ec2 => {}
            SevSectionKind::Cpuid => g.empty_pages(PageType::Cpuid, s.gpa, PAGE as u64),
            SevSectionKind::KernelHashes => match &launch.kernel {
                Some(k) => {
                    let (table_gpa, _) = meta.hash_table.ok_or(SnpMeasureError::NoHashesTable)?;
                    let page = hashes_page(k, table_gpa, s.size)?;
                    g.pages(PageType::Normal, s.gpa, &page);
                }
                None => g.empty_pages(PageType::Zero, s.gpa, s.size),
            },
        }
    }
    if launch.vmm == VmmType::Ec2 {
        for s in meta
            .sections
            .iter()
            .filter(|s| s.kind == SevSectionKind::Cpuid)
        {
            g.empty_pages(PageType::Cpuid, s.gpa, PAGE as u64);
        }
    }
    Ok(())
}

/// EFI GUID bytes (first three fields little-endian) of the hashes table structures
/// (OVMF `BlobVerifierLibSevHashes`).
const TABLE_HEADER: cvm_ovmf::Guid = cvm_ovmf::Guid::from_fields(
    0x9438d606,
    0x4f22,
    0x4cc9,
    [0xb4, 0x79, 0xa7, 0x93, 0xd4, 0x11, 0xfd, 0x21],
);
const CMDLINE_ENTRY: cvm_ovmf::Guid = cvm_ovmf::Guid::from_fields(
    0x97d02dd8,
    0xbd20,
    0x4c94,
    [0xaa, 0x78, 0xe7, 0x71, 0x4d, 0x36, 0xab, 0x2a],
);
const INITRD_ENTRY: cvm_ovmf::Guid = cvm_ovmf::Guid::from_fields(
    0x44baf731,
    0x3a2f,
    0x4bd7,
    [0x9a, 0xf1, 0x41, 0xe2, 0x91, 0x69, 0x78, 0x1d],
);
const KERNEL_ENTRY: cvm_ovmf::Guid = cvm_ovmf::Guid::from_fields(
    0x4de79437,
    0xabd2,
    0x427f,
    [0xb8, 0x35, 0xd5, 0xb1, 0x72, 0xd2, 0x04, 0x5b],
);

/// The page QEMU fills with the hashes table: `GUID ‖ u16 length` then three entries of
/// `GUID ‖ u16 length ‖ sha256`, padded to 16 bytes, at the table's offset in its page.
fn hashes_page(
    k: &KernelInputs<'_>,
    table_gpa: u64,
    size: u64,
) -> Result<Vec<u8>, SnpMeasureError> {
    let mut cmdline = k.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    let mut table = Vec::with_capacity(176);
    table.extend_from_slice(&TABLE_HEADER.0);
    table.extend_from_slice(&168u16.to_le_bytes());
    for (guid, data) in [
        (CMDLINE_ENTRY, cmdline.as_slice()),
        (INITRD_ENTRY, k.initrd),
        (KERNEL_ENTRY, k.kernel),
    ] {
        table.extend_from_slice(&guid.0);
        table.extend_from_slice(&50u16.to_le_bytes());
        table.extend_from_slice(&Sha256::digest(data));
    }
    table.resize(table.len().next_multiple_of(16), 0);
    let offset = (table_gpa & (PAGE as u64 - 1)) as usize;
    let mut page = vec![0u8; size as usize];
    page.get_mut(offset..offset + table.len())
        .ok_or(SnpMeasureError::HashesTableOutOfPage(table_gpa))?
        .copy_from_slice(&table);
    Ok(page)
}

/// Offsets in the VMSA save area (AMD64 APM vol. 2, table B-4).
mod vmsa_offset {
    pub const ES: usize = 0x000;
    pub const CS: usize = 0x010;
    pub const SS: usize = 0x020;
    pub const DS: usize = 0x030;
    pub const FS: usize = 0x040;
    pub const GS: usize = 0x050;
    pub const GDTR: usize = 0x060;
    pub const LDTR: usize = 0x070;
    pub const IDTR: usize = 0x080;
    pub const TR: usize = 0x090;
    pub const EFER: usize = 0x0d0;
    pub const CR4: usize = 0x148;
    pub const CR0: usize = 0x158;
    pub const DR7: usize = 0x160;
    pub const DR6: usize = 0x168;
    pub const RFLAGS: usize = 0x170;
    pub const RIP: usize = 0x178;
    pub const G_PAT: usize = 0x268;
    pub const RDX: usize = 0x310;
    pub const SEV_FEATURES: usize = 0x3b0;
    pub const XCR0: usize = 0x3e8;
    pub const MXCSR: usize = 0x408;
    pub const X87_FCW: usize = 0x410;
}

/// The initial VMSA of a vCPU starting at `eip` in real mode.
fn vmsa(eip: u64, launch: &SnpLaunch<'_>) -> Vec<u8> {
    use vmsa_offset::*;
    let mut v = vec![0u8; PAGE];
    let mut put =
        |offset: usize, bytes: &[u8]| v[offset..offset + bytes.len()].copy_from_slice(bytes);
    let seg = |selector: u16, attrib: u16, limit: u32, base: u64| {
        let mut s = [0u8; 16];
        s[0..2].copy_from_slice(&selector.to_le_bytes());
        s[2..4].copy_from_slice(&attrib.to_le_bytes());
        s[4..8].copy_from_slice(&limit.to_le_bytes());
        s[8..16].copy_from_slice(&base.to_le_bytes());
        s
    };
    // KVM's and EC2's reset states differ in segment attributes, RDX and FPU control.
    let (cs_attr, ss_attr, tr_attr, rdx, mxcsr, fcw) = match launch.vmm {
        VmmType::Qemu => (
            0x9b,
            0x93,
            0x8b,
            u64::from(launch.cpu.signature()),
            0x1f80u32,
            0x37fu16,
        ),
        VmmType::Ec2 if eip == BSP_EIP => (0x9a, 0x92, 0x83, 0, 0, 0),
        VmmType::Ec2 => (0x9b, 0x92, 0x83, 0, 0, 0),
    };
    put(ES, &seg(0, 0x93, 0xffff, 0));
    put(CS, &seg(0xf000, cs_attr, 0xffff, eip & 0xffff_0000));
    put(SS, &seg(0, ss_attr, 0xffff, 0));
    put(DS, &seg(0, 0x93, 0xffff, 0));
    put(FS, &seg(0, 0x93, 0xffff, 0));
    put(GS, &seg(0, 0x93, 0xffff, 0));
    put(GDTR, &seg(0, 0, 0xffff, 0));
    put(LDTR, &seg(0, 0x82, 0xffff, 0));
    put(IDTR, &seg(0, 0, 0xffff, 0));
    put(TR, &seg(0, tr_attr, 0xffff, 0));
    put(EFER, &0x1000u64.to_le_bytes()); // SVME
    put(CR4, &0x40u64.to_le_bytes()); // MCE
    put(CR0, &0x10u64.to_le_bytes()); // ET
    put(DR7, &0x400u64.to_le_bytes());
    put(DR6, &0xffff_0ff0u64.to_le_bytes());
    put(RFLAGS, &0x2u64.to_le_bytes());
    put(RIP, &(eip & 0xffff).to_le_bytes());
    put(G_PAT, &0x0007_0406_0007_0406u64.to_le_bytes());
    put(RDX, &rdx.to_le_bytes());
    put(SEV_FEATURES, &launch.guest_features.to_le_bytes());
    put(XCR0, &0x1u64.to_le_bytes());
    put(MXCSR, &mxcsr.to_le_bytes());
    put(X87_FCW, &fcw.to_le_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_signatures() {
        assert_eq!(CpuType::EpycV4.signature(), 0x800f12);
        assert_eq!(CpuType::Milan.signature(), 0xa00f11);
        assert_eq!(CpuType::Genoa.signature(), 0xa10f10);
        assert_eq!(CpuType::Turin.signature(), 0xb00f00);
        assert_eq!("epyc-milan-v2".parse::<CpuType>(), Ok(CpuType::MilanV2));
        assert!("EPYC-Zen9".parse::<CpuType>().is_err());
        assert!(matches!(
            "gce".parse::<VmmType>(),
            Err(SnpMeasureError::VmmNotModelled(_))
        ));
    }
}
