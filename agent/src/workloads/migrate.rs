//! Migrating a workload with sealed state from this appliance (the source, S) to
//! another (the destination, D), and receiving one.
//!
//! The broker's counter at the workload's state key is the lease: its value is the
//! state version, its holder who may serve (`volume:UUID/NAME`), or a release in flight
//! (`releasing:MIGRATION:D-KEY/NAME`). Every move of it is a compare-and-set, so of two
//! appliances at most one ever holds the workload.
//!
//! 1. S checks D's passport (the broker's token for the TLS key the owner attested)
//!    before anything leaves: same broker, affirming, that key. A D whose evidence
//!    does not match the reference values gets no passport and nothing is sent.
//! 2. S stops the workload (a change a request left pending is in its files and is
//!    finished by the next open), seals a snapshot of its files under a key derived
//!    from the state key and the migration id, records the release on its disk and
//!    then at the broker, and signs a release certificate (digests of the snapshot and
//!    the manifest, D's key, the version).
//! 3. D checks the release (S's signature and passport, its own key named, fresh), the
//!    bundle (its owners), the snapshot (the digest the release names), installs the
//!    files under the workload's key, and commits by moving the counter from the
//!    release to itself; then starts the workload and signs an acceptance.
//! 4. S deletes its copy on the acceptance, or when the broker shows D holds. If D
//!    refuses or cannot be reached, S takes the release back by the same
//!    compare-and-set D would need (exactly one wins), signs an abort certificate and
//!    serves again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cvm_agent_client::Agent;
use cvm_kbs_client::passport;
use cvm_proto::agent::PassportBody;
use cvm_runtime::certificate::{self, Certificate, Kind, Statement};
use cvm_runtime::migration::{MigrateReport, MigrateRequest, Offer, Outcome};
use cvm_runtime::snapshot;
use sha2::{Digest as _, Sha256};
use tracing::{info, warn};

use super::deploy::{BUNDLE_FILE, DeployError, Incoming, deploy_with};
use super::{WorkloadError, Workloads, halt, now_ms, record_outcome, sealed_state};

/// How long S waits for D's answer to the offer (D compiles the workload).
const OFFER_TIMEOUT: Duration = Duration::from_secs(600);
/// How long S waits for D's passport.
const PASSPORT_TIMEOUT: Duration = Duration::from_secs(120);
/// How far a release's time may be from D's clock.
const MAX_SKEW: u64 = 600;
/// Largest offer (bundle + snapshot, base64).
pub const MAX_OFFER: usize = 96 << 20;

/// A migration that did not start, or an offer refused.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The workload, its owner or its state.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// Not a workload with sealed state.
    #[error(
        "workload {0} has no sealed state to migrate (deploy it on the other appliance instead)"
    )]
    NoState(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// This appliance cannot take part (no broker, no passport).
    #[error("{0}")]
    Unavailable(String),
    /// The offer was refused (release, bundle, snapshot, lease).
    #[error("offer refused: {0}")]
    Refused(String),
    /// The destination's deploy failed.
    #[error(transparent)]
    Deploy(#[from] DeployError),
}

impl MigrateError {
    /// A stable name (the API's `type`).
    pub fn kind(&self) -> &'static str {
        match self {
            MigrateError::Workload(WorkloadError::NotFound(_)) => "NotFound",
            MigrateError::Workload(_) => "Busy",
            MigrateError::NoState(_) => "NoState",
            MigrateError::BadRequest(_) => "BadRequest",
            MigrateError::Unavailable(_) => "Unavailable",
            MigrateError::Refused(_) => "OfferRefused",
            MigrateError::Deploy(e) => e.kind(),
        }
    }
}

fn now() -> u64 {
    now_ms() / 1000
}

/// A fresh migration id.
fn migration_id() -> String {
    let mut b = [0u8; 16];
    // The kernel's RNG; a failure leaves a time-based id, unique enough for a label.
    if getrandom(&mut b).is_err() {
        b[..8].copy_from_slice(&now_ms().to_be_bytes());
    }
    hex::encode(b)
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read as _;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Run a blocking step off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("task failed: {e}"))
        .and_then(|r| r)
}

