//! `cvm migrate NAME --from A --to B`: move a workload with its sealed state from one
//! appliance to another. Both are attested first (nothing is sent to an appliance that
//! fails); the source then checks the destination's passport itself, and the two
//! decide through the broker's lease (see the agent's `workloads/migrate.rs`). The
//! certificates they signed are kept, and `cvm migrate --verify CERT…` checks them
//! later against the broker's token key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use cvm_kbs_client::http::{BrokerTls, Transport};
use cvm_runtime::bundle::owner::OwnerKey;
use cvm_runtime::certificate::{self, Certificate, Kind};
use cvm_runtime::migration::{MigrateReport, MigrateRequest, Outcome};

use super::attest::VerifyArgs;
use super::workload::sign_request;
use crate::{agent_client, attested};

/// How long the source may take (it stops, snapshots, and waits for the destination
/// to compile and start the workload).
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(900);

/// `cvm migrate` arguments.
#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The workload.
    #[arg(required_unless_present_any = ["check", "status"])]
    pub name: Option<String>,
    /// The source appliance's agent, HOST:PORT.
    #[arg(long, required_unless_present = "check")]
    pub from: Option<String>,
    /// The destination's agent, HOST:PORT, as this machine reaches it.
    #[arg(long, required_unless_present_any = ["check", "status"])]
    pub to: Option<String>,
    /// How the source reaches the destination's agent [default: --to, with a loopback
    /// host replaced by 10.0.2.2, the host as QEMU's user network shows it].
    #[arg(long, value_name = "HOST:PORT")]
    pub via: Option<String>,
    /// The owner's private key, which signs the request.
    #[arg(long, default_value = "owner.key")]
    pub owner_key: PathBuf,
    /// Where the certificates are written [default: ./NAME-MIGRATION].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Check these certificates instead of migrating.
    #[arg(long = "verify", value_name = "CERT", num_args = 1..)]
    pub check: Vec<PathBuf>,
    /// With --verify: the broker whose token key vouches for the signers.
    #[arg(long, default_value = "https://127.0.0.1:8443")]
    pub broker: String,
    /// With --verify: the broker's CA [default: $CVM_CACHE/broker/tls/ca.pem].
    #[arg(long)]
    pub broker_ca: Option<PathBuf>,
    /// Look up migration ID on the source (--from) instead of starting one: a pending
    /// migration's outcome once the source has settled it.
    #[arg(long, value_name = "ID", requires = "from")]
    pub status: Option<String>,
    /// How long to wait for a pending migration to settle, seconds (0: do not wait).
    #[arg(long, default_value_t = 900)]
    pub wait: u64,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The reference values both appliances' evidence must match.
    #[command(flatten)]
    pub reference: VerifyArgs,
}

/// The source's view of `to`: a loopback host is the host itself, which a QEMU guest
/// on the user network reaches as 10.0.2.2.
fn default_via(to: &str) -> String {
    match to.rsplit_once(':') {
        Some(("127.0.0.1" | "localhost" | "[::1]", port)) => format!("10.0.2.2:{port}"),
        _ => to.to_owned(),
    }
}

/// How often a pending migration is asked about.
const POLL: Duration = Duration::from_secs(5);

