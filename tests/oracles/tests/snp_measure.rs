//! Our SNP launch digest against two independent oracles: the `sev` crate's calculator
//! over a grid of settings, and vectors from the `sev-snp-measure` Python tool.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use cvm_image::measure::snp::{
    CpuType, KernelInputs, SnpLaunch, SnpMeasureError, VmmType, measure_snp,
};
use cvm_ovmf::pinned::{AMDSEV, FetchOptions, fetch};
use sev::measurement::snp::{SnpMeasurementArgs, snp_calc_launch_digest};
use sev::measurement::vcpu_types::CpuType as SevCpu;
use sev::measurement::vmsa::{GuestFeatures, VMMType};

fn pinned_amdsev(cache: &Path) -> PathBuf {
    let debs = std::env::var_os("CVM_FIRMWARE_DEBS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/firmware"),
        PathBuf::from,
    );
    fetch(
        &AMDSEV,
        cache,
        &FetchOptions {
            download: true,
            local_dirs: vec![debs],
        },
    )
    .unwrap()
}

struct Inputs {
    _dir: tempfile::TempDir,
    kernel: PathBuf,
    initrd: PathBuf,
}

/// The inputs of research/measure.md §1.3.
fn inputs() -> Inputs {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("kernel.bin");
    let initrd = dir.path().join("initrd.bin");
    fs::write(&kernel, (0..=255u8).collect::<Vec<_>>().repeat(4096)).unwrap();
    fs::write(&initrd, b"initrd-test\n".repeat(1000)).unwrap();
    Inputs {
        _dir: dir,
        kernel,
        initrd,
    }
}

fn ours(
    fw: &[u8],
    vcpus: u32,
    cpu: &str,
    features: u64,
    vmm: VmmType,
    k: Option<(&[u8], &[u8], &str)>,
) -> String {
    let launch = SnpLaunch {
        firmware: fw,
        vcpus,
        cpu: cpu.parse().unwrap(),
        guest_features: features,
        vmm,
        kernel: k.map(|(kernel, initrd, cmdline)| KernelInputs {
            kernel,
            initrd,
            cmdline,
        }),
    };
    hex::encode(measure_snp(&launch).unwrap())
}

fn oracle(
    fw: &Path,
    vcpus: u32,
    cpu: &str,
    features: u64,
    vmm: VmmType,
    k: Option<(&Path, &Path, &str)>,
) -> String {
    let args = SnpMeasurementArgs {
        vcpus,
        vcpu_type: SevCpu::try_from(cpu).unwrap(),
        ovmf_file: fw.to_owned(),
        guest_features: GuestFeatures(features),
        kernel_file: k.map(|k| k.0.to_owned()),
        initrd_file: k.map(|k| k.1.to_owned()),
        append: k.map(|k| k.2),
        ovmf_hash_str: None,
        vmm_type: Some(match vmm {
            VmmType::Qemu => VMMType::QEMU,
            VmmType::Ec2 => VMMType::EC2,
        }),
    };
    snp_calc_launch_digest(args).unwrap().get_hex_ld()
}

#[test]
fn matches_sev_snp_measure_vectors() {
    let cache = tempfile::tempdir().unwrap();
    let fw = fs::read(pinned_amdsev(cache.path())).unwrap();
    let i = inputs();
    let (kernel, initrd) = (fs::read(&i.kernel).unwrap(), fs::read(&i.initrd).unwrap());
    let k = Some((
        kernel.as_slice(),
        initrd.as_slice(),
        "console=ttyS0 panic=-1",
    ));
    let q = VmmType::Qemu;
    assert_eq!(
        ours(&fw, 1, "EPYC-v4", 1, q, k),
        "afcb21e1eaeb7599db754a95094b7e41f75ad161241bdcdb3f610bcbb3df89b21f488efe8db256c907b389ab89fe540c"
    );
    assert_eq!(
        ours(&fw, 4, "EPYC-v4", 1, q, k),
        "8fed5d39c46bd93b63e7633eb7e7889a0ac80f381360d119f73176ce20f53dc80173e45a51156b6425829ab5e15e875f"
    );
    assert_eq!(
        ours(&fw, 4, "EPYC-Milan", 1, q, k),
        "08a5b9f998d3be1d9c4b7836f0a2fe0c518d0e7cf2ed2c66be66019925021c7298c1542ea8bbac297aeaef0b650c21a3"
    );
    assert_eq!(
        ours(&fw, 4, "EPYC-Genoa", 1, q, k),
        "33b72f4a294170afad67c23bee326b29be4b436e5f49d8f5383b783d6d7e0625630524927b0ca3f5dfe717cde666f371"
    );
    assert_eq!(
        ours(&fw, 1, "EPYC-v4", 0x21, q, k),
        "363e19bcedd133d42ea44a62ad85f0777e24b386bb6d51bf94b3770f19c9a7794566cdf8bab46a2b9ea24a8dd4bbf668"
    );
    assert_eq!(
        ours(&fw, 1, "EPYC-v4", 1, q, None),
        "d74bd3ea40b240c3228edc5177ce6193561ebff633dbd0be76d6c143b876d65102425c0e2e8a930857c48daa5eacda58"
    );
}

