//! QEMU command lines for the `qemu` (dev), `snp` and `tdx` platforms.
//!
//! Only `qemu` runs on machines without SEV-SNP or TDX hosts; the other two are
//! generated and tested so that the measurement-relevant shape (firmware, CPU model,
//! kernel hashes, confidential-guest object) is fixed in code.

use std::path::{Path, PathBuf};

/// The guest port of the agent's API, forwarded from the host on the `qemu` platform.
pub const AGENT_GUEST_PORT: u16 = 8080;

/// Where the guest runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// QEMU with OVMF and a vTPM from swtpm (development and CI).
    Qemu,
    /// AMD SEV-SNP with kernel hashes in the launch digest.
    Snp,
    /// Intel TDX (QEMU ≥ 10.1).
    Tdx,
}

impl std::str::FromStr for Platform {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "qemu" => Ok(Platform::Qemu),
            "snp" => Ok(Platform::Snp),
            "tdx" => Ok(Platform::Tdx),
            _ => Err(SpecError::UnknownPlatform(s.to_owned())),
        }
    }
}

/// The accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Software emulation; works everywhere, slowly.
    Tcg,
    /// Hardware virtualisation; required for SNP and TDX.
    Kvm,
}

impl std::str::FromStr for Accel {
    type Err = SpecError;
    fn from_str(s: &str) -> Result<Self, SpecError> {
        match s {
            "tcg" => Ok(Accel::Tcg),
            "kvm" => Ok(Accel::Kvm),
            _ => Err(SpecError::UnknownAccel(s.to_owned())),
        }
    }
}

/// How the firmware is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firmware {
    /// Split OVMF: read-only code and a per-VM writable variable store (`qemu`).
    Pflash {
        /// Code image.
        code: PathBuf,
        /// The VM's own copy of the variable store.
        vars: PathBuf,
    },
    /// A single image loaded with `-bios` (the SNP and TDX builds).
    Bios(PathBuf),
}

/// What the firmware boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Boot {
    /// QEMU hands the firmware a kernel, initrd and command line (direct boot; for SNP
    /// and TDX their hashes are part of the launch measurement).
    Kernel {
        /// bzImage.
        kernel: PathBuf,
        /// Initramfs.
        initrd: PathBuf,
        /// Kernel command line.
        cmdline: String,
    },
    /// The firmware boots `EFI/BOOT/BOOTX64.EFI` (the UKI) from this GPT disk, which
    /// also holds the state partition; it is the first virtio disk.
    Disk(PathBuf),
}

/// One VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmSpec {
    /// Platform.
    pub platform: Platform,
    /// Accelerator.
    pub accel: Accel,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// Firmware.
    pub firmware: Firmware,
    /// What the firmware boots.
    pub boot: Boot,
    /// swtpm control socket, for a vTPM.
    pub tpm_socket: Option<PathBuf>,
    /// Host port forwarded (on 127.0.0.1) to the agent's guest port.
    pub host_port: Option<u16>,
    /// More forwards (host port on 127.0.0.1, guest port): workloads' HTTP ports.
    pub forwards: Vec<(u16, u16)>,
    /// QMP socket.
    pub qmp_socket: Option<PathBuf>,
    /// Init-data (TOML) handed to the guest through fw_cfg as `opt/cvm/initdata`.
    pub initdata: Option<PathBuf>,
    /// Raw disk image for the guest's encrypted state (the first virtio disk of a
    /// direct boot).
    pub state_disk: Option<PathBuf>,
}

/// The fw_cfg name the guest reads init-data from.
pub const INITDATA_FW_CFG: &str = "opt/cvm/initdata";

/// A VM description that cannot be turned into a command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    /// Not `qemu`, `snp` or `tdx`.
    #[error("unknown platform {0:?} (known: qemu, snp, tdx)")]
    UnknownPlatform(String),
    /// Not `tcg` or `kvm`.
    #[error("unknown accelerator {0:?} (known: tcg, kvm)")]
    UnknownAccel(String),
    /// SNP and TDX guests need KVM.
    #[error("platform {0:?} needs -accel kvm on an SEV-SNP or TDX host")]
    NeedsKvm(Platform),
    /// The firmware form does not match the platform.
    #[error("platform {0:?} needs {1} firmware")]
    WrongFirmware(Platform, &'static str),
    /// A vTPM was requested where the platform has none.
    #[error("platform {0:?} has no vTPM; attestation uses the hardware report")]
    NoVtpm(Platform),
    /// Zero CPUs or too little memory.
    #[error("VM needs at least 1 vCPU and 256 MiB of memory")]
    TooSmall,
    /// A disk boot on SNP or TDX: the launch measurement would not cover the kernel.
    #[error(
        "platform {0:?} boots the kernel directly: a disk boot would leave it out of the launch measurement"
    )]
    DiskNotMeasured(Platform),
    /// A separate state disk beside a boot disk, which has its own state partition.
    #[error(
        "a disk boot keeps its state on the disk's own cvm-state partition; no separate state disk"
    )]
    StateDiskWithDisk,
    /// A path QEMU's option syntax cannot carry.
    #[error("path {0} contains a comma, which QEMU options cannot carry")]
    BadPath(PathBuf),
}

