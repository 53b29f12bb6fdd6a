//! `cvm run`: boot an image under QEMU with OVMF and a swtpm vTPM, stream the console,
//! wait for the agent, and exit with the guest's outcome.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use cvm_qemu::{Accel, Boot, Outcome, Vm, VmOptions};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::exit::GuestFailed;
use crate::paths;

/// How to boot (shared by `cvm run` and `cvm demo`).
#[derive(Debug, Clone, clap::Args)]
pub struct VmArgs {
    /// Image folder written by `cvm build`.
    #[arg(long, default_value = paths::DEFAULT_IMAGE_DIR)]
    pub image: PathBuf,
    /// Accelerator: tcg (works everywhere) or kvm.
    #[arg(long, default_value = "tcg")]
    pub accel: Accel,
    /// vCPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    /// Host port forwarded to the agent [default: a free port].
    #[arg(long)]
    pub port: Option<u16>,
    /// Extra kernel parameters appended to the image's command line (e.g. cvm.log=debug).
    #[arg(long, value_name = "PARAMS")]
    pub append: Option<String>,
    /// Boot without a vTPM.
    #[arg(long)]
    pub no_tpm: bool,
    /// Serial console log [default: serial.log beside the image folder].
    #[arg(long)]
    pub serial_log: Option<PathBuf>,
    /// Seconds to wait for the agent's ready line.
    #[arg(long, default_value_t = 300)]
    pub ready_timeout: u64,
    /// Firmware folder holding OVMF_CODE_4M.fd and OVMF_VARS_4M.fd.
    #[arg(long, default_value = cvm_ovmf::DEBIAN_OVMF_DIR)]
    pub firmware: PathBuf,
    /// Init-data for the guest (`cvm initdata`): its broker, CA and keys. Without it
    /// (or --broker) the guest boots stateless and holds no keys.
    #[arg(long, value_name = "PATH", conflicts_with = "broker")]
    pub initdata: Option<PathBuf>,
    /// Boot against this broker (as the host reaches it, e.g. the `cvm broker serve`
    /// default https://127.0.0.1:8443; loopback becomes 10.0.2.2 for the guest): writes
    /// the init-data itself, pinning --broker-ca.
    #[arg(long, value_name = "URL")]
    pub broker: Option<String>,
    /// The broker's CA for --broker [default: the `cvm broker serve` folder's
    /// tls/ca.pem].
    #[arg(long, value_name = "PEM", requires = "broker")]
    pub broker_ca: Option<PathBuf>,
    /// Boot the UEFI way: the firmware starts the UKI from this GPT disk, whose
    /// cvm-state partition holds the encrypted state. Made from the image's disk.raw
    /// when missing; an existing one must hold the same boot partition.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["state_disk", "append"])]
    pub disk: Option<PathBuf>,
    /// Disk image for the guest's encrypted state (created empty, of --state-size, if
    /// missing).
    #[arg(long, value_name = "PATH")]
    pub state_disk: Option<PathBuf>,
    /// Size of a new state disk, MiB.
    #[arg(long, default_value_t = 64)]
    pub state_size: u64,
    /// With --broker: an owner public key (`cvm keygen`'s .pub) whose sealed workloads
    /// the appliance accepts (repeatable).
    #[arg(long = "owner", value_name = "PEM", requires = "broker")]
    pub owners: Vec<PathBuf>,
    /// Forward a host port (on 127.0.0.1) to a guest port, e.g. a workload's HTTP
    /// port: HOST:GUEST (repeatable).
    #[arg(long = "forward", value_name = "HOST:GUEST", value_parser = parse_forward)]
    pub forwards: Vec<(u16, u16)>,
}

fn parse_forward(s: &str) -> Result<(u16, u16), String> {
    let (h, g) = s.split_once(':').ok_or("expected HOST:GUEST ports")?;
    let port = |p: &str| {
        p.parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or(format!("{p} is not a port (1-65535)"))
    };
    Ok((port(h)?, port(g)?))
}

/// The broker URL as a guest under QEMU's user network reaches it: the host's loopback
/// is 10.0.2.2 there.
pub fn guest_url(url: &str) -> String {
    for host in ["127.0.0.1", "localhost"] {
        for scheme in ["https://", "http://"] {
            let from = format!("{scheme}{host}");
            if let Some(rest) = url.strip_prefix(&from)
                && (rest.is_empty() || rest.starts_with(':') || rest.starts_with('/'))
            {
                return format!("{scheme}10.0.2.2{rest}");
            }
        }
    }
    url.to_owned()
}

/// Create an empty (sparse) state disk of `mib` MiB at `path` unless one exists.
pub fn ensure_state_disk(path: &Path, mib: u64) -> anyhow::Result<()> {
    if path.exists() {
        return Ok(());
    }
    anyhow::ensure!(
        (16..=1 << 20).contains(&mib),
        "--state-size must be 16 MiB to 1 TiB"
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("create state disk {}", path.display()))?;
    f.set_len(mib << 20)
        .with_context(|| format!("size state disk {}", path.display()))?;
    Ok(())
}