#[test]
fn matches_the_published_suffix_vector() {
    // sev crate / sev-snp-measure published vector: kernel = initrd = empty file.
    let fw =
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/ovmf_AmdSev_suffix.bin"))
            .unwrap();
    let k = Some((&[][..], &[][..], "console=ttyS0 loglevel=7"));
    assert_eq!(
        ours(&fw, 1, "EPYC-v4", 1, VmmType::Qemu, k),
        "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa"
    );
}

#[test]
fn matches_the_sev_crate_over_a_grid() {
    let cache = tempfile::tempdir().unwrap();
    let fw_path = pinned_amdsev(cache.path());
    let fw = fs::read(&fw_path).unwrap();
    let i = inputs();
    let (kernel, initrd) = (fs::read(&i.kernel).unwrap(), fs::read(&i.initrd).unwrap());
    let mut checked = 0;
    for vcpus in [1, 2, 4, 16] {
        for cpu in ["EPYC-v4", "EPYC-Milan", "EPYC-Genoa", "EPYC-Turin"] {
            for features in [0x1, 0x21] {
                for vmm in [VmmType::Qemu, VmmType::Ec2] {
                    for cmdline in [None, Some("console=ttyS0 panic=-1"), Some("")] {
                        let (ours_k, oracle_k) = match cmdline {
                            Some(c) => (
                                Some((kernel.as_slice(), initrd.as_slice(), c)),
                                Some((i.kernel.as_path(), i.initrd.as_path(), c)),
                            ),
                            None => (None, None),
                        };
                        assert_eq!(
                            ours(&fw, vcpus, cpu, features, vmm, ours_k),
                            oracle(&fw_path, vcpus, cpu, features, vmm, oracle_k),
                            "vcpus={vcpus} cpu={cpu} features={features:#x} vmm={vmm:?} cmdline={cmdline:?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 192);
}

#[test]
fn bad_inputs_are_named() {
    let cache = tempfile::tempdir().unwrap();
    let fw = fs::read(pinned_amdsev(cache.path())).unwrap();
    let base = SnpLaunch {
        firmware: &fw,
        vcpus: 1,
        cpu: CpuType::EpycV4,
        guest_features: 1,
        vmm: VmmType::Qemu,
        kernel: None,
    };
    assert_eq!(
        measure_snp(&SnpLaunch {
            vcpus: 0,
            ..base.clone()
        }),
        Err(SnpMeasureError::NoVcpus)
    );
    assert!(matches!(
        measure_snp(&SnpLaunch {
            firmware: &fw[1..],
            ..base.clone()
        }),
        Err(SnpMeasureError::FirmwareSize(_))
    ));
    // The dev OVMF has no SEV metadata at all.
    let dev = fs::read("/usr/share/OVMF/OVMF_CODE_4M.fd").unwrap();
    assert!(matches!(
        measure_snp(&SnpLaunch {
            firmware: &dev,
            ..base.clone()
        }),
        Err(SnpMeasureError::Metadata(_))
    ));
    // One flipped byte of firmware changes the digest.
    let mut flipped = fw.clone();
    flipped[12345] ^= 1;
    assert_ne!(
        measure_snp(&base).unwrap(),
        measure_snp(&SnpLaunch {
            firmware: &flipped,
            ..base.clone()
        })
        .unwrap()
    );
}

/// The image the test suite built (`./scripts/test` sets `CVM_TEST_IMAGE`) and its
/// recorded reference values, after checking them against its manifest.
fn recorded() -> Option<(PathBuf, cvm_image::measurements::Measurements)> {
    let Some(image) = std::env::var_os("CVM_TEST_IMAGE").map(PathBuf::from) else {
        eprintln!("skipped: set CVM_TEST_IMAGE to an image folder (./scripts/test does)");
        return None;
    };
    let manifest: cvm_image::Manifest =
        serde_json::from_slice(&fs::read(image.join("manifest.json")).unwrap()).unwrap();
    let bytes = fs::read(image.join("measurements.json")).unwrap();
    assert_eq!(
        manifest.measurements.unwrap().sha256,
        cvm_image::sha256_hex(&bytes)
    );
    Some((image, serde_json::from_slice(&bytes).unwrap()))
}

#[test]
fn every_recorded_launch_digest_matches_the_sev_crate() {
    let Some((image, recorded)) = recorded() else {
        return;
    };
    let snp = recorded.snp.expect("the build records the snp target");
    let cache = tempfile::tempdir().unwrap();
    let fw = pinned_amdsev(cache.path());
    assert_eq!(snp.firmware.sha256, AMDSEV.sha256);
    assert_eq!(snp.guest_features, "0x1");
    let cmdline = fs::read_to_string(image.join("cmdline")).unwrap();
    let (kernel, initrd) = (image.join("bzImage"), image.join("initramfs.cpio.zst"));
    let k = Some((kernel.as_path(), initrd.as_path(), cmdline.as_str()));
    assert_eq!(snp.launch_digests.len(), 21);
    for d in &snp.launch_digests {
        assert_eq!(
            d.measurement,
            oracle(&fw, d.vcpus, &d.vcpu_type, 1, VmmType::Qemu, k),
            "{} vCPUs of {}",
            d.vcpus,
            d.vcpu_type
        );
    }
    let mut distinct: Vec<&str> = snp
        .launch_digests
        .iter()
        .map(|d| d.measurement.as_str())
        .collect();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 21, "every shape has its own digest");
}
