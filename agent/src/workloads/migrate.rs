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
//!    serves again. If the broker cannot be asked, the migration is pending: nothing
//!    serves (D may yet commit) and `settle` asks again until the broker answers, then
//!    serves here again or finishes as migrated.

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
use super::{Laps, WorkloadError, Workloads, halt, now_ms, record_outcome, sealed_state};

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

/// Reports kept for `GET /v1/migrations/ID` (the oldest go first).
const MAX_REPORTS: usize = 64;

/// The last migrations from this appliance, each with the kid of the owner who asked:
/// a pending one is settled later, and its owner looks the outcome up here.
#[derive(Debug, Default)]
pub struct Reports(std::sync::Mutex<std::collections::VecDeque<(Vec<u8>, MigrateReport)>>);

impl Reports {
    fn put(&self, owner: &[u8], report: &MigrateReport) {
        let Ok(mut r) = self.0.lock() else { return };
        r.retain(|(_, old)| old.migration != report.migration);
        if r.len() >= MAX_REPORTS {
            r.pop_front();
        }
        r.push_back((owner.to_vec(), report.clone()));
    }

    /// Migration `id`'s report, if `owner` asked for it.
    pub fn get(&self, id: &str, owner: &[u8]) -> Option<MigrateReport> {
        self.0
            .lock()
            .ok()?
            .iter()
            .find_map(|(o, r)| (r.migration == id && o.as_slice() == owner).then(|| r.clone()))
    }
}

