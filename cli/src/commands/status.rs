//! `cvm status`: the agent's health.

use cvm_proto::agent::Health;

use crate::agent_client;

/// Arguments of `cvm status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The agent, as HOST:PORT.
    #[arg(long)]
    pub to: String,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Run `cvm status`.
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    let health: Health =
        agent_client::get_json(&agent_client::Agent::unverified(&args.to), "/healthz")?;
    if args.json {
        return super::print_json(&health);
    }
    println!(
        "agent {}: {} (version {})",
        args.to, health.status, health.version
    );
    Ok(())
}