/// Run `cvm migrate`.
pub fn run(args: MigrateArgs) -> anyhow::Result<()> {
    if !args.check.is_empty() {
        return verify(&args);
    }
    let owner = || -> anyhow::Result<OwnerKey> {
        let pem = std::fs::read_to_string(&args.owner_key)
            .with_context(|| format!("read owner key {} (cvm keygen)", args.owner_key.display()))?;
        OwnerKey::from_pem(&pem).with_context(|| format!("owner key {}", args.owner_key.display()))
    };
    if let (Some(id), Some(from)) = (&args.status, &args.from) {
        let source = attested::connect(from, &args.reference, args.json)
            .with_context(|| format!("the source {from}"))?;
        let report = wait_settled(&source, from, &owner()?, id, args.wait)?;
        return conclude(
            &args,
            args.name.as_deref().unwrap_or("workload"),
            from,
            report,
        );
    }
    let (Some(name), Some(from), Some(to)) = (&args.name, &args.from, &args.to) else {
        anyhow::bail!("give NAME --from HOST:PORT --to HOST:PORT, or --verify CERT");
    };
    let source = attested::connect(from, &args.reference, args.json)
        .with_context(|| format!("the source {from}"))?;
    let destination = attested::connect(to, &args.reference, args.json)
        .with_context(|| format!("the destination {to}"))?;
    let to_key = destination
        .key_sha256()
        .context("the destination's key was not pinned")?;
    let request = MigrateRequest {
        to: args.via.clone().unwrap_or_else(|| default_via(to)),
        to_key_sha256: hex::encode(to_key),
    };
    let body = serde_json::to_vec(&request)?;
    let owner = owner()?;
    let path = format!("/v1/workloads/{name}/migrate");
    let headers = sign_request(&owner, &source, "POST", &path, &body)?;
    let source = source.with_timeout(MIGRATE_TIMEOUT);
    let answer =
        agent_client::request(&source, "POST", &path, &body, "application/json", &headers)?;
    let mut report: MigrateReport = agent_client::decode(from, "POST", &path, &answer)?;
    if report.outcome == Outcome::Pending && args.wait > 0 {
        eprintln!(
            "migration {} of {name} is pending: {}; waiting up to {} s for the source to settle it",
            report.migration,
            report
                .reason
                .as_deref()
                .unwrap_or("the broker did not answer"),
            args.wait
        );
        report = wait_settled(&source, from, &owner, &report.migration, args.wait)?;
    }
    conclude(&args, name, from, report)
}

/// Ask the source about migration `id` until it is no longer pending (or `wait`
/// seconds passed: the last report, still pending).
fn wait_settled(
    source: &cvm_agent_client::Agent,
    from: &str,
    owner: &OwnerKey,
    id: &str,
    wait: u64,
) -> anyhow::Result<MigrateReport> {
    let path = format!("/v1/migrations/{id}");
    let deadline = std::time::Instant::now() + Duration::from_secs(wait);
    loop {
        let headers = sign_request(owner, source, "GET", &path, b"")?;
        let answer = agent_client::request(source, "GET", &path, b"", "application/json", &headers);
        // The source may itself be restarting: keep asking until the deadline.
        match answer.and_then(|a| agent_client::decode::<MigrateReport>(from, "GET", &path, &a)) {
            Ok(r) if r.outcome != Outcome::Pending => return Ok(r),
            // Unknown there (another owner's, or the source restarted): asking again
            // will not change that.
            Err(e @ agent_client::AgentClientError::Status { status: 404, .. }) => {
                return Err(e.into());
            }
            Ok(r) if std::time::Instant::now() >= deadline => return Ok(r),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e.into()),
            _ => std::thread::sleep(POLL),
        }
    }
}

/// Keep the certificates, print the report, and exit by its outcome.
fn conclude(
    args: &MigrateArgs,
    name: &str,
    from: &str,
    report: MigrateReport,
) -> anyhow::Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("{name}-{}", report.migration)));
    let files = keep(&out, &report.certificates)?;
    if args.json {
        super::print_json(&report)?;
    } else {
        let reason = report
            .reason
            .as_deref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default();
        eprintln!(
            "migration {} of {name}: {:?} in {} ms, state version {}, snapshot {} bytes{reason}",
            report.migration,
            report.outcome,
            report.millis,
            report
                .version
                .map_or_else(|| "-".to_owned(), |v| v.to_string()),
            report.snapshot_bytes,
        );
        for s in &report.steps {
            eprintln!("  {:>7} ms  {}", s.millis, s.step);
        }
        for f in &files {
            eprintln!("  certificate {}", f.display());
        }
    }
    match report.outcome {
        Outcome::Migrated => Ok(()),
        Outcome::Aborted => anyhow::bail!(
            "migration aborted; {name} serves on {from} again{}",
            report.reason.map(|r| format!(" ({r})")).unwrap_or_default()
        ),
        Outcome::Refused => anyhow::bail!(
            "migration refused before anything left {from}{}",
            report.reason.map(|r| format!(": {r}")).unwrap_or_default()
        ),
        Outcome::Pending => anyhow::bail!(
            "migration {} still pending: {name} serves nowhere until the broker answers the source; `cvm migrate --status {} --from {from}` shows the outcome later",
            report.migration,
            report.migration
        ),
    }
}

