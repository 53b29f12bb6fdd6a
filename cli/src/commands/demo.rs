//! `cvm demo`: the main job in one command. Start the project's key broker, predict
//! the image's PCRs offline and register them with it, boot the image under QEMU with a
//! real vTPM, let PID1 attest to the broker and receive the key to its encrypted state
//! volume (created on this first boot), show the healthy agent, its verified
//! measurements and a fresh attestation, power off, then boot again to show the same
//! state unlocked by a second key release.
//!
//! On each boot the service owner's part follows: the example workload, sealed on the
//! host under a fresh owner key (its content key stored in the broker), is deployed to
//! the attested agent over TLS pinned to the attested key, and called through the port
//! the agent serves it on; on the second boot it finds the state it wrote on the first,
//! kept on the encrypted volume.

use std::time::Duration;

use anyhow::Context as _;
use cvm_proto::agent::{EventLogResponse, Health, StateStatus};

use super::broker::{Admin, AdminArgs, default_ek_ca, random_key};
use super::eventlog::{print_checks, print_log};
use super::initdata::{InitdataSpec, render_spec};
use super::run::{POWEROFF_TIMEOUT, VmArgs, boot};
use super::seal::{KeygenArgs, SealArgs, keygen, seal_command};
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
    /// The workload to seal and deploy [default: the example service built by
    /// ./scripts/build-workloads].
    #[arg(long, value_name = "WASM")]
    workload: Option<std::path::PathBuf>,
    /// Its policy.
    #[arg(
        long,
        value_name = "YAML",
        default_value = "workloads/hello/policy.yaml"
    )]
    workload_policy: std::path::PathBuf,
}

/// The sealed workload the demo deploys on each boot.
struct Workload {
    owner: cvm_runtime::bundle::owner::OwnerKey,
    bundle: Vec<u8>,
    /// Host port forwarded to its HTTP port.
    port: u16,
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

    println!("== the service owner: cvm keygen, cvm seal --upload (the example workload)");
    let owner_key = work.path().join("owner.key");
    keygen(KeygenArgs {
        out: owner_key.clone(),
        alg: "eddsa".into(),
        json: false,
    })?;
    let wasm = args
        .workload
        .clone()
        .unwrap_or_else(crate::paths::example_workload);
    anyhow::ensure!(
        wasm.exists(),
        "{} is missing: build it with ./scripts/build-workloads",
        wasm.display()
    );
    let bundle_path = work.path().join("hello.bundle");
    seal_command(SealArgs {
        wasm,
        policy: args.workload_policy.clone(),
        name: Some("hello".into()),
        version: "0.1.0".into(),
        env: Vec::new(),
        key_resource: "default/hello/key".into(),
        state_key_resource: None,
        owner_key: owner_key.clone(),
        out: Some(bundle_path.clone()),
        upload: true,
        admin: AdminArgs {
            url: broker.ready.url.clone(),
            dir: Some(broker.ready.dir.clone()),
            ca: None,
            admin_key: None,
        },
        key_out: None,
        explain: false,
        json: false,
    })?;
    let policy = cvm_runtime::policy::WorkloadPolicy::from_yaml(
        &std::fs::read_to_string(&args.workload_policy)
            .with_context(|| format!("read {}", args.workload_policy.display()))?,
    )?;
    let guest_port = policy
        .http
        .as_ref()
        .map(|h| h.port)
        .context("the demo workload's policy serves no HTTP port")?;
    let workload = Workload {
        owner: cvm_runtime::bundle::owner::OwnerKey::from_pem(&std::fs::read_to_string(
            &owner_key,
        )?)?,
        bundle: std::fs::read(&bundle_path)?,
        port: free_port()?,
    };

    let initdata = render_spec(&InitdataSpec {
        broker_url: guest_url,
        broker_ca: broker.ready.ca.clone(),
        insecure_http: false,
        state_key: None,
        no_state: false,
        resources: Vec::new(),
        owners: vec![owner_key.with_extension("pub")],
    })?;
    let initdata_path = work.path().join("initdata.toml");
    std::fs::write(&initdata_path, &initdata)?;