/// How long a pending migration waits between asks of the broker, at most.
const SETTLE_MAX_DELAY: Duration = Duration::from_secs(30);

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
    let broker = w
        .ctx
        .broker
        .clone()
        .ok_or_else(|| MigrateError::Unavailable("this appliance has no key broker".into()))?;
    // The owner's bundle as deployed: the destination gets it, and a resume here
    // deploys it again (kept in memory: the run folder goes with the entry).
    let bundle = std::fs::read(w.ctx.run_dir.join(name).join(BUNDLE_FILE))
        .map_err(|e| MigrateError::Unavailable(format!("the workload's bundle: {e}")))?;
    let mut src = Source {
        w: w.clone(),
        name: name.to_owned(),
        owner: owner.to_vec(),
        migration: migration_id(),
        to: hex::encode(to_key),
        started,
        opened: opened.clone(),
        bundle: Arc::new(bundle),
        manifest_sha256: entry
            .status()
            .map(|s| s.manifest_sha256)
            .unwrap_or_default(),
        released: None,
        taken_back: false,
        snapshot_sha256: None,
        snapshot_bytes: 0,
        certificates: Vec::new(),
        laps: Laps::start(),
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
    let checked = match theirs {
        Ok(t) if t.broker_key != mine.broker_key => {
            Err("the destination attests to another broker".to_owned())
        }
        Ok(t) => passport::check(&broker_key, &t.token, now(), &to_key)
            .map(drop)
            .map_err(|e| format!("the destination's passport: {e}")),
        Err(e) => Err(format!("the destination's passport: {e}")),
    };
    src.laps.lap("destination passport");
    if let Err(why) = checked {
        warn!(workload = %name, to = %req.to, "migration refused: {why}");
        return Ok(src.report(Outcome::Refused, Some(why)));
    }

    // (2) Quiesce, snapshot, release. From here the workload is this migration's: it
    // leaves the table (finished or resumed) or stays claimed.
    claim.keep();
    halt(&entry).await;
    src.laps.lap("quiesce");
    let dir = w.workload_state(name).unwrap_or_default();
    let files = w.files_dir(name);
    let measurements = w.ctx.measurements.clone();
    let me = w.ctx.holder.clone();
    let (workload, mid, to) = (name.to_owned(), src.migration.clone(), src.to.clone());
    let (o, d) = (opened.clone(), dir.clone());
    let bundle_len = src.bundle.len();
    let released = blocking(move || {
        let mut laps = Laps::start();
        let _still = measurements.hold_still();
        let mut session = broker.session(&measurements.current()?)?;
        let key = sealed_state::state_key(&mut session, &o.resource).map_err(|e| e.to_string())?;
        laps.lap("attest for the state key");
        // The stopped runtime's end took the key out of the kernel: back for the read.
        sealed_state::unlock(&o, &key).map_err(|e| e.to_string())?;
        laps.lap("unlock the state");
        let entries = snapshot::collect(&files);
        laps.lap("read the state");
        let _ = crate::fscrypt::remove_key(&o.mount, &o.key_id);
        laps.lap("lock the state");
        let entries = entries.map_err(|e| e.to_string())?;
        // Sealed at the version the release will have (one past the opened one).
        let version = o.version + 1;
        let sealed =
            snapshot::seal(&workload, version, &mid, &entries, &key).map_err(|e| e.to_string())?;
        drop(key);
        laps.lap("seal the snapshot");
        // Refused here, before the release, rather than by the destination after it.
        let offer_len = (bundle_len + sealed.len()).div_ceil(3) * 4 + OFFER_OVERHEAD;
        if offer_len > MAX_OFFER {
            return Err(format!(
                "the offer would be {offer_len} bytes, over the {MAX_OFFER} a destination accepts"
            ));
        }
        let released = sealed_state::release(&mut session, &o, &d, &mid, &to, &me)
            .map_err(|e| e.to_string())?;
        laps.lap("release");
        Ok((released, sealed, laps))
    })
    .await;
    let sealed = match released {
        Ok((v, sealed, laps)) => {
            src.released = Some(v);
            src.laps.extend(laps);
            sealed
        }
        // Nothing left this appliance, so the destination cannot commit: serve again.
        // A release that did reach the broker is taken back by the deploy (the disk
        // recorded it first).
        Err(why) => return Ok(src.resume(Outcome::Aborted, why).await),
    };
    src.snapshot_sha256 = Some(hex::encode(Sha256::digest(&sealed)));
    src.snapshot_bytes = sealed.len() as u64;
    // Each signature carries a passport fetched just before it (one that has at least
    // two minutes left), so it is valid at the statement's time.
    let release = match src.sign(Kind::Release, None).await {
        Ok(c) => c,
        // Not sent either: nothing can commit at the destination.
        Err(e) => {
            return Ok(src
                .resume(Outcome::Aborted, format!("sign the release: {e}"))
                .await);
        }
    };
    src.certificates.push(release.clone());
    src.laps.lap("sign the release");
    info!(workload = %name, migration = %src.migration, released = ?src.released, snapshot_bytes = src.snapshot_bytes, "released; offering to the destination");

    // (3) The offer; D answers with its acceptance once it committed and serves.
    let offer = Offer {
        bundle: STANDARD.encode(src.bundle.as_slice()),
        snapshot: STANDARD.encode(&sealed),
        release,
    };
    drop(sealed);
    let long = peer.with_timeout(OFFER_TIMEOUT);
    let answer = blocking(move || {
        cvm_agent_client::post_json::<_, Certificate>(&long, "/v1/migrations", &offer)
            .map_err(|e| crate::error_chain(&e))
    })
    .await;
    let accepted = answer.and_then(|acc| match certificate::check(&acc, &broker_key) {
        Ok(c)
            if c.statement.kind == Kind::Acceptance
                && c.statement.migration == src.migration
                && c.passport.key_sha256 == to_key =>
        {
            Ok(acc)
        }
        Ok(_) => Err("the destination's acceptance is for another migration".to_owned()),
        Err(e) => Err(format!("the destination's acceptance: {e}")),
    });
    src.laps
        .lap("offer: the destination installs, commits and starts");
    Ok(match accepted {
        Ok(acceptance) => {
            src.certificates.push(acceptance);
            src.finish(None).await
        }
        // (4) No acceptance: the broker decides, by compare-and-set.
        Err(why) => src.take_back_and_resume(why).await,
    })
}