/// Source: migrate `name` (owned by `owner`) as `req` says.
pub async fn migrate(
    w: &Arc<Workloads>,
    name: &str,
    owner: &[u8],
    req: MigrateRequest,
) -> Result<MigrateReport, MigrateError> {
    let started = Instant::now();
    let entry = w.get(name, owner)?;
    // Claimed before any await: rm, stop, a deploy or another migration answer Busy
    // from here on. Returns before the workload stops give the claim back.
    if !entry.claim() {
        return Err(WorkloadError::Busy(name.to_owned()).into());
    }
    let claim = Claim(Some(entry.clone()));
    let opened = entry
        .sealed()
        .ok_or_else(|| MigrateError::NoState(name.to_owned()))?;
    let to_key: [u8; 32] = hex::decode(&req.to_key_sha256)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| MigrateError::BadRequest("to_key_sha256 is not 64 hex digits".into()))?;
    let to_hex = hex::encode(to_key);
    let migration = migration_id();
    let report = |outcome, reason: Option<String>, version, bytes, certificates| MigrateReport {
        migration: migration.clone(),
        outcome,
        reason,
        version,
        snapshot_bytes: bytes,
        millis: started.elapsed().as_millis() as u64,
        certificates,
    };

    // (1) The destination's passport, checked before anything leaves.
    let passports = w.ctx.passports.clone();
    let mine = blocking(move || passports.get(now()))
        .await
        .map_err(MigrateError::Unavailable)?;
    let broker_key = passport::broker_key(&mine.broker_key)
        .map_err(|e| MigrateError::Unavailable(e.to_string()))?;
    let peer = Agent::pinned(&req.to, to_key);
    // A passport may need a fresh attestation (a quote, a broker round trip): slow
    // in an emulated guest.
    let peer_for_passport = peer.clone().with_timeout(PASSPORT_TIMEOUT);
    let theirs = blocking(move || {
        cvm_agent_client::get_json::<PassportBody>(&peer_for_passport, "/v1/attestation/passport")
            .map_err(|e| crate::error_chain(&e))
    })
    .await;
    let refused = |why: String| {
        warn!(workload = %name, to = %req.to, "migration refused: {why}");
        Ok(report(Outcome::Refused, Some(why), None, 0, Vec::new()))
    };
    let theirs = match theirs {
        Ok(t) => t,
        Err(e) => return refused(format!("the destination's passport: {e}")),
    };
    if theirs.broker_key != mine.broker_key {
        return refused("the destination attests to another broker".into());
    }
    if let Err(e) = passport::check(&broker_key, &theirs.token, now(), &to_key) {
        return refused(format!("the destination's passport: {e}"));
    }

    // (2) Quiesce, snapshot, release. From here the workload is this migration's: it
    // leaves the table (finished or resumed) or stays claimed.
    claim.keep();
    halt(&entry).await;
    let dir = w.workload_state(name).unwrap_or_default();
    let files = w.files_dir(name);
    let bundle = match std::fs::read(w.ctx.run_dir.join(name).join(BUNDLE_FILE)) {
        Ok(b) => b,
        Err(e) => {
            let why = format!("the workload's bundle: {e}");
            return Ok(resume(
                w,
                name,
                report(Outcome::Aborted, Some(why), None, 0, vec![]),
            )
            .await);
        }
    };
    let broker = w
        .ctx
        .broker
        .clone()
        .ok_or_else(|| MigrateError::Unavailable("this appliance has no key broker".into()))?;
    let measurements = w.ctx.measurements.clone();
    let me = w.ctx.holder.clone();
    let (workload, mid, to) = (name.to_owned(), migration.clone(), to_hex.clone());
    let (o, d) = (opened.clone(), dir.clone());
    let released = blocking(move || {
        let _still = measurements.hold_still();
        let mut session = broker.session(&measurements.current()?)?;
        let key = sealed_state::state_key(&mut session, &o.resource).map_err(|e| e.to_string())?;
        // The stopped runtime's end took the key out of the kernel: back for the read.
        sealed_state::unlock(&o, &key).map_err(|e| e.to_string())?;
        let entries = snapshot::collect(&files);
        let _ = crate::fscrypt::remove_key(&o.mount, &o.key_id);
        let entries = entries.map_err(|e| e.to_string())?;
        // Sealed at the version the release will have (one past the opened one).
        let version = o.version + 1;
        let sealed =
            snapshot::seal(&workload, version, &mid, &entries, &key).map_err(|e| e.to_string())?;
        drop(key);
        let released = sealed_state::release(&mut session, &o, &d, &mid, &to, &me)
            .map_err(|e| e.to_string())?;
        Ok((released, sealed))
    })
    .await;
    let (released, sealed) = match released {
        Ok(r) => r,
        Err(why) => {
            // Nothing was released (or the release is taken back below at deploy).
            return Ok(resume(
                w,
                name,
                report(Outcome::Aborted, Some(why), None, 0, vec![]),
            )
            .await);
        }
    };
    let snapshot_sha256 = hex::encode(Sha256::digest(&sealed));
    let manifest_sha256 = entry
        .status()
        .map(|s| s.manifest_sha256)
        .unwrap_or_default();
    let sign = |kind, reason: Option<String>, token: &str| {
        let statement = Statement {
            kind,
            migration: migration.clone(),
            workload: name.to_owned(),
            manifest_sha256: manifest_sha256.clone(),
            from: w.ctx.tls_key_sha256.clone(),
            to: to_hex.clone(),
            version: released,
            snapshot_sha256: Some(snapshot_sha256.clone()),
            reason,
            time: now(),
        };
        certificate::sign(&statement, &w.ctx.tls_key_pkcs8, token)
    };
    // Each signature carries a passport fetched just before it (one that has at least
    // two minutes left), so it is valid at the statement's time.
    let release = match fresh_token(w)
        .await
        .and_then(|t| sign(Kind::Release, None, &t).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            let why = format!("sign the release: {e}");
            return Ok(
                take_back_and_resume(w, name, &opened, released, why, report)
                    .await
                    .0,
            );
        }
    };
    let snapshot_bytes = sealed.len() as u64;
    info!(workload = %name, %migration, released, snapshot_bytes, "released; offering to the destination");

    // (3) The offer; D answers with its acceptance once it committed and serves.
    let offer = Offer {
        bundle: STANDARD.encode(&bundle),
        snapshot: STANDARD.encode(&sealed),
        release: release.clone(),
    };
    drop((bundle, sealed));
    let long = peer.with_timeout(OFFER_TIMEOUT);
    let answer = blocking(move || {
        cvm_agent_client::post_json::<_, Certificate>(&long, "/v1/migrations", &offer)
            .map_err(|e| crate::error_chain(&e))
    })
    .await;
    let accepted = match answer {
        Ok(acc) => match certificate::check(&acc, &broker_key) {
            Ok(c)
                if c.statement.kind == Kind::Acceptance
                    && c.statement.migration == migration
                    && c.passport.key_sha256 == to_key =>
            {
                Ok(acc)
            }
            Ok(_) => Err("the destination's acceptance is for another migration".to_owned()),
            Err(e) => Err(format!("the destination's acceptance: {e}")),
        },
        Err(e) => Err(e),
    };
    match accepted {
        Ok(acceptance) => {
            finish_source(w, name, &migration, &to_hex).await;
            Ok(report(
                Outcome::Migrated,
                None,
                Some(released),
                snapshot_bytes,
                vec![release, acceptance],
            ))
        }
        Err(why) => {
            // (4) No acceptance: the broker decides, by compare-and-set.
            let (mut r, taken_back) =
                take_back_and_resume(w, name, &opened, released, why, report).await;
            r.certificates.insert(0, release);
            if r.outcome == Outcome::Migrated {
                finish_source(w, name, &migration, &to_hex).await;
            } else if taken_back {
                // Signed only when the broker gave the workload back to this appliance.
                match fresh_token(w).await.and_then(|t| {
                    sign(Kind::Abort, r.reason.clone(), &t).map_err(|e| e.to_string())
                }) {
                    Ok(abort) => r.certificates.push(abort),
                    Err(e) => warn!(workload = %name, error = %e, "abort certificate not signed"),
                }
            }
            r.snapshot_bytes = snapshot_bytes;
            r.version = Some(released);
            Ok(r)
        }
    }
}