    println!(
        "== predicting {} ({}) under QEMU {:?} (cvm measure --platform qemu --initdata)",
        args.vm.image.display(),
        manifest.kernel_source,
        args.vm.accel
    );
    let mut measure = super::measure::MeasureArgs::for_image(
        args.vm.image.clone(),
        u64::from(args.vm.memory),
        if args.vm.disk.is_some() {
            "disk"
        } else {
            "direct"
        },
    );
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
    vm.forwards.push((workload.port, guest_port));
    let mut checks = Vec::new();
    for boot_no in 1..=2 {
        checks.extend(boot_once(
            &vm, &args, &manifest, &reference, &workload, boot_no,
        )?);
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
    workload: &Workload,
    boot_no: u32,
) -> anyhow::Result<Vec<verify::Check>> {
    println!("== boot {boot_no}: OVMF + swtpm, init-data through fw_cfg, state disk");
    let mut booted = boot(vm, args.console)?;
    let addr = format!("127.0.0.1:{}", booted.vm.host_port());
    let agent = agent_client::Agent::unverified(&addr);
    booted
        .vm
        .wait_ready(Duration::from_secs(vm.ready_timeout))
        .with_context(|| format!("boot failed; console log: {}", booted.serial_log.display()))?;
    println!(
        "== agent ready at https://{addr} after {:.1} s: PID1 attested and got its key",
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
    // An agent pinned to its attested key, and that key's hash.
    let mut attested = None;
    if boot_no == 1 {
        let log: EventLogResponse = agent_client::get_json(&agent, "/v1/eventlog")?;
        println!("== GET /v1/eventlog");
        print_log(&log);
        let log_checks = verify::check_eventlog(&log, Some(manifest));
        println!("== checks");
        print_checks(&log_checks);
        println!("== attestation (cvm attest: AK bound to the swtpm-certified EK, fresh quote)");
        let trust = super::attest::ek_trust(None)?;
        let (report, pinned) = super::attest::attest_guest(&addr, &trust, Some(reference))?;
        print_checks(&report.checks);
        checks.extend(log_checks);
        if report.ok {
            attested = Some((pinned, report.tls_key_sha256.clone()));
        }
        checks.extend(report.checks);
    }
    checks.extend(run_workload(&addr, reference, workload, boot_no, attested)?);
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

/// Deploy the sealed workload to the agent pinned to its attested key (attesting it
/// first unless `attested` already did), call it.
fn run_workload(
    addr: &str,
    reference: &cvm_image::measure::qemu::QemuReference,
    workload: &Workload,
    boot_no: u32,
    attested: Option<(agent_client::Agent, String)>,
) -> anyhow::Result<Vec<verify::Check>> {
    println!("== cvm deploy hello.bundle: attest the agent, pin its TLS key, then send");
    let (agent, key) = match attested {
        Some(a) => a,
        None => {
            let trust = super::attest::ek_trust(None)?;
            let (report, agent) = super::attest::attest_guest(addr, &trust, Some(reference))?;
            if !report.ok {
                print_checks(&report.checks);
                return Err(VerificationFailed.into());
            }
            (agent, report.tls_key_sha256)
        }
    };
    println!("   attested: TLS key sha256 {key} bound into a fresh quote");
    let t0 = std::time::Instant::now();
    let body = agent_client::request(
        &agent,
        "POST",
        "/v1/workloads",
        &workload.bundle,
        "application/cbor",
        &[],
    )?;
    let status: cvm_proto::agent::WorkloadStatus =
        agent_client::decode(addr, "POST", "/v1/workloads", &body)?;
    println!(
        "   deployed {} in {} ms (compiled in the guest in {} ms); manifest sha256 {}",
        super::workload::describe(&status),
        t0.elapsed().as_millis(),
        status.compile_ms.unwrap_or(0),
        status.manifest_sha256
    );
    let mut checks = Vec::new();
    let expected_visit = if boot_no == 1 { 1 } else { 2 };
    let (code, text) = http_call(workload.port, "GET", "/", "")?;
    println!(
        "== GET http://127.0.0.1:{}/ -> {code} {text}",
        workload.port
    );
    checks.push(verify::Check::new(
        format!("the workload answers (boot {boot_no})"),
        if code == 200 && text.ends_with(&format!("visit {expected_visit}")) {
            Ok(format!(
                "visit {expected_visit}: its counter lives on the encrypted volume"
            ))
        } else {
            Err(format!(
                "expected visit {expected_visit}, got {code} {text}"
            ))
        },
    ));
    if boot_no == 1 {
        let (code, _) = http_call(workload.port, "POST", "/notes", "sealed and delivered")?;
        println!("== POST /notes \"sealed and delivered\" -> {code}");
    } else {
        let (code, text) = http_call(workload.port, "GET", "/notes", "")?;
        println!("== GET /notes -> {code} {text}");
        checks.push(verify::Check::new(
            "the note written on boot 1 survived the reboot",
            if code == 200 && text == "sealed and delivered" {
                Ok("read back from the workload's preopen on the encrypted volume".into())
            } else {
                Err(format!("got {code} {text}"))
            },
        ));
    }
    let path = "/v1/workloads/hello/logs?since=0";
    let headers = super::workload::sign_request(&workload.owner, &agent, "GET", path, b"")?;
    let logs = agent_client::request(&agent, "GET", path, b"", "application/json", &headers)?;
    println!("== cvm logs hello (owner-signed request)");
    for line in String::from_utf8_lossy(&logs).lines() {
        if let Ok(l) = serde_json::from_str::<cvm_proto::agent::LogLine>(line) {
            println!("  {:>4} {}", l.seq, l.text);
        }
    }
    print_checks(&checks);
    Ok(checks)
}

/// A free TCP port on the host's loopback.
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One HTTP/1.0 request to the workload's forwarded port: (status, body).
fn http_call(port: u16, method: &str, path: &str, body: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connect to the workload on 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, text) = raw
        .split_once("\r\n\r\n")
        .context("the workload's answer has no header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("the workload's answer has no status")?;
    Ok((code, text.trim().to_owned()))
}