/// A migration from this appliance, from the moment its workload stopped.
struct Source {
    w: Arc<Workloads>,
    name: String,
    owner: Vec<u8>,
    migration: String,
    /// The destination's key, hex.
    to: String,
    started: Instant,
    opened: sealed_state::Opened,
    bundle: Arc<Vec<u8>>,
    manifest_sha256: String,
    /// The version released at the broker, once the offer may have left.
    released: Option<u64>,
    /// The broker gave the release back and the abort is signed.
    taken_back: bool,
    snapshot_sha256: Option<String>,
    snapshot_bytes: u64,
    certificates: Vec<Certificate>,
    /// The steps so far.
    laps: Laps,
}

impl Source {
    /// The report of the outcome, kept for `GET /v1/migrations/ID`.
    fn report(&self, outcome: Outcome, reason: Option<String>) -> MigrateReport {
        let report = MigrateReport {
            migration: self.migration.clone(),
            outcome,
            reason,
            version: self.released,
            snapshot_bytes: self.snapshot_bytes,
            millis: self.started.elapsed().as_millis() as u64,
            steps: self.laps.with_last("outcome"),
            certificates: self.certificates.clone(),
        };
        self.w.reports.put(&self.owner, &report);
        report
    }

    /// A certificate of this migration, signed with a fresh passport.
    async fn sign(&self, kind: Kind, reason: Option<String>) -> Result<Certificate, String> {
        let token = fresh_token(&self.w).await?;
        let statement = Statement {
            kind,
            migration: self.migration.clone(),
            workload: self.name.clone(),
            manifest_sha256: self.manifest_sha256.clone(),
            from: self.w.ctx.tls_key_sha256.clone(),
            to: self.to.clone(),
            version: self.released.unwrap_or(self.opened.version),
            snapshot_sha256: self.snapshot_sha256.clone(),
            reason,
            time: now(),
        };
        certificate::sign(&statement, &self.w.ctx.tls_key_pkcs8, &token).map_err(|e| e.to_string())
    }

    /// After a commit by D: the source's copy goes, and the workload leaves here.
    async fn finish(&self, reason: Option<String>) -> MigrateReport {
        self.w.discard(&self.name, true);
        record_outcome(
            &self.w.ctx.measurements,
            &self.name,
            &format!(
                "migrated: to agent key {} (migration {})",
                self.to, self.migration
            ),
        )
        .await;
        info!(workload = %self.name, migration = %self.migration, "migrated; local copy deleted");
        self.report(Outcome::Migrated, reason)
    }