/// After a commit by D: the source's copy goes, and the workload leaves this appliance.
async fn finish_source(w: &Arc<Workloads>, name: &str, migration: &str, to: &str) {
    w.discard(name, true);
    record_outcome(
        &w.ctx.measurements,
        name,
        &format!("migrated: to agent key {to} (migration {migration})"),
    )
    .await;
    info!(workload = %name, %migration, "migrated; local copy deleted");
}

/// Take the release back (unless D committed first) and serve again; whether it was
/// taken back.
async fn take_back_and_resume(
    w: &Arc<Workloads>,
    name: &str,
    opened: &sealed_state::Opened,
    released: u64,
    why: String,
    report: impl Fn(Outcome, Option<String>, Option<u64>, u64, Vec<Certificate>) -> MigrateReport,
) -> (MigrateReport, bool) {
    let unknown = |w: &Arc<Workloads>, reason: String| {
        // Neither taken back nor known to be committed: nothing serves until the
        // broker settles it. The entry goes (its state stays), so the owner can
        // redeploy here, which takes the release back if it is still this one's.
        w.discard(name, false);
        report(Outcome::Aborted, Some(reason), Some(released), 0, vec![])
    };
    let Some(broker) = w.ctx.broker.clone() else {
        return (unknown(w, why), false);
    };
    let measurements = w.ctx.measurements.clone();
    let me = w.ctx.holder.clone();
    let committed = sealed_state::holder_for(&me, name);
    let o = opened.clone();
    let dir = w.workload_state(name).unwrap_or_default();
    let taken = blocking(move || {
        let _still = measurements.hold_still();
        let mut session = broker.session(&measurements.current()?)?;
        Ok(sealed_state::take_back(
            &mut session,
            &o,
            &dir,
            released,
            &me,
        ))
    })
    .await;
    match taken {
        Ok(Ok(_)) => (
            resume(
                w,
                name,
                report(Outcome::Aborted, Some(why), Some(released), 0, vec![]),
            )
            .await,
            true,
        ),
        // The destination's commit: the counter one past the release, held by another
        // appliance. Anything else is not a commit this migration can rely on.
        Ok(Err(sealed_state::StateError::Lease { holder, value, .. }))
            if Some(value) == released.checked_add(1)
                && holder.starts_with("volume:")
                && holder != committed =>
        {
            (
                report(
                    Outcome::Migrated,
                    Some(format!(
                        "the destination committed (the broker records {holder}) but its acceptance was not received: {why}"
                    )),
                    Some(released),
                    0,
                    vec![],
                ),
                false,
            )
        }
        Ok(Err(e)) => (
            unknown(
                w,
                format!(
                    "{why}; the broker's lease is not this migration's to settle ({e}): the workload serves nowhere until the owner decides"
                ),
            ),
            false,
        ),
        Err(e) => (
            unknown(
                w,
                format!(
                    "{why}; the release could not be taken back ({e}): the workload serves nowhere until the broker answers (redeploy here to take it back)"
                ),
            ),
            false,
        ),
    }
}

