//! Deploying a sealed bundle, in the order DESIGN.md §4 fixes: (1) the structure and
//! the owner's signature against the owners this appliance trusts; (2) the policy
//! against what the appliance allows, and the name and port reserved; (3) the signed
//! manifest measured into the runtime log and register; (4) the content key fetched
//! from the broker with fresh evidence (which now shows the manifest); (5) decryption
//! and the Wasm's hash; (6) the runtime started, which compiles the Wasm in the guest.
//! A refusal at any step leaves nothing behind but the measurement (the log is
//! append-only by design) and the log lines that say why.

use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::sync::Arc;
use std::time::Duration;

use cvm_attest::EventKind;
use cvm_proto::agent::{LogStream, WorkloadState, WorkloadStatus};
use cvm_runtime::bundle::{self, BundleError, Manifest};
use cvm_runtime::confinement::Confinement;
use cvm_runtime::launch::{LaunchSpec, Listen};
use sha2::Digest as _;
use tracing::{info, warn};

use super::{Entry, Laps, Workloads, now_ms, process, proxy, sealed_state};

/// The owner's bundle, kept in the workload's run folder (tmpfs, root-only).
pub const BUNDLE_FILE: &str = "bundle.cbor";
/// Most workloads one appliance holds.
pub const MAX_WORKLOADS: usize = 512;
/// Largest linear memory one workload may ask for, MiB.
pub const MAX_MEMORY_MIB: u32 = 1024;
/// Memory that must be available before a deploy starts: compiling a workload takes
/// tens of MiB for a moment, and the kernel's OOM killer must never be what stops a
/// deploy (it could pick the agent or another workload instead).
pub const DEPLOY_HEADROOM_MIB: u64 = 64;
/// How long the runtime may take to compile and start (TCG guests are slow).
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a bundle was not deployed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// Not a bundle, a bad or unknown signature, an invalid manifest.
    #[error(transparent)]
    Bundle(BundleError),
    /// The policy asks for something this appliance does not grant.
    #[error("policy not allowed on this appliance: {0}")]
    NotAllowed(String),
    /// A workload of that name exists.
    #[error("a workload named {0} exists (remove it first)")]
    Exists(String),
    /// The guest has too little memory left to start another workload.
    #[error(
        "the appliance has {available_mib} MiB of memory available and a deploy needs {DEPLOY_HEADROOM_MIB} MiB: remove a workload or give the guest more memory"
    )]
    NoMemory {
        /// MemAvailable, MiB.
        available_mib: u64,
    },
    /// The manifest or the confinement could not be measured.
    #[error("measure the {0}")]
    Measure(String),
    /// A layer of the workload's confinement could not be established (the reason
    /// names the layer: bpf-lsm, landlock, cgroup).
    #[error("confinement not established: {0}")]
    Confinement(crate::enforce::LayerError),
    /// No broker configured (the appliance booted without init-data).
    #[error(
        "this appliance has no key broker (it booted without init-data), so no content key can be fetched"
    )]
    NoBroker,
    /// The broker refused the key, or could not be reached.
    #[error("content key {resource}: {reason}")]
    Key {
        /// The resource path.
        resource: String,
        /// The broker's reason.
        reason: String,
    },
    /// The workload's sealed state was not opened (rolled back, missing, wrong key).
    #[error("sealed state: {0}")]
    State(super::sealed_state::StateError),
    /// The content did not decrypt or is not the manifest's Wasm.
    #[error(transparent)]
    Content(BundleError),
    /// The runtime could not be set up or refused the Wasm.
    #[error("workload did not start: {0}")]
    Start(String),
}

impl DeployError {
    /// A stable name for the error (the API's `type`).
    pub fn kind(&self) -> &'static str {
        match self {
            DeployError::Bundle(BundleError::UnknownOwner(_)) => "UnknownOwner",
            DeployError::Bundle(BundleError::Signature | BundleError::Algorithm(_)) => {
                "BadSignature"
            }
            DeployError::Bundle(BundleError::TooLarge { .. }) => "TooLarge",
            DeployError::Bundle(_) => "BadBundle",
            DeployError::NotAllowed(_) => "PolicyNotAllowed",
            DeployError::Exists(_) => "Exists",
            DeployError::NoMemory { .. } => "InsufficientMemory",
            DeployError::Measure(_) => "MeasureFailed",
            DeployError::Confinement(_) => "ConfinementUnavailable",
            DeployError::NoBroker => "NoBroker",
            DeployError::Key { .. } => "KeyRefused",
            DeployError::State(e) => e.kind(),
            DeployError::Content(BundleError::WasmHash { .. }) => "WasmHashMismatch",
            DeployError::Content(_) => "BadContent",
            DeployError::Start(_) => "StartFailed",
        }
    }
}