fn path(p: &Path) -> Result<String, SpecError> {
    let s = p.to_string_lossy();
    if s.contains(',') {
        return Err(SpecError::BadPath(p.to_owned()));
    }
    Ok(s.into_owned())
}

/// The QEMU arguments (without the program name) for `spec`.
pub fn command_line(spec: &VmSpec) -> Result<Vec<String>, SpecError> {
    if spec.cpus == 0 || spec.memory_mib < 256 {
        return Err(SpecError::TooSmall);
    }
    if spec.platform != Platform::Qemu && spec.accel != Accel::Kvm {
        return Err(SpecError::NeedsKvm(spec.platform));
    }
    if spec.platform != Platform::Qemu && spec.tpm_socket.is_some() {
        return Err(SpecError::NoVtpm(spec.platform));
    }
    let mut a: Vec<String> = Vec::new();
    let mut push = |args: &[&str]| a.extend(args.iter().map(|s| (*s).to_owned()));
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);

    let accel = match spec.accel {
        Accel::Tcg => "tcg",
        Accel::Kvm => "kvm",
    };
    push(&["-accel", accel]);
    let (machine, cpu) = match (spec.platform, spec.accel) {
        (Platform::Qemu, Accel::Tcg) => ("q35", "max"),
        (Platform::Qemu, Accel::Kvm) => ("q35", "host"),
        // The vCPU model is part of the SNP launch digest (VMSA); EPYC-v4 is the model
        // the reference values are computed for.
        (Platform::Snp, _) => ("q35,confidential-guest-support=sev0", "EPYC-v4"),
        (Platform::Tdx, _) => (
            "q35,kernel-irqchip=split,confidential-guest-support=tdx0",
            "host",
        ),
    };
    push(&["-machine", machine, "-cpu", cpu]);
    let smp = spec.cpus.to_string();
    let mem = format!("{}M", spec.memory_mib);
    push(&["-smp", &smp, "-m", &mem]);

    match (spec.platform, &spec.firmware) {
        (Platform::Qemu, Firmware::Pflash { code, vars }) => {
            let code = format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                path(code)?
            );
            let vars = format!("if=pflash,format=raw,unit=1,file={}", path(vars)?);
            push(&["-drive", &code, "-drive", &vars]);
        }
        (Platform::Qemu, _) => {
            return Err(SpecError::WrongFirmware(
                Platform::Qemu,
                "split pflash (code + vars)",
            ));
        }
        (Platform::Snp | Platform::Tdx, Firmware::Bios(bios)) => {
            let bios = path(bios)?;
            push(&["-bios", &bios]);
        }
        (p, _) => return Err(SpecError::WrongFirmware(p, "a single -bios")),
    }
    match spec.platform {
        Platform::Snp => push(&[
            "-object",
            "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on",
        ]),
        Platform::Tdx => push(&[
            "-object",
            r#"{"qom-type":"tdx-guest","id":"tdx0","quote-generation-socket":{"type":"vsock","cid":"2","port":"4050"}}"#,
        ]),
        Platform::Qemu => {}
    }

    match &spec.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
        } => {
            let kernel = path(kernel)?;
            let initrd = path(initrd)?;
            push(&["-kernel", &kernel, "-initrd", &initrd, "-append", cmdline]);
        }
        Boot::Disk(_) if spec.platform != Platform::Qemu => {
            return Err(SpecError::DiskNotMeasured(spec.platform));
        }
        Boot::Disk(_) if spec.state_disk.is_some() => return Err(SpecError::StateDiskWithDisk),
        Boot::Disk(disk) => {
            // Written in place: the state partition lives on it.
            let drive = format!(
                "file={},if=none,id=disk0,format=raw,cache=none,aio=threads",
                path(disk)?
            );
            push(&["-drive", &drive]);
            push(&["-device", "virtio-blk-pci,drive=disk0,bootindex=0"]);
        }
    }

    push(&[
        "-chardev",
        "stdio,id=ser0,signal=off",
        "-serial",
        "chardev:ser0",
    ]);
    // Confidential guests only accept virtio devices that use the platform DMA API.
    let cc = if spec.platform == Platform::Qemu {
        ""
    } else {
        ",disable-legacy=on,iommu_platform=on"
    };
    let mut netdev = match spec.host_port {
        Some(port) => format!("user,id=net0,hostfwd=tcp:127.0.0.1:{port}-:{AGENT_GUEST_PORT}"),
        None => "user,id=net0".to_owned(),
    };
    for (host, guest) in &spec.forwards {
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
    }
    // romfile= skips the iPXE option ROM: the guest never network-boots.
    let nic = format!("virtio-net-pci,netdev=net0,romfile={cc}");
    let rng = format!("virtio-rng-pci,rng=rng0{cc}");
    push(&["-netdev", &netdev, "-device", &nic]);
    push(&[
        "-object",
        "rng-random,id=rng0,filename=/dev/urandom",
        "-device",
        &rng,
    ]);

    if let Some(sock) = &spec.tpm_socket {
        let chardev = format!("socket,id=chrtpm,path={}", path(sock)?);
        push(&[
            "-chardev",
            &chardev,
            "-tpmdev",
            "emulator,id=tpm0,chardev=chrtpm",
            "-device",
            "tpm-crb,tpmdev=tpm0",
        ]);
    }
    if let Some(disk) = &spec.state_disk {
        let drive = format!(
            "file={},if=none,id=state0,format=raw,cache=none,aio=threads",
            path(disk)?
        );
        let device = format!("virtio-blk-pci,drive=state0{cc}");
        push(&["-drive", &drive, "-device", &device]);
    }
    if let Some(initdata) = &spec.initdata {
        let fw_cfg = format!("name={INITDATA_FW_CFG},file={}", path(initdata)?);
        push(&["-fw_cfg", &fw_cfg]);
    }
    if let Some(qmp) = &spec.qmp_socket {
        let qmp = format!("unix:{},server=on,wait=off", path(qmp)?);
        push(&["-qmp", &qmp]);
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(platform: Platform, accel: Accel) -> VmSpec {
        VmSpec {
            platform,
            accel,
            cpus: 2,
            memory_mib: 1024,
            firmware: match platform {
                Platform::Qemu => Firmware::Pflash {
                    code: "/fw/code.fd".into(),
                    vars: "/run/vars.fd".into(),
                },
                _ => Firmware::Bios("/fw/OVMF.fd".into()),
            },
            boot: Boot::Kernel {
                kernel: "/img/bzImage".into(),
                initrd: "/img/initramfs.cpio.zst".into(),
                cmdline: "console=ttyS0 panic=-1".into(),
            },
            tpm_socket: (platform == Platform::Qemu).then(|| "/run/swtpm.sock".into()),
            host_port: Some(18080),
            forwards: Vec::new(),
            qmp_socket: Some("/run/qmp.sock".into()),
            initdata: None,
            state_disk: None,
        }
    }

    #[test]
    fn initdata_and_state_disk() {
        let mut s = spec(Platform::Qemu, Accel::Tcg);
        s.initdata = Some("/run/initdata.toml".into());
        s.state_disk = Some("/run/state.img".into());
        let a = command_line(&s).unwrap();
        assert!(has(
            &a,
            "-fw_cfg",
            "name=opt/cvm/initdata,file=/run/initdata.toml"
        ));
        assert!(has(
            &a,
            "-drive",
            "file=/run/state.img,if=none,id=state0,format=raw,cache=none,aio=threads"
        ));
        assert!(has(&a, "-device", "virtio-blk-pci,drive=state0"));
        s.state_disk = Some("/run/a,b.img".into());
        assert!(command_line(&s).is_err());
    }

    #[test]
    fn disk_boot_has_no_kernel_and_boots_the_disk_first() {
        let mut s = spec(Platform::Qemu, Accel::Tcg);
        s.boot = Boot::Disk("/img/disk.raw".into());
        let a = command_line(&s).unwrap();
        assert!(!a.iter().any(|x| x == "-kernel" || x == "-append"));
        assert!(has(
            &a,
            "-drive",
            "file=/img/disk.raw,if=none,id=disk0,format=raw,cache=none,aio=threads"
        ));
        assert!(has(&a, "-device", "virtio-blk-pci,drive=disk0,bootindex=0"));
    }

    fn joined(spec: &VmSpec) -> String {
        command_line(spec).unwrap().join(" ")
    }

    /// `flag value` appears as consecutive arguments.
    fn has(args: &[String], flag: &str, value: &str) -> bool {
        args.windows(2).any(|w| w[0] == flag && w[1] == value)
    }

    #[test]
    fn qemu_tcg_dev_vm() {
        let s = spec(Platform::Qemu, Accel::Tcg);
        let a = command_line(&s).unwrap();
        assert!(has(&a, "-accel", "tcg"));
        assert!(has(&a, "-cpu", "max"));
        assert!(has(&a, "-machine", "q35"));
        assert!(has(
            &a,
            "-drive",
            "if=pflash,format=raw,unit=0,readonly=on,file=/fw/code.fd"
        ));
        assert!(has(
            &a,
            "-drive",
            "if=pflash,format=raw,unit=1,file=/run/vars.fd"
        ));
        assert!(has(&a, "-device", "tpm-crb,tpmdev=tpm0"));
        assert!(has(&a, "-chardev", "socket,id=chrtpm,path=/run/swtpm.sock"));
        assert!(has(
            &a,
            "-netdev",
            "user,id=net0,hostfwd=tcp:127.0.0.1:18080-:8080"
        ));
        assert!(has(&a, "-append", "console=ttyS0 panic=-1"));
        assert!(has(&a, "-qmp", "unix:/run/qmp.sock,server=on,wait=off"));
        assert!(a.iter().any(|x| x == "-no-reboot"));
        assert!(!joined(&s).contains("iommu_platform"));
    }

    #[test]
    fn qemu_kvm_uses_host_cpu() {
        let a = command_line(&spec(Platform::Qemu, Accel::Kvm)).unwrap();
        assert!(has(&a, "-accel", "kvm"));
        assert!(has(&a, "-cpu", "host"));
    }

    #[test]
    fn snp_launch_shape() {
        let s = spec(Platform::Snp, Accel::Kvm);
        let a = command_line(&s).unwrap();
        assert!(has(&a, "-machine", "q35,confidential-guest-support=sev0"));
        assert!(has(
            &a,
            "-object",
            "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on"
        ));
        assert!(has(&a, "-cpu", "EPYC-v4"));
        assert!(has(&a, "-bios", "/fw/OVMF.fd"));
        assert!(has(
            &a,
            "-device",
            "virtio-net-pci,netdev=net0,romfile=,disable-legacy=on,iommu_platform=on"
        ));
        assert!(!joined(&s).contains("pflash"));
        assert!(!joined(&s).contains("tpm"));
    }

    #[test]
    fn tdx_launch_shape() {
        let a = command_line(&spec(Platform::Tdx, Accel::Kvm)).unwrap();
        assert!(has(
            &a,
            "-machine",
            "q35,kernel-irqchip=split,confidential-guest-support=tdx0"
        ));
        let obj = a.iter().find(|x| x.contains("tdx-guest")).unwrap();
        let v: serde_json::Value = serde_json::from_str(obj).unwrap();
        assert_eq!(v["qom-type"], "tdx-guest");
        assert_eq!(v["quote-generation-socket"]["port"], "4050");
        assert!(has(&a, "-bios", "/fw/OVMF.fd"));
    }

    #[test]
    fn invalid_specs_are_refused_with_reason() {
        assert_eq!(
            command_line(&spec(Platform::Snp, Accel::Tcg)),
            Err(SpecError::NeedsKvm(Platform::Snp))
        );
        let mut s = spec(Platform::Tdx, Accel::Kvm);
        s.tpm_socket = Some("/x".into());
        assert_eq!(command_line(&s), Err(SpecError::NoVtpm(Platform::Tdx)));
        let mut s = spec(Platform::Qemu, Accel::Tcg);
        s.firmware = Firmware::Bios("/x".into());
        assert!(matches!(
            command_line(&s),
            Err(SpecError::WrongFirmware(Platform::Qemu, _))
        ));
        let mut s = spec(Platform::Qemu, Accel::Tcg);
        s.boot = Boot::Kernel {
            kernel: "/a,b".into(),
            initrd: "/i".into(),
            cmdline: String::new(),
        };
        assert_eq!(command_line(&s), Err(SpecError::BadPath("/a,b".into())));
        let mut s = spec(Platform::Snp, Accel::Kvm);
        s.boot = Boot::Disk("/d.raw".into());
        assert_eq!(
            command_line(&s),
            Err(SpecError::DiskNotMeasured(Platform::Snp))
        );
        let mut s = spec(Platform::Qemu, Accel::Tcg);
        s.boot = Boot::Disk("/d.raw".into());
        s.state_disk = Some("/s.raw".into());
        assert_eq!(command_line(&s), Err(SpecError::StateDiskWithDisk));
        let mut s = spec(Platform::Qemu, Accel::Tcg);
        s.memory_mib = 64;
        assert_eq!(command_line(&s), Err(SpecError::TooSmall));
        assert!("sgx".parse::<Platform>().is_err());
        assert!("hvf".parse::<Accel>().is_err());
    }
}