/// Make `disk` a copy of the image's disk unless it exists; an existing disk must hold
/// the image's partition table and boot partition (its state partition is the guest's).
pub fn ensure_boot_disk(
    image: &Path,
    manifest: &cvm_image::Manifest,
    disk: &Path,
) -> anyhow::Result<()> {
    let built = manifest.disk.as_ref().with_context(|| {
        format!(
            "image {} has no disk (it was built with --no-uki)",
            image.display()
        )
    })?;
    let source = image.join(&built.artifact.file);
    if !disk.exists() {
        cvm_image::export::export(
            &source,
            cvm_image::export::Format::Raw,
            disk,
            false,
            0,
            [0; 16],
        )
        .with_context(|| format!("copy {} to {}", source.display(), disk.display()))?;
        return Ok(());
    }
    let same = cvm_image::disk::same_boot_partition(&source, disk, &built.info.layout)
        .with_context(|| format!("compare {} with {}", disk.display(), source.display()))?;
    anyhow::ensure!(
        same,
        "disk {} does not hold this image's boot partition (built from another image, or \
         changed): give a new path to copy the image's disk to",
        disk.display()
    );
    Ok(())
}

/// A started VM and the private folder its files live in.
pub struct Booted {
    /// The VM.
    pub vm: Vm,
    /// Removed on drop.
    pub run_dir: tempfile::TempDir,
    /// The serial log.
    pub serial_log: PathBuf,
}

/// Start the VM described by `args`.
pub fn boot(args: &VmArgs, echo: bool) -> anyhow::Result<Booted> {
    let manifest = super::read_manifest(&args.image)?;
    super::verify_image(&args.image, &manifest)?;
    let firmware = cvm_ovmf::dev_firmware(&args.firmware)?;
    let mut cmdline = manifest.cmdline_text.clone();
    if let Some(extra) = &args.append {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    let run_dir = tempfile::Builder::new()
        .prefix("cvm-run-")
        .tempdir()
        .context("create a run folder")?;
    let serial_log = args
        .serial_log
        .clone()
        .unwrap_or_else(|| default_serial_log(&args.image));
    if let Some(disk) = &args.state_disk {
        ensure_state_disk(disk, args.state_size)?;
    }
    let boot = match &args.disk {
        Some(disk) => {
            ensure_boot_disk(&args.image, &manifest, disk)?;
            Boot::Disk(disk.clone())
        }
        None => Boot::Kernel {
            kernel: args.image.join(&manifest.kernel.file),
            initrd: args.image.join(&manifest.initramfs.file),
            cmdline,
        },
    };
    let initdata = match &args.broker {
        None => args.initdata.clone(),
        Some(url) => {
            let spec = super::initdata::InitdataSpec {
                broker_url: guest_url(url),
                broker_ca: args.broker_ca.clone(),
                insecure_http: url.starts_with("http://"),
                state_key: None,
                no_state: args.state_disk.is_none() && args.disk.is_none(),
                resources: Vec::new(),
                owners: args.owners.clone(),
            };
            let path = run_dir.path().join("initdata.toml");
            std::fs::write(&path, super::initdata::render_spec(&spec)?)
                .with_context(|| format!("write {}", path.display()))?;
            Some(path)
        }
    };
    let opts = VmOptions {
        accel: args.accel,
        cpus: args.cpus,
        memory_mib: args.memory,
        boot,
        firmware_code: firmware.code,
        firmware_vars: firmware.vars_template,
        tpm: !args.no_tpm,
        run_dir: run_dir.path().to_owned(),
        ca_dir: paths::swtpm_ca_dir(),
        host_port: args.port,
        forwards: args.forwards.clone(),
        serial_log: serial_log.clone(),
        echo,
        initdata,
        state_disk: args.state_disk.clone(),
    };
    let vm = Vm::start(&opts)?;
    Ok(Booted {
        vm,
        run_dir,
        serial_log,
    })
}

fn default_serial_log(image: &Path) -> PathBuf {
    match image.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join("serial.log"),
        _ => PathBuf::from("serial.log"),
    }
}

/// Arguments of `cvm run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Power the guest down as soon as the agent is ready (for measurements).
    #[arg(long)]
    shutdown_when_ready: bool,
    /// Print a JSON report on stdout at the end; the console is not echoed.
    #[arg(long)]
    json: bool,
}

/// The result of one run.
#[derive(Debug, Serialize)]
pub struct RunReport {
    /// `poweroff-ok`, `fatal` or `no-status`.
    pub outcome: &'static str,
    /// The fatal cause or what ended the VM.
    pub detail: Option<String>,
    /// Host address of the agent.
    pub agent: String,
    /// Milliseconds from QEMU start to the agent's ready line.
    pub ready_after_ms: Option<u64>,
    /// Milliseconds from QEMU start to its exit.
    pub ended_after_ms: u64,
    /// The serial console log.
    pub serial_log: PathBuf,
}

