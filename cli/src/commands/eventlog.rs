//! `cvm eventlog`: the guest's runtime event log, optionally verified.

use std::path::PathBuf;

use cvm_proto::agent::EventLogResponse;
use serde::Serialize;

use crate::agent_client;
use crate::exit::VerificationFailed;
use crate::verify::{self, Check};

/// Arguments of `cvm eventlog`.
#[derive(Debug, clap::Args)]
pub struct EventLogArgs {
    /// The agent, as HOST:PORT.
    #[arg(long)]
    pub to: String,
    /// Check that the log replays to the register and, with --image, that its digests
    /// are those of the image's files; exit 4 when a check fails.
    #[arg(long)]
    pub verify: bool,
    /// The image folder the guest was booted from (for --verify).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Print the log (and checks) as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    #[serde(flatten)]
    response: &'a EventLogResponse,
    #[serde(skip_serializing_if = "Option::is_none")]
    checks: Option<&'a [Check]>,
}

/// Run `cvm eventlog`.
pub fn run(args: EventLogArgs) -> anyhow::Result<()> {
    let resp: EventLogResponse =
        agent_client::get_json(&agent_client::Agent::unverified(&args.to), "/v1/eventlog")?;
    let manifest = args
        .image
        .as_deref()
        .map(super::read_manifest)
        .transpose()?;
    let checks = args
        .verify
        .then(|| verify::check_eventlog(&resp, manifest.as_ref()));
    if args.json {
        super::print_json(&Report {
            response: &resp,
            checks: checks.as_deref(),
        })?;
    } else {
        print_log(&resp);
        if let Some(checks) = &checks {
            print_checks(checks);
        }
    }
    match checks {
        Some(c) if c.iter().any(|c| !c.ok) => Err(VerificationFailed.into()),
        _ => Ok(()),
    }
}

/// Human form of the log.
pub fn print_log(resp: &EventLogResponse) {
    println!("event log ({:?}):", resp.log.register);
    for r in &resp.log.records {
        let sha = r.digests.first().map(|d| d.digest.as_str()).unwrap_or("");
        println!(
            "  #{} pcr{} {:<14} {}  {}",
            r.recnum,
            r.pcr,
            format!("{:?}", r.content.kind),
            sha,
            r.content.subject
        );
    }
    for v in &resp.register_values {
        println!("  register {:?} = {}", v.hash_alg, v.value);
    }
}

/// Human form of the checks.
pub fn print_checks(checks: &[Check]) {
    for c in checks {
        println!(
            "  [{}] {}: {}",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
}