/// A passport with at least two minutes left, to sign with now.
async fn fresh_token(w: &Arc<Workloads>) -> Result<String, String> {
    let passports = w.ctx.passports.clone();
    blocking(move || passports.get(now()).map(|p| p.token)).await
}

/// Gives a migration's claim on a workload back unless kept.
struct Claim(Option<Arc<super::Entry>>);

impl Claim {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(e) = self.0.take() {
            e.set_deploying(false);
        }
    }
}

/// Serve again from the kept bundle (the state stays; the deploy reopens it).
async fn resume(w: &Arc<Workloads>, name: &str, mut report: MigrateReport) -> MigrateReport {
    let bundle = std::fs::read(w.ctx.run_dir.join(name).join(BUNDLE_FILE));
    w.discard(name, false);
    let restarted = match bundle {
        Ok(b) => deploy_with(w, &b, None).await.map_err(|e| e.to_string()),
        Err(e) => Err(format!("read the bundle: {e}")),
    };
    if let Err(e) = restarted {
        let reason = report.reason.take().unwrap_or_default();
        report.reason = Some(format!(
            "{reason}; serving again failed: {e} (redeploy the workload)"
        ));
    }
    report
}

/// Destination: check and install an offer; answer with the acceptance certificate.
pub async fn receive(w: &Arc<Workloads>, offer: Offer) -> Result<Certificate, MigrateError> {
    let passports = w.ctx.passports.clone();
    let mine = blocking(move || passports.get(now()))
        .await
        .map_err(MigrateError::Unavailable)?;
    let broker_key = passport::broker_key(&mine.broker_key)
        .map_err(|e| MigrateError::Unavailable(e.to_string()))?;
    let refuse = |m: String| MigrateError::Refused(m);
    let release = certificate::check(&offer.release, &broker_key)
        .map_err(|e| refuse(format!("the release certificate: {e}")))?;
    let st = release.statement;
    if st.kind != Kind::Release {
        return Err(refuse("the certificate is not a release".into()));
    }
    if st.to != w.ctx.tls_key_sha256 {
        return Err(refuse(format!(
            "the release names agent key {}, not this appliance's",
            st.to
        )));
    }
    if now().abs_diff(st.time) > MAX_SKEW {
        return Err(refuse(format!(
            "the release was signed at {}, more than {MAX_SKEW} s from this appliance's clock",
            st.time
        )));
    }
    let bundle = STANDARD
        .decode(&offer.bundle)
        .map_err(|_| refuse("the bundle is not base64".into()))?;
    let sealed = STANDARD
        .decode(&offer.snapshot)
        .map_err(|_| refuse("the snapshot is not base64".into()))?;
    let digest = hex::encode(Sha256::digest(&sealed));
    if st.snapshot_sha256.as_deref() != Some(digest.as_str()) {
        return Err(refuse(format!(
            "the snapshot has sha256 {digest}, not the one the release names"
        )));
    }
    let parsed = snapshot::parse(&sealed).map_err(|e| refuse(e.to_string()))?;
    let h = &parsed.header;
    if h.workload != st.workload || h.version != st.version || h.migration != st.migration {
        return Err(refuse(
            "the snapshot's header does not match the release".into(),
        ));
    }
    let incoming = Incoming {
        snapshot: parsed,
        released: st.version,
        migration: st.migration.clone(),
        me_key: w.ctx.tls_key_sha256.clone(),
        manifest_sha256: st.manifest_sha256.clone(),
    };
    let status = deploy_with(w, &bundle, Some(incoming)).await?;
    let statement = Statement {
        kind: Kind::Acceptance,
        migration: st.migration,
        workload: st.workload,
        manifest_sha256: st.manifest_sha256,
        from: st.from,
        to: st.to,
        version: status.state_version.unwrap_or_default(),
        snapshot_sha256: Some(digest),
        reason: None,
        time: now(),
    };
    info!(workload = %statement.workload, migration = %statement.migration, "migration accepted");
    // The deploy may have taken minutes: a passport valid now.
    let token = fresh_token(w).await.map_err(MigrateError::Unavailable)?;
    certificate::sign(&statement, &w.ctx.tls_key_pkcs8, &token)
        .map_err(|e| MigrateError::Unavailable(format!("sign the acceptance: {e}")))
}
