//! `cvm deploy`, `cvm ps`, `cvm logs`, `cvm stop`, `cvm rm`: the service owner's side of
//! the appliance's workloads. A deploy is authorised by the bundle's own signature;
//! everything else is a request signed with the owner key, so the agent answers only
//! about that owner's workloads. Each command first attests the agent against
//! reference values (`--image` or `--reference`) and talks only to the TLS key that
//! evidence is bound to; signatures cover that key, so a signed request is good for
//! this appliance only.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use cvm_proto::agent::{
    HEADER_NONCE, HEADER_OWNER, HEADER_SIGNATURE, HEADER_TIME, LogLine, LogStream, WorkloadStatus,
    request_signing_input,
};
use cvm_runtime::bundle::owner::OwnerKey;
use sha2::{Digest as _, Sha256};

use super::attest::VerifyArgs;
use crate::agent_client::{self, Agent};
use crate::attested;

/// Where the agent is and who asks.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// The agent's API, HOST:PORT (`cvm run` prints it).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub to: String,
    /// The owner's private key (`cvm keygen`), which signs the request.
    #[arg(long, default_value = "owner.key")]
    pub owner_key: PathBuf,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The reference values the agent's evidence must match.
    #[command(flatten)]
    pub verify: VerifyArgs,
}

impl Target {
    /// Attest the agent and pin its key.
    fn agent(&self) -> anyhow::Result<Agent> {
        attested::connect(&self.to, &self.verify, self.json)
    }
}

/// `cvm deploy`.
#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The sealed bundle (`cvm seal`).
    pub bundle: PathBuf,
    /// The agent's API, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub to: String,
    /// Print the workload's status as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// The reference values the agent's evidence must match.
    #[command(flatten)]
    pub verify: VerifyArgs,
}

/// `cvm ps`.
#[derive(Debug, clap::Args)]
pub struct PsArgs {
    #[command(flatten)]
    target: Target,
}

/// `cvm logs`.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The workload.
    pub name: String,
    /// Keep printing lines as they arrive.
    #[arg(short, long)]
    pub follow: bool,
    /// Start at this line number.
    #[arg(long, default_value_t = 0)]
    pub since: u64,
    #[command(flatten)]
    target: Target,
}

/// `cvm stop` and `cvm rm`.
#[derive(Debug, clap::Args)]
pub struct NameArgs {
    /// The workload.
    pub name: String,
    #[command(flatten)]
    target: Target,
}

