//! The TEE management agent.
//!
//! Trust-chain place: measured by PID1 into the runtime event log before it starts; in
//! the TCB. This agent serves its health and the measured event log over HTTP on
//! the guest network over attested TLS (its key made here, bound into its evidence),
//! evidence for verifiers (TPM quotes with the event logs, AK activation), and the
//! sealed workloads, each confined by the kernel ([`enforce`]) as well as by wasmtime.
//!
//! Inputs: `--listen ADDR` and `--eventlog PATH` from PID1's configuration. Outputs: the
//! HTTP API and a `cvm-agent: ready <addr>` console line once it accepts connections.
//!
//! Non-goals: no shell, no remote command execution.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod api;
pub mod args;
pub mod attestation;
pub mod broker;
pub mod enforce;
pub mod fscrypt;
pub mod measurements;
pub mod passport;
pub mod runtime_log;
pub mod secrets;
mod sys;
pub mod tls;
pub mod workloads;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

pub use args::{AgentArgs, ArgsError};

/// An error with all its causes, `outer: cause: cause`, for answers and logs.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(&format!(": {c}"));
        cause = c.source();
    }
    s
}

/// What the request handlers share.
#[derive(Debug)]
pub struct AgentState {
    /// The runtime event log PID1 wrote.
    pub eventlog: PathBuf,
    /// Root of sysfs, where TPM PCR values are read (`/sys` in the guest).
    pub sysfs: PathBuf,
    /// Evidence for verifiers.
    pub attestation: Arc<attestation::Attestation>,
    /// The secrets PID1 released from the broker.
    pub secrets: secrets::SecretStore,
    /// The mounted encrypted state volume, if any.
    pub state_dir: Option<PathBuf>,
    /// The owners whose sealed workloads this appliance accepts.
    pub owners: cvm_runtime::bundle::owner::OwnerKeys,
    /// The sealed workloads.
    pub workloads: Arc<workloads::Workloads>,
    /// Signed requests already seen.
    pub replay: api::auth::ReplayGuard,
    /// SHA-256 (hex) of the agent's TLS public key, which owner signatures cover, so a
    /// signed request cannot be replayed to another appliance.
    pub tls_key_sha256: String,
    /// The broker's attestation tokens for the TLS key.
    pub passports: Arc<passport::Passports>,
}

/// Serve until SIGTERM.
pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let secrets = match args.secrets_fd {
        Some(fd) => secrets::SecretStore::from_fd(fd)?,
        None => secrets::SecretStore::default(),
    };
    info!(secrets = ?secrets, "secrets received");
    let owners = match &args.owners {
        Some(path) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("read owner keys {}: {e}", path.display()))?;
            cvm_runtime::bundle::owner::OwnerKeys::from_pem_bundle(&pem)
                .map_err(|e| anyhow::anyhow!("owner keys {}: {e}", path.display()))?
        }
        None => cvm_runtime::bundle::owner::OwnerKeys::default(),
    };
    info!(owners = owners.len(), "trusted owners");
    let broker = match (&args.broker, &args.initdata) {
        (Some(url), Some(initdata)) => Some(broker::Broker::load(
            url,
            args.broker_ca.as_deref(),
            initdata,
            args.tpm.clone(),
        )?),
        (None, None) => None,
        _ => anyhow::bail!("--broker and --initdata go together"),
    };
    info!(broker = ?broker.as_ref().map(broker::Broker::url), "workload key broker");
    let tls = tls::AgentTls::generate()?;
    info!(key_sha256 = %hex::encode(tls.key_sha256), "TLS key made");
    let listener = TcpListener::bind(args.listen).await?;
    let local = listener.local_addr()?;
    let sysfs = PathBuf::from("/sys");
    std::fs::create_dir_all(&args.run_dir)
        .map_err(|e| anyhow::anyhow!("create {}: {e}", args.run_dir.display()))?;
    let measurements = Arc::new(runtime_log::Measurements::new(
        args.eventlog.clone(),
        args.tpm.clone(),
    ));
    // Enforcement lives in the kernel (PID1 installed and pinned the baseline); the
    // agent only opens the maps. Without them no workload is deployed.
    let enforcer = enforce::Enforcer::open().map(Arc::new);
    match &enforcer {
        Ok(e) => info!(baseline = %e.baseline.sha256, "kernel enforcement maps opened"),
        Err(e) => {
            tracing::error!(error = %e, "kernel enforcement unavailable: no workload will be deployed")
        }
    }
    let events = enforcer.as_ref().ok().map(|e| e.events());
    let passports = Arc::new(passport::Passports::new(
        broker.clone(),
        tls.key_pkcs8.clone(),
        measurements.clone(),
    ));
    let workloads = Arc::new(workloads::Workloads::new(workloads::Context {
        runtime: args.runtime.clone(),
        run_dir: args.run_dir.clone(),
        state_dir: args.state_dir.clone(),
        api_port: local.port(),
        owners: owners.clone(),
        broker,
        measurements: measurements.clone(),
        enforcer,
        holder: holder_name(args.state_dir.as_deref(), &tls.key_sha256),
        passports: passports.clone(),
        tls_key_sha256: hex::encode(tls.key_sha256),
        tls_key_pkcs8: tls.key_pkcs8.clone(),
    }));
    match events {
        Some(Ok(ring)) => {
            let w = workloads.clone();
            tokio::spawn(async move {
                if let Err(e) = enforce::read_events(ring, w).await {
                    tracing::error!(error = %e, "kernel enforcement events can no longer be read");
                }
            });
        }
        Some(Err(e)) => tracing::error!(error = %e, "kernel enforcement events unavailable"),
        None => {}
    }
    let state = Arc::new(AgentState {
        attestation: Arc::new(attestation::Attestation::new(
            args.tpm,
            args.eventlog.clone(),
            sysfs.clone(),
            tls.key_sha256,
            measurements,
        )),
        eventlog: args.eventlog,
        sysfs,
        secrets,
        state_dir: args.state_dir,
        owners,
        workloads,
        replay: api::auth::ReplayGuard::default(),
        tls_key_sha256: hex::encode(tls.key_sha256),
        passports,
    });
    let mut term = signal(SignalKind::terminate())?;
    println!("{}{local}", cvm_proto::console::AGENT_READY);
    info!(%local, "serving");
    tokio::select! {
        r = api::serve(listener, state, tls.config) => r?,
        _ = term.recv() => info!("SIGTERM: stopping"),
    }
    Ok(())
}

/// How this appliance names itself as the holder of a workload's state at the broker:
/// its state volume's LUKS UUID (PID1's record), which stays the same across reboots,
/// so a rebooted appliance still recognises the state it holds; without a state
/// volume (no state to hold), this run's TLS key.
fn holder_name(state_dir: Option<&std::path::Path>, tls_key_sha256: &[u8; 32]) -> String {
    #[derive(serde::Deserialize)]
    struct Record {
        uuid: String,
    }
    state_dir
        .and_then(|d| std::fs::read(d.join("cvm/state.json")).ok())
        .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
        .map(|r| format!("volume:{}", r.uuid))
        .unwrap_or_else(|| format!("agent-key:{}", hex::encode(tls_key_sha256)))
}