/// Deploy `bytes`; returns the workload's status once its runtime is ready.
pub async fn deploy(w: &Arc<Workloads>, bytes: &[u8]) -> Result<WorkloadStatus, DeployError> {
    deploy_with(w, bytes, None).await
}

/// A migration's incoming state: installed in place of opening the disk's state.
#[derive(Debug)]
pub struct Incoming {
    /// The sealed snapshot (its header checked against the release).
    pub snapshot: cvm_runtime::snapshot::Parsed,
    /// The version the source released.
    pub released: u64,
    /// The migration's id.
    pub migration: String,
    /// This agent's TLS key sha256 (hex), which the release names.
    pub me_key: String,
    /// The manifest digest (hex) the release names.
    pub manifest_sha256: String,
}

/// Deploy `bytes`, with the state a migration brings (`incoming`) or the disk's.
pub async fn deploy_with(
    w: &Arc<Workloads>,
    bytes: &[u8],
    incoming: Option<Incoming>,
) -> Result<WorkloadStatus, DeployError> {
    let mut laps = Laps::start();
    let migrated = incoming.is_some();
    // (1) Structure and signature.
    let verified = bundle::parse(bytes)
        .and_then(|p| p.verify(&w.ctx.owners))
        .map_err(DeployError::Bundle)?;
    let manifest = verified.manifest().clone();
    let owner = verified.owner_kid().to_vec();
    if let Some(inc) = &incoming {
        let digest = hex::encode(verified.manifest_digest());
        if digest != inc.manifest_sha256 || manifest.state_key_resource.is_none() {
            return Err(DeployError::NotAllowed(format!(
                "the migration released manifest sha256 {} with state, this bundle is {digest}",
                inc.manifest_sha256
            )));
        }
    }
    // (2) Admission: policy, name, port.
    admit(w, &manifest)?;
    let entry = reserve(
        w,
        &manifest,
        &owner,
        hex::encode(verified.manifest_digest()),
    )?;
    let state_dir = w.workload_state(&manifest.name);
    let state_existed = state_dir.as_ref().is_some_and(|d| d.exists());
    // Once the manifest is in the log, a refusal goes there too.
    let mut measured = false;
    let result = async {
        if let Some(port) = manifest.policy.http.as_ref().map(|h| h.port) {
            let sock = w.ctx.run_dir.join(&manifest.name).join("http.sock");
            let handle = proxy::listen(port, sock)
                .await
                .map_err(|e| DeployError::NotAllowed(format!("http.port {port}: {e}")))?;
            if let Ok(mut p) = entry.proxy.lock() {
                *p = Some(handle);
            }
        }
        // (3) Measure before the key is asked for.
        let subject = format!(
            "{} {} owner={}",
            manifest.name,
            manifest.version,
            hex::encode(&owner)
        );
        let measurements = w.ctx.measurements.clone();
        let signed = verified.manifest_bytes().to_vec();
        let log = tokio::task::spawn_blocking(move || {
            measurements.measure(EventKind::WorkloadManifest, &subject, &signed)
        })
        .await
        .map_err(|e| DeployError::Measure(format!("manifest: {e}")))?
        .map_err(|e| DeployError::Measure(format!("manifest: {e}")))?;
        measured = true;
        entry.logs.push(
            LogStream::Event,
            &format!(
                "manifest sha256:{} measured (runtime log event {})",
                hex::encode(verified.manifest_digest()),
                log.records.len() - 1
            ),
        );
        // (3b) The confinement: every layer in place (or the deploy stops, naming the
        // layer), then its digest measured, so the key is released to a workload
        // whose confinement the evidence shows.
        laps.lap("verify and measure");
        confine(w, &entry, &manifest).await?;
        laps.lap("confine");
        // (4) The content key, with evidence that shows the manifest; in the same
        // attested session the state key and the state's version (sealed_state).
        let broker = w.ctx.broker.clone().ok_or(DeployError::NoBroker)?;
        let resource = manifest.key_resource.clone();
        let wanted = resource.clone();
        let sealed = match (&manifest.state_key_resource, &w.ctx.state_dir) {
            (Some(r), Some(mount)) => Some((
                r.clone(),
                mount.clone(),
                w.workload_state(&manifest.name).unwrap_or_default(),
                w.files_dir(&manifest.name),
            )),
            _ => None,
        };
        let name = manifest.name.clone();
        let holder = w.ctx.holder.clone();
        // The evidence must show the log as it is when the quote is made (another
        // workload may have been measured since this one).
        drop(log);
        let measurements = w.ctx.measurements.clone();
        let key_refused = |reason: String| DeployError::Key {
            resource: resource.clone(),
            reason,
        };
        let (key, opened) = tokio::task::spawn_blocking(move || {
            let _still = measurements.hold_still();
            let mut session = broker.session(&measurements.current()?)?;
            let key = session.resource(&wanted)?;
            let opened = sealed.map(|(r, mount, dir, files)| {
                let place = sealed_state::Place {
                    mount: &mount,
                    dir: &dir,
                    files: &files,
                    name: &name,
                    holder: &holder,
                };
                match &incoming {
                    Some(inc) => sealed_state::accept(
                        &mut session,
                        &r,
                        &place,
                        &inc.snapshot,
                        inc.released,
                        &inc.migration,
                        &inc.me_key,
                    ),
                    None => sealed_state::open(&mut session, &r, &place),
                }
            });
            Ok::<_, String>((key, opened))
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r)
        .map_err(key_refused)?;
        laps.lap(if migrated { "attest, keys, install the state" } else { "attest, keys, open the state" });
        entry.logs.push(
            LogStream::Event,
            &format!("content key {resource} released by the broker"),
        );
        if let Some(opened) = opened {
            let opened = opened.map_err(DeployError::State)?;
            entry.logs.push(
                LogStream::Event,
                &format!(
                    "state version {} opened: the broker's record matches the disk; folder encrypted with key {} ({})",
                    opened.version,
                    hex::encode(opened.key_id),
                    opened.resource
                ),
            );
            entry.set_sealed(opened);
        }
        // (5) Decrypt, check the hash.
        let wasm = verified.open(&key).map_err(DeployError::Content)?;
        drop(key);
        // (6) Files, then the runtime.
        let spec = prepare(w, &manifest, &wasm, bytes)
            .map_err(|e| DeployError::Start(e.to_string()))?;
        drop(wasm);
        let handle = tokio::spawn(process::supervise(
            entry.clone(),
            w.ctx.runtime.clone(),
            spec,
            w.ctx.measurements.clone(),
        ));
        if let Ok(mut s) = entry.supervisor.lock() {
            *s = Some(handle);
        }
        let mut state = entry.state.subscribe();
        let settled = tokio::time::timeout(
            START_TIMEOUT,
            state.wait_for(|s| *s != WorkloadState::Starting),
        )
        .await;
        match settled.ok().and_then(|r| r.ok()).map(|s| *s) {
            Some(WorkloadState::Running | WorkloadState::Exited) => {}
            Some(_) => {
                return Err(DeployError::Start(
                    entry
                        .reason()
                        .unwrap_or_else(|| "the runtime stopped".into()),
                ));
            }
            None => {
                return Err(DeployError::Start(format!(
                    "not ready after {} s",
                    START_TIMEOUT.as_secs()
                )));
            }
        }
        laps.lap("compile and start");
        // The verified Wasm stays only as long as the runtime needs it: it has
        // compiled it, and a restart reads it again, so keep it (tmpfs, root-only).
        Ok(())
    }
    .await;
    match result {
        Ok(()) => {
            entry.deployed();
            info!(workload = %manifest.name, version = %manifest.version, steps = %laps, "deployed");
            entry
                .logs
                .push(LogStream::Event, &format!("deployed: {laps}"));
            entry
                .status()
                .ok_or_else(|| DeployError::Start("status unavailable".into()))
        }
        Err(e) => {
            warn!(workload = %manifest.name, error = %e, "deploy refused");
            super::halt(&entry).await;
            // Once its record is written the state's version may be at the broker
            // too: the folder stays, or the next deploy would find the broker's
            // version and no state.
            let recorded = w
                .workload_state(&manifest.name)
                .is_some_and(|d| d.join(sealed_state::RECORD).exists());
            w.discard(&manifest.name, !state_existed && !recorded);
            if measured {
                super::record_outcome(
                    &w.ctx.measurements,
                    &manifest.name,
                    &format!("refused: {}: {e}", e.kind()),
                )
                .await;
            }
            Err(e)
        }
    }
}

/// What this appliance allows a policy to ask for.
fn admit(w: &Workloads, m: &Manifest) -> Result<(), DeployError> {
    let p = &m.policy;
    let no = |s: String| Err(DeployError::NotAllowed(s));
    if p.limits.memory_mib > MAX_MEMORY_MIB {
        return no(format!(
            "limits.memory_mib {} is over this appliance's {MAX_MEMORY_MIB}",
            p.limits.memory_mib
        ));
    }
    if !p.preopens.is_empty() && w.ctx.state_dir.is_none() {
        return no("preopens need the encrypted state volume, and this appliance booted without one (init-data with cvm.state-key)".into());
    }
    let api = w.ctx.api_port;
    if let Some(h) = &p.http
        && h.port == api
    {
        return no(format!("http.port {api} is the agent's own API"));
    }
    for a in &p.network.bind {
        if a.port() == api || a.port() == 0 {
            return no(format!("network.bind {a}: port {} is reserved", a.port()));
        }
    }
    for a in &p.network.connect {
        if a.ip().is_loopback() && a.port() == api {
            return no(format!("network.connect {a} is the agent's own API"));
        }
    }
    if let Some(available) = super::mem_available_bytes() {
        let available_mib = available >> 20;
        if available_mib < DEPLOY_HEADROOM_MIB {
            return Err(DeployError::NoMemory { available_mib });
        }
    }
    Ok(())
}

/// Take the name (and check the port against the others) under the lock, so two
/// deploys can never both get them.
fn reserve(
    w: &Workloads,
    m: &Manifest,
    owner: &[u8],
    manifest_sha256: String,
) -> Result<Arc<Entry>, DeployError> {
    let mut entries = w
        .entries
        .lock()
        .map_err(|_| DeployError::Start("workload table lock poisoned".into()))?;
    if entries.contains_key(&m.name) {
        return Err(DeployError::Exists(m.name.clone()));
    }
    if entries.len() >= MAX_WORKLOADS {
        return Err(DeployError::NotAllowed(format!(
            "this appliance holds at most {MAX_WORKLOADS} workloads"
        )));
    }
    if let Some(port) = m.policy.http.as_ref().map(|h| h.port) {
        for other in entries.values() {
            if other.status().and_then(|s| s.http_port) == Some(port) {
                return Err(DeployError::NotAllowed(format!(
                    "http.port {port} is taken by workload {}",
                    other.name
                )));
            }
        }
    }
    let entry = Arc::new(Entry::new(
        WorkloadStatus {
            name: m.name.clone(),
            version: m.version.clone(),
            owner: hex::encode(owner),
            manifest_sha256,
            wasm_sha256: m.wasm_sha256.clone(),
            kind: None,
            state: WorkloadState::Starting,
            reason: None,
            exit_code: None,
            http_port: m.policy.http.as_ref().map(|h| h.port),
            restarts: 0,
            denials: 0,
            failed_requests: 0,
            rss_bytes: None,
            compile_ms: None,
            deployed_at: now_ms() / 1000,
            state_version: None,
        },
        owner.to_vec(),
    ));
    entries.insert(m.name.clone(), entry.clone());
    Ok(entry)
}

/// Write the run folder (root-only, in guest memory) and create the state folder.
fn prepare(w: &Workloads, m: &Manifest, wasm: &[u8], bundle: &[u8]) -> std::io::Result<LaunchSpec> {
    use std::io::Write as _;
    let run = w.ctx.run_dir.join(&m.name);
    std::fs::create_dir_all(&run)?;
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700))?;
    let wasm_path = run.join("app.wasm");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&wasm_path)?;
    f.write_all(wasm)?;
    // The owner's bundle as it came: a migration hands it to the destination.
    std::fs::write(run.join(BUNDLE_FILE), bundle)?;
    let policy_path = run.join("policy.json");
    std::fs::write(&policy_path, serde_json::to_vec(&m.policy)?)?;
    let files = w.files_dir(&m.name);
    std::fs::create_dir_all(&files)?;
    Ok(LaunchSpec {
        name: m.name.clone(),
        wasm: wasm_path,
        policy: policy_path,
        state: files,
        http: m
            .policy
            .http
            .as_ref()
            .map(|_| Listen::Unix(run.join("http.sock"))),
        status: Some(run.join("status.sock")),
        confine: true,
    })
}