/// Headers that sign one request with the owner key in `target`.
fn signed(
    target: &Target,
    agent: &Agent,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<Vec<(String, String)>> {
    let pem = std::fs::read_to_string(&target.owner_key)
        .with_context(|| format!("read owner key {} (cvm keygen)", target.owner_key.display()))?;
    let key = OwnerKey::from_pem(&pem)
        .with_context(|| format!("owner key {}", target.owner_key.display()))?;
    sign_request(&key, agent, method, path, body)
}

/// Headers that sign one request to the pinned `agent` with `key`: its kid, the time,
/// a fresh nonce and the signature over [`request_signing_input`], which covers the
/// agent's TLS key.
pub fn sign_request(
    key: &OwnerKey,
    agent: &Agent,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<Vec<(String, String)>> {
    let agent_key = agent
        .key_sha256()
        .context("requests are signed only for an attested agent")?;
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let mut nonce = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let nonce = hex::encode(nonce);
    let input = request_signing_input(
        method,
        path,
        time,
        &nonce,
        &hex::encode(Sha256::digest(body)),
        &hex::encode(agent_key),
    );
    Ok(vec![
        (HEADER_OWNER.to_owned(), hex::encode(key.public().kid())),
        (HEADER_TIME.to_owned(), time.to_string()),
        (HEADER_NONCE.to_owned(), nonce),
        (
            HEADER_SIGNATURE.to_owned(),
            base64::engine::general_purpose::STANDARD.encode(key.sign(&input)),
        ),
    ])
}

fn call(target: &Target, agent: &Agent, method: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    let headers = signed(target, agent, method, path, b"")?;
    Ok(agent_client::request(
        agent,
        method,
        path,
        b"",
        "application/json",
        &headers,
    )?)
}

/// One line: name, version, state, port, exit code, reason.
pub fn describe(w: &WorkloadStatus) -> String {
    let mut s = format!("{} {} {:?}", w.name, w.version, w.state).to_lowercase();
    if let Some(p) = w.http_port {
        s.push_str(&format!(" port {p}"));
    }
    if let Some(c) = w.exit_code {
        s.push_str(&format!(" exit {c}"));
    }
    if let Some(r) = &w.reason {
        s.push_str(&format!(": {r}"));
    }
    s
}

/// How long a deploy may take: the agent compiles the workload (up to ten minutes in
/// a slow, emulated guest) before it answers.
const DEPLOY_TIMEOUT: Duration = Duration::from_secs(660);
/// How long a stop or removal may take: a removal first records itself at the broker
/// (an attestation, seconds in an emulated guest).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(120);

/// `cvm deploy BUNDLE --to HOST:PORT`.
pub fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let bundle = std::fs::read(&args.bundle)
        .with_context(|| format!("read bundle {}", args.bundle.display()))?;
    let agent = attested::connect(&args.to, &args.verify, args.json)?.with_timeout(DEPLOY_TIMEOUT);
    let body = agent_client::request(
        &agent,
        "POST",
        "/v1/workloads",
        &bundle,
        "application/cbor",
        &[],
    )?;
    let status: WorkloadStatus = agent_client::decode(&args.to, "POST", "/v1/workloads", &body)?;
    if args.json {
        return super::print_json(&status);
    }
    println!(
        "deployed {} (manifest sha256 {}, compiled in {} ms)",
        describe(&status),
        status.manifest_sha256,
        status.compile_ms.unwrap_or(0)
    );
    Ok(())
}

/// `cvm ps`.
pub fn ps(args: PsArgs) -> anyhow::Result<()> {
    let t = &args.target;
    let agent = t.agent()?;
    let body = call(t, &agent, "GET", "/v1/workloads")?;
    let list: Vec<WorkloadStatus> = agent_client::decode(&t.to, "GET", "/v1/workloads", &body)?;
    if t.json {
        return super::print_json(&list);
    }
    println!(
        "{:<20} {:<10} {:<9} {:>6} {:>8} {:>8} {:>9}  REASON",
        "NAME", "VERSION", "STATE", "PORT", "RESTART", "DENIALS", "RSS(KiB)"
    );
    for w in &list {
        println!(
            "{:<20} {:<10} {:<9} {:>6} {:>8} {:>8} {:>9}  {}",
            w.name,
            w.version,
            format!("{:?}", w.state).to_lowercase(),
            w.http_port.map_or("-".into(), |p| p.to_string()),
            w.restarts,
            w.denials,
            w.rss_bytes.map_or("-".into(), |b| (b / 1024).to_string()),
            w.reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// `cvm metrics`: the Prometheus text of the caller's workloads and the agent.
pub fn metrics(args: PsArgs) -> anyhow::Result<()> {
    let t = &args.target;
    let agent = t.agent()?;
    let body = call(t, &agent, "GET", "/v1/metrics")?;
    print!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

fn print_line(l: &LogLine, json: bool) {
    if json {
        if let Ok(s) = serde_json::to_string(l) {
            println!("{s}");
        }
        return;
    }
    let tag = match l.stream {
        LogStream::Stdout => "out",
        LogStream::Stderr => "err",
        LogStream::Event => "cvm",
    };
    println!("{:>6} {tag} {}", l.seq, l.text);
}

/// `cvm logs NAME [-f]`.
pub fn logs(args: LogsArgs) -> anyhow::Result<()> {
    let t = &args.target;
    let path = format!(
        "/v1/workloads/{}/logs?since={}{}",
        args.name,
        args.since,
        if args.follow { "&follow=1" } else { "" }
    );
    let agent = t.agent()?;
    if args.follow {
        let headers = signed(t, &agent, "GET", &path, b"")?;
        agent_client::stream_lines(&agent, &path, &headers, |line| {
            if let Ok(l) = serde_json::from_str::<LogLine>(line) {
                print_line(&l, t.json);
            }
            true
        })?;
        return Ok(());
    }
    let body = call(t, &agent, "GET", &path)?;
    for line in String::from_utf8_lossy(&body).lines() {
        let l: LogLine = serde_json::from_str(line).context("a log line from the agent")?;
        print_line(&l, t.json);
    }
    Ok(())
}

/// `cvm stop NAME`.
pub fn stop(args: NameArgs) -> anyhow::Result<()> {
    let t = &args.target;
    let path = format!("/v1/workloads/{}/stop", args.name);
    let body = call(t, &t.agent()?.with_timeout(CHANGE_TIMEOUT), "POST", &path)?;
    let status: WorkloadStatus = agent_client::decode(&t.to, "POST", &path, &body)?;
    if t.json {
        return super::print_json(&status);
    }
    println!("{}", describe(&status));
    Ok(())
}

/// `cvm rm NAME`.
pub fn rm(args: NameArgs) -> anyhow::Result<()> {
    let t = &args.target;
    call(
        t,
        &t.agent()?.with_timeout(CHANGE_TIMEOUT),
        "DELETE",
        &format!("/v1/workloads/{}", args.name),
    )?;
    if t.json {
        return super::print_json(&serde_json::json!({ "removed": args.name }));
    }
    println!("removed {} and its state", args.name);
    Ok(())
}