/// Write each certificate to `dir` as `N-KIND.json`.
fn keep(dir: &Path, certs: &[Certificate]) -> anyhow::Result<Vec<PathBuf>> {
    if certs.is_empty() {
        return Ok(Vec::new());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut files = Vec::new();
    for (i, c) in certs.iter().enumerate() {
        let kind = certificate::statement_of(c)
            .map(|s| format!("{:?}", s.kind).to_lowercase())
            .unwrap_or_else(|_| "unreadable".into());
        let f = dir.join(format!("{}-{kind}.json", i + 1));
        std::fs::write(&f, serde_json::to_vec_pretty(c)?)
            .with_context(|| format!("write {}", f.display()))?;
        files.push(f);
    }
    Ok(files)
}

/// `cvm migrate --verify CERT…`.
fn verify(args: &MigrateArgs) -> anyhow::Result<()> {
    let ca = args.broker_ca.clone().unwrap_or_else(|| {
        cvm_broker::tls::TlsFiles::in_dir(&cvm_broker::command::default_dir()).ca
    });
    let tls = if args.broker.starts_with("http://") {
        BrokerTls::InsecureHttp
    } else {
        BrokerTls::Pinned(
            std::fs::read(&ca).with_context(|| format!("read broker CA {}", ca.display()))?,
        )
    };
    let transport = Transport::new(&args.broker, &tls, Duration::from_secs(30))?;
    let resp = transport.call("GET", "/kbs/v0/token-key", None, None, None)?;
    anyhow::ensure!(
        resp.status == 200,
        "broker {} answered {} for its token key",
        args.broker,
        resp.status
    );
    let jwk: serde_json::Value =
        serde_json::from_slice(&resp.body).context("the broker's token key is not JSON")?;
    let key = cvm_kbs_client::passport::broker_key(&jwk)?;
    let mut failed = 0;
    let mut checked = Vec::new();
    for path in &args.check {
        let result = std::fs::read(path)
            .with_context(|| format!("read {}", path.display()))
            .and_then(|b| {
                serde_json::from_slice::<Certificate>(&b)
                    .with_context(|| format!("{} is not a certificate", path.display()))
            })
            .and_then(|c| Ok(certificate::check(&c, &key)?));
        match result {
            Ok(c) => {
                let s = &c.statement;
                println!(
                    "ok   {}: {:?} of {} (migration {}), state version {}, signed at {} by agent key {}… ({} evidence affirmed by the broker)",
                    path.display(),
                    s.kind,
                    s.workload,
                    s.migration,
                    s.version,
                    s.time,
                    &hex::encode(c.passport.key_sha256)[..16],
                    c.passport.tee
                );
                checked.push(c);
            }
            Err(e) => {
                failed += 1;
                println!("FAIL {}: {e:#}", path.display());
            }
        }
    }
    // Certificates of one migration must tell one story.
    let release = checked.iter().find(|c| c.statement.kind == Kind::Release);
    for c in &checked {
        if let Some(r) = release
            && c.statement.migration == r.statement.migration
            && c.statement.kind != Kind::Release
        {
            let s = &c.statement;
            let consistent = s.workload == r.statement.workload
                && s.from == r.statement.from
                && s.to == r.statement.to
                && (s.kind == Kind::Abort || s.snapshot_sha256 == r.statement.snapshot_sha256);
            let signer = hex::encode(c.passport.key_sha256);
            let right_signer = match s.kind {
                Kind::Acceptance => signer == r.statement.to,
                _ => signer == r.statement.from,
            };
            if !consistent || !right_signer {
                failed += 1;
                println!(
                    "FAIL the {:?} of migration {} does not match its release",
                    s.kind, s.migration
                );
            }
        }
    }
    // An acceptance and an abort of one migration contradict each other: each is
    // signed only after its side won the broker's compare-and-set.
    for a in checked
        .iter()
        .filter(|c| c.statement.kind == Kind::Acceptance)
    {
        if checked.iter().any(|c| {
            c.statement.kind == Kind::Abort && c.statement.migration == a.statement.migration
        }) {
            failed += 1;
            println!(
                "FAIL migration {} has both an acceptance and an abort",
                a.statement.migration
            );
        }
    }
    anyhow::ensure!(failed == 0, "{failed} certificate check(s) failed");
    Ok(())
}