/// Establish the workload's confinement and measure it (step 3b).
async fn confine(w: &Workloads, entry: &Arc<Entry>, m: &Manifest) -> Result<(), DeployError> {
    let c = Confinement::derive(&m.name, &m.policy, &w.files_dir(&m.name));
    let enforcer = w
        .ctx
        .enforcer
        .as_ref()
        .map_err(|e| DeployError::Confinement(e.clone()))?;
    let scope = enforcer.establish(&c).map_err(DeployError::Confinement)?;
    entry.set_scope(scope);
    let document = c.document(&enforcer.baseline.sha256);
    let digest = hex::encode(sha2::Sha256::digest(&document));
    let mode = match c.mode {
        cvm_runtime::policy::Mode::Enforce => "enforce",
        cvm_runtime::policy::Mode::Audit => "audit",
    };
    let subject = format!("{} mode={mode} sha256:{digest}", m.name);
    let measurements = w.ctx.measurements.clone();
    let log = tokio::task::spawn_blocking(move || {
        measurements.measure(EventKind::WorkloadConfinement, &subject, &document)
    })
    .await
    .map_err(|e| DeployError::Measure(format!("confinement: {e}")))?
    .map_err(|e| DeployError::Measure(format!("confinement: {e}")))?;
    entry.logs.push(
        LogStream::Event,
        &format!(
            "confinement sha256:{digest} ({mode}; baseline sha256:{}) measured (runtime log event {})",
            enforcer.baseline.sha256,
            log.records.len() - 1
        ),
    );
    Ok(())
}