    /// No acceptance: take the release back by compare-and-set unless D committed
    /// first (exactly one of the two wins), and serve again.
    async fn take_back_and_resume(mut self, why: String) -> MigrateReport {
        let Some(released) = self.released else {
            return self.resume(Outcome::Aborted, why).await;
        };
        let broker = self.w.ctx.broker.clone();
        let measurements = self.w.ctx.measurements.clone();
        let me = self.w.ctx.holder.clone();
        let o = self.opened.clone();
        let dir = self.w.workload_state(&self.name).unwrap_or_default();
        let taken = blocking(move || {
            let broker = broker.ok_or("this appliance has no key broker")?;
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
        let ours = sealed_state::releasing_holder(&self.migration, &self.to, &self.name);
        // Not reaching the broker and its failing mid-compare-and-set are one case.
        let taken = taken.unwrap_or_else(|e| Err(sealed_state::StateError::Broker(e)));
        match taken {
            Ok(_) => {
                // Signed only when the broker gave the workload back to this appliance.
                match self.sign(Kind::Abort, Some(why.clone())).await {
                    Ok(abort) => {
                        self.certificates.push(abort);
                        self.taken_back = true;
                    }
                    Err(e) => {
                        warn!(workload = %self.name, error = %e, "abort certificate not signed")
                    }
                }
                self.resume(Outcome::Aborted, why).await
            }
            Err(sealed_state::StateError::Lease { holder, value, .. })
                if self.committed_by_destination(&holder, value) =>
            {
                let reason = format!(
                    "the destination committed (the broker records {holder}) but its acceptance was not received: {why}"
                );
                self.finish(Some(reason)).await
            }
            // The broker did not answer, or answered the compare-and-set with an error
            // but still shows this release: D may yet commit, so nothing serves here
            // until the broker settles it, which `settle` keeps asking for.
            Err(sealed_state::StateError::Lease { holder, value, .. })
                if holder == ours && value == released =>
            {
                self.w.discard(&self.name, false);
                self.pending(format!(
                    "{why}; the broker refused to give the release back but still records it: the workload serves nowhere until it settles, then here again unless the destination committed"
                ))
            }
            Err(e @ sealed_state::StateError::Broker(_)) => {
                self.w.discard(&self.name, false);
                self.pending(format!(
                    "{why}; the broker did not answer ({e}): the workload serves nowhere until it does, then here again unless the destination committed"
                ))
            }
            Err(e) => {
                self.w.discard(&self.name, false);
                self.report(
                    Outcome::Aborted,
                    Some(format!(
                        "{why}; the broker's lease is not this migration's to settle ({e}): the workload serves nowhere until the owner decides"
                    )),
                )
            }
        }
    }

    /// The destination's commit: past the release, held by another appliance. Only
    /// the destination's commit moves this release to another appliance's holder (it
    /// may have moved on since); anything else is not a commit this migration can rely
    /// on.
    fn committed_by_destination(&self, holder: &str, value: u64) -> bool {
        let mine = sealed_state::holder_for(&self.w.ctx.holder, &self.name);
        self.released.is_some_and(|r| value > r) && holder.starts_with("volume:") && holder != mine
    }

    /// Serve again from the bundle (the state stays; the deploy reopens it, taking
    /// back a release this disk recorded). When the broker does not answer, the
    /// migration is pending and `settle` keeps trying.
    async fn resume(self, outcome: Outcome, why: String) -> MigrateReport {
        self.w.discard(&self.name, false);
        match deploy_with(&self.w, &self.bundle, None).await {
            Ok(_) => self.report(outcome, Some(why)),
            Err(e) if broker_unanswered(&e) => {
                let reason = format!(
                    "{why}; serving again needs the broker, which did not answer ({e}): the workload serves nowhere until it does"
                );
                self.pending(reason)
            }
            Err(e) => self.report(
                outcome,
                Some(format!(
                    "{why}; serving again failed: {e} (redeploy the workload)"
                )),
            ),
        }
    }

    /// Report a pending migration (its entry already gone from the table) and settle
    /// it in the background.
    fn pending(self, reason: String) -> MigrateReport {
        warn!(workload = %self.name, migration = %self.migration, "{reason}");
        let report = self.report(Outcome::Pending, Some(reason.clone()));
        tokio::spawn(self.settle(reason));
        report
    }

    /// Ask the broker until it answers, by deploying the bundle again: the deploy
    /// takes back a release this disk recorded (or finds the destination's commit),
    /// then serves. "None while an abort is pending, then the source again."
    async fn settle(mut self, why: String) {
        let dir = self.w.workload_state(&self.name).unwrap_or_default();
        // What this migration left on the disk: a deploy or removal by the owner
        // meanwhile changes it, and then that settled it, not this task.
        let mut left = sealed_state::read_record(&dir).ok().flatten();
        let mut delay = Duration::from_secs(2);
        let mut refused = 0u32;
        loop {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(SETTLE_MAX_DELAY);
            if sealed_state::read_record(&dir).ok().flatten() != left {
                self.settled_by_owner(&why);
                return;
            }
            // Each deploy measures the manifest: probe first, so a broker that is
            // down for hours does not grow the runtime log by the minute.
            let broker = self.w.ctx.broker.clone();
            let up =
                blocking(move || Ok(broker.is_some_and(|b| b.reachable(Duration::from_secs(5)))))
                    .await
                    .unwrap_or(false);
            if !up {
                continue;
            }
            match deploy_with(&self.w, &self.bundle, None).await {
                Ok(_) => {
                    if self.released.is_some() && !self.taken_back {
                        match self.sign(Kind::Abort, Some(why.clone())).await {
                            Ok(abort) => self.certificates.push(abort),
                            Err(e) => {
                                warn!(workload = %self.name, error = %e, "abort certificate not signed")
                            }
                        }
                    }
                    info!(workload = %self.name, migration = %self.migration, "pending migration settled: serving here again");
                    self.report(Outcome::Aborted, Some(why));
                    return;
                }
                // Reachable but refusing (a broker starting, or a policy that changed):
                // a few tries, not forever, since each is measured.
                Err(e) if broker_unanswered(&e) && refused < SETTLE_MAX_REFUSALS => {
                    refused += 1;
                    warn!(workload = %self.name, migration = %self.migration, error = %e, "pending migration: the broker did not settle it yet");
                }
                Err(DeployError::State(sealed_state::StateError::MigratedAway {
                    holder,
                    broker,
                })) if self.committed_by_destination(&holder, broker) => {
                    let reason = format!(
                        "the destination committed (the broker records {holder}) but its acceptance was not received: {why}"
                    );
                    self.finish(Some(reason)).await;
                    return;
                }
                Err(DeployError::Exists(_)) => {
                    self.settled_by_owner(&why);
                    return;
                }
                // Something the broker settled otherwise: the owner decides from here.
                Err(e) => {
                    warn!(workload = %self.name, migration = %self.migration, error = %e, "pending migration not settled here");
                    self.report(
                        Outcome::Aborted,
                        Some(format!(
                            "{why}; serving again failed: {e} (redeploy the workload)"
                        )),
                    );
                    return;
                }
            }
            // The failed try may have moved the disk's record (a deploy writes it
            // before the broker); that is this task's own doing.
            left = sealed_state::read_record(&dir).ok().flatten();
        }
    }

    /// The owner deployed or removed the workload here while this migration was
    /// pending: that settled it, not `settle`.
    fn settled_by_owner(&self, why: &str) {
        info!(workload = %self.name, migration = %self.migration, "pending migration settled by the owner");
        self.report(
            Outcome::Aborted,
            Some(format!(
                "{why}; the owner deployed or removed the workload here meanwhile"
            )),
        );
    }
}

/// Tries a pending migration makes against a broker that accepts connections but
/// does not settle it.
const SETTLE_MAX_REFUSALS: u32 = 5;

/// Whether a deploy failed only because the broker did not answer (worth asking again).
fn broker_unanswered(e: &DeployError) -> bool {
    matches!(
        e,
        DeployError::Key { .. } | DeployError::State(sealed_state::StateError::Broker(_))
    )
}

/// Bytes of an offer besides its base64 payloads (the release certificate, JSON).
const OFFER_OVERHEAD: usize = 64 << 10;

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
    let signer = hex::encode(release.passport.key_sha256);
    let st = release.statement;
    if st.kind != Kind::Release {
        return Err(refuse("the certificate is not a release".into()));
    }
    // The id names a staging folder: the form this agent's ids have, nothing else.
    if st.migration.len() != 32 || !st.migration.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(refuse(format!(
            "the release's migration id {:?} is not 32 hex digits",
            st.migration
        )));
    }
    // The release speaks for the appliance that signed it, and only for that one.
    if st.from != signer {
        return Err(refuse(format!(
            "the release names agent key {} as the source but agent key {signer} signed it",
            st.from
        )));
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
    // The deploy may have taken minutes: a passport valid now, fetched before the
    // statement is dated (so the date is not before the passport's).
    let token = fresh_token(w).await.map_err(MigrateError::Unavailable)?;
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
    certificate::sign(&statement, &w.ctx.tls_key_pkcs8, &token)
        .map_err(|e| MigrateError::Unavailable(format!("sign the acceptance: {e}")))
}
