//! `cvm demo`: the main job in one command. Predict the image's PCRs offline, boot it
//! under QEMU with a real vTPM, wait for the agent, show that it is healthy and what was
//! measured, check that the measurements replay to the TPM and match the image's files,
//! attest it (AK bound to the certified EK, a fresh quote against the prediction), then
//! power off.

use std::time::Duration;

use anyhow::Context as _;
use cvm_proto::agent::{EventLogResponse, Health};

use super::eventlog::{print_checks, print_log};
use super::run::{POWEROFF_TIMEOUT, VmArgs, boot};
use crate::agent_client;
use crate::exit::{GuestFailed, VerificationFailed};
use crate::verify;

/// Arguments of `cvm demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    vm: VmArgs,
    /// Echo the guest's serial console.
    #[arg(long)]
    console: bool,
}

/// Run `cvm demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let manifest = super::read_manifest(&args.vm.image)?;
    println!(
        "== booting {} ({}) under QEMU {:?} with OVMF and swtpm",
        args.vm.image.display(),
        manifest.kernel_source,
        args.vm.accel
    );
    let measure =
        super::measure::MeasureArgs::for_image(args.vm.image.clone(), u64::from(args.vm.memory));
    let reference = super::measure::qemu_reference(&measure)?;
    println!("== predicted before boot (cvm measure --platform qemu):");
    for (pcr, value) in &reference.pcrs {
        println!("  PCR {pcr:<2} sha256 {value}");
    }
    let mut booted = boot(&args.vm, args.console)?;
    let agent = format!("127.0.0.1:{}", booted.vm.host_port());
    booted
        .vm
        .wait_ready(Duration::from_secs(args.vm.ready_timeout))
        .with_context(|| format!("boot failed; console log: {}", booted.serial_log.display()))?;
    println!(
        "== agent ready at http://{agent} after {:.1} s",
        booted.vm.elapsed().as_secs_f64()
    );

    let health: Health = agent_client::get_json(&agent, "/healthz")?;
    println!(
        "== GET /healthz: {} (agent {})",
        health.status, health.version
    );
    let log: EventLogResponse = agent_client::get_json(&agent, "/v1/eventlog")?;
    println!("== GET /v1/eventlog");
    print_log(&log);
    let mut checks = verify::check_eventlog(&log, Some(&manifest));
    println!("== checks");
    print_checks(&checks);
    println!("== attestation (cvm attest: AK bound to the swtpm-certified EK, fresh quote)");
    let trust = super::attest::ek_trust(None)?;
    let report = super::attest::attest_guest(&agent, &trust, Some(&reference))?;
    print_checks(&report.checks);
    checks.extend(report.checks);

    println!("== pressing the power button");
    booted.vm.powerdown()?;
    let outcome = booted.vm.wait_exit(Some(POWEROFF_TIMEOUT))?;
    println!(
        "== guest: {outcome:?} after {:.1} s (console log: {})",
        booted.vm.elapsed().as_secs_f64(),
        booted.serial_log.display()
    );
    if !outcome.is_ok() {
        return Err(GuestFailed(format!("{outcome:?}")).into());
    }
    if checks.iter().any(|c| !c.ok) {
        return Err(VerificationFailed.into());
    }
    Ok(())
}