/// Start of the stderr line `cvm run` prints when the agent is ready:
/// `cvm: agent ready at https://HOST:PORT after N s`.
pub const READY_PREFIX: &str = "cvm: agent ready at https://";

/// How long a guest may take to power off after Ctrl-C/SIGTERM before QEMU is killed.
pub const POWERDOWN_GRACE: Duration = Duration::from_secs(60);

/// Seconds the guest gets to power off after the power button.
pub const POWEROFF_TIMEOUT: Duration = Duration::from_secs(120);

/// Run `cvm run`.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    // A handler plus self-pipe (signal-hook) rather than a blocked mask: a blocked mask
    // would be inherited by QEMU and swtpm, which then could not be stopped by SIGTERM.
    // Installed before the boot so that an early Ctrl-C is queued, not fatal.
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("install SIGINT/SIGTERM handlers")?;
    let mut booted = boot(&args.vm, !args.json)?;
    let agent = format!("127.0.0.1:{}", booted.vm.host_port());
    let qmp = booted.vm.qmp_socket().to_owned();
    let qemu = Pid::from_raw(booted.vm.qemu_pid() as i32);
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            eprintln!("cvm: signal {sig}: pressing the guest's power button");
            if let Err(e) = cvm_qemu::qmp::execute(&qmp, "system_powerdown") {
                eprintln!("cvm: power button failed: {e}");
            }
            // A guest that ignores the button is stopped hard; QEMU stays our unreaped
            // child until the main thread waits for it, so its pid cannot be reused.
            std::thread::sleep(POWERDOWN_GRACE);
            eprintln!(
                "cvm: guest still running {POWERDOWN_GRACE:?} after the power button; killing QEMU"
            );
            let _ = kill(qemu, Signal::SIGKILL);
        }
    });

    let ready = booted
        .vm
        .wait_ready(Duration::from_secs(args.vm.ready_timeout));
    let ready_after_ms = match &ready {
        Ok(_) => {
            let ms = booted.vm.elapsed().as_millis() as u64;
            // Always on stderr, also with --json: scripts wait for this line.
            eprintln!("{READY_PREFIX}{agent} after {:.1} s", ms as f64 / 1000.0);
            // A guest that powers itself off right away has no QMP socket left to use.
            if args.shutdown_when_ready
                && let Err(e) = booted.vm.powerdown()
            {
                tracing::debug!(error = %e, "power button not pressed");
            }
            Some(ms)
        }
        Err(cvm_qemu::RunError::EndedEarly(_)) => None,
        Err(cvm_qemu::RunError::Timeout(..)) => {
            booted.vm.powerdown().ok();
            None
        }
        Err(e) => anyhow::bail!("{e}"),
    };
    // A ready guest runs until it powers off (Ctrl-C presses its power button).
    let limit = (ready.is_err() || args.shutdown_when_ready).then_some(POWEROFF_TIMEOUT);
    let outcome = booted.vm.wait_exit(limit)?;
    let report = RunReport {
        outcome: match &outcome {
            Outcome::PoweroffOk => "poweroff-ok",
            Outcome::Fatal(_) => "fatal",
            Outcome::NoStatus(_) => "no-status",
        },
        detail: match &outcome {
            Outcome::PoweroffOk => None,
            Outcome::Fatal(d) | Outcome::NoStatus(d) => Some(d.clone()),
        },
        agent,
        ready_after_ms,
        ended_after_ms: booted.vm.elapsed().as_millis() as u64,
        serial_log: booted.serial_log.clone(),
    };
    if args.json {
        super::print_json(&report)?;
    } else {
        eprintln!(
            "cvm: guest {}{}",
            report.outcome,
            report
                .detail
                .as_deref()
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
        eprintln!("cvm: console log: {}", report.serial_log.display());
    }
    match outcome {
        Outcome::PoweroffOk => Ok(()),
        Outcome::Fatal(d) => Err(GuestFailed(format!("guest failed: {d}")).into()),
        Outcome::NoStatus(d) => {
            Err(GuestFailed(format!("guest stopped without a status line: {d}")).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::guest_url;

    #[test]
    fn loopback_brokers_are_reached_through_the_slirp_gateway() {
        assert_eq!(guest_url("https://127.0.0.1:8443"), "https://10.0.2.2:8443");
        assert_eq!(guest_url("http://localhost:80/x"), "http://10.0.2.2:80/x");
        assert_eq!(guest_url("https://127.0.0.10:1"), "https://127.0.0.10:1");
        assert_eq!(
            guest_url("https://kbs.example:8443"),
            "https://kbs.example:8443"
        );
    }
}
