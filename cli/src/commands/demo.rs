//! `cvm demo`: the main job in one command. Start the project's key broker, predict
//! the image's PCRs offline and register them with it, boot the image under QEMU with a
//! real vTPM, let PID1 attest to the broker and receive the key to its encrypted state
//! volume (created on this first boot), show the healthy agent, its verified
//! measurements and a fresh attestation, power off, then boot again to show the same
//! state unlocked by a second key release.

use std::time::Duration;

use anyhow::Context as _;
use cvm_proto::agent::{EventLogResponse, Health, StateStatus};

use super::broker::{Admin, AdminArgs, default_ek_ca, random_key};
use super::eventlog::{print_checks, print_log};
use super::initdata::{InitdataSpec, render_spec};
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

/// The resource path of the state volume key in the demo broker.
const STATE_KEY: &str = "cvm/state/key";

/// Run `cvm demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let manifest = super::read_manifest(&args.vm.image)?;
    let work = tempfile::Builder::new()
        .prefix("cvm-demo-")
        .tempdir()
        .context("create the demo folder")?;

    println!("== starting the key broker (cvm broker serve)");
    let serve = cvm_broker::command::ServeArgs {
        dir: Some(work.path().join("broker")),
        listen: "127.0.0.1:0".parse()?,
        insecure_http: false,
        tls_cert: None,
        tls_key: None,
        tls_names: Vec::new(),
        admin_public_key: None,
        ek_ca: default_ek_ca()?,
        trusted_aks: Vec::new(),
        tdx_collateral: None,
        insecure_allow_sample: false,
        session_lifetime: cvm_broker::session::DEFAULT_LIFETIME,
        json: false,
    };
    let broker = cvm_broker::command::start(&serve, false)?;
    let port = broker
        .ready
        .url
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .to_owned();
    let guest_url = format!("https://10.0.2.2:{port}");
    println!(
        "   {} (the guest reaches it as {guest_url})",
        broker.ready.url
    );
    let admin = Admin::connect(&AdminArgs {
        url: broker.ready.url.clone(),
        dir: Some(broker.ready.dir.clone()),
        ca: None,
        admin_key: None,
    })?;
    admin.put_resource(STATE_KEY, &random_key(32)?)?;
    println!("   stored a fresh 256-bit state key at {STATE_KEY}");

    let initdata = render_spec(&InitdataSpec {
        broker_url: guest_url,
        broker_ca: broker.ready.ca.clone(),
        insecure_http: false,
        state_key: None,
        no_state: false,
        resources: Vec::new(),
        owners: Vec::new(),
    })?;
    let initdata_path = work.path().join("initdata.toml");
    std::fs::write(&initdata_path, &initdata)?;

    println!(
        "== predicting {} ({}) under QEMU {:?} (cvm measure --platform qemu --initdata)",
        args.vm.image.display(),
        manifest.kernel_source,
        args.vm.accel
    );
    let mut measure =
        super::measure::MeasureArgs::for_image(args.vm.image.clone(), u64::from(args.vm.memory));
    measure.initdata = Some(initdata_path.clone());
    let reference = super::measure::qemu_reference(&measure)?;
    for (pcr, value) in &reference.pcrs {
        println!("  PCR {pcr:<2} sha256 {value}");
    }
    admin.import_reference("demo-image", &serde_json::to_value(&reference)?)?;
    println!("   registered with the broker as reference values \"demo-image\"");

    let mut vm = args.vm.clone();
    vm.initdata = Some(initdata_path);
    vm.state_disk = Some(work.path().join("state.img"));
    let mut checks = Vec::new();
    for boot_no in 1..=2 {
        checks.extend(boot_once(&vm, &args, &manifest, &reference, boot_no)?);
    }

    println!("== broker audit log");
    let audit = std::fs::read_to_string(broker.ready.dir.join("audit.log")).unwrap_or_default();
    for line in audit.lines() {
        println!("  {line}");
    }
    broker.stop()?;
    if checks.iter().any(|c| !c.ok) {
        return Err(VerificationFailed.into());
    }
    Ok(())
}

fn boot_once(
    vm: &VmArgs,
    args: &DemoArgs,
    manifest: &cvm_image::Manifest,
    reference: &cvm_image::measure::qemu::QemuReference,
    boot_no: u32,
) -> anyhow::Result<Vec<verify::Check>> {
    println!("== boot {boot_no}: OVMF + swtpm, init-data through fw_cfg, state disk");
    let mut booted = boot(vm, args.console)?;
    let agent = format!("127.0.0.1:{}", booted.vm.host_port());
    booted
        .vm
        .wait_ready(Duration::from_secs(vm.ready_timeout))
        .with_context(|| format!("boot failed; console log: {}", booted.serial_log.display()))?;
    println!(
        "== agent ready at http://{agent} after {:.1} s: PID1 attested and got its key",
        booted.vm.elapsed().as_secs_f64()
    );
    let health: Health = agent_client::get_json(&agent, "/healthz")?;
    println!(
        "== GET /healthz: {} (agent {})",
        health.status, health.version
    );
    let state: StateStatus = agent_client::get_json(&agent, "/v1/state")?;
    println!(
        "== GET /v1/state: encrypted state mounted: {}, record {}",
        state.mounted,
        state
            .record
            .as_ref()
            .map(|r| r.to_string())
            .unwrap_or_default()
    );
    let boots = state
        .record
        .as_ref()
        .and_then(|r| r["boots"].as_u64())
        .unwrap_or(0);
    let mut checks = vec![verify::Check::new(
        format!("state volume seen by boot {boot_no}"),
        if state.mounted && boots == u64::from(boot_no) {
            Ok(format!("boot {boots} of this volume"))
        } else {
            Err(format!("mounted {}, boots {boots}", state.mounted))
        },
    )];
    print_checks(&checks);
    if boot_no == 1 {
        let log: EventLogResponse = agent_client::get_json(&agent, "/v1/eventlog")?;
        println!("== GET /v1/eventlog");
        print_log(&log);
        let log_checks = verify::check_eventlog(&log, Some(manifest));
        println!("== checks");
        print_checks(&log_checks);
        println!("== attestation (cvm attest: AK bound to the swtpm-certified EK, fresh quote)");
        let trust = super::attest::ek_trust(None)?;
        let report = super::attest::attest_guest(&agent, &trust, Some(reference))?;
        print_checks(&report.checks);
        checks.extend(log_checks);
        checks.extend(report.checks);
    }
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
    Ok(checks)
}
