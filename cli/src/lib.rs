//! `cvm`: the one host command.
//!
//! Trust-chain place: host side, outside the TCB. It builds what the guest measures and
//! checks what the guest reports.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

/// The agent API client (its own crate: appliances use it to reach each other too).
pub use cvm_agent_client as agent_client;
pub mod appraise;
pub mod attested;
pub mod commands;
pub mod exit;
pub mod paths;
pub mod verify;

use clap::{Parser, Subcommand};

/// The confidential-VM appliance: build, boot and inspect it.
#[derive(Debug, Parser)]
#[command(name = "cvm", version, after_help = exit::HELP)]
pub struct Cli {
    /// The subcommand.
    #[command(subcommand)]
    pub command: Command,
}

/// `cvm` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build the guest image: kernel (cached), deterministic initramfs, UKI, GPT disk,
    /// manifest.
    Build(commands::build::BuildArgs),
    /// Export the image's disk as raw, qcow2, an Azure VHD or a GCE tar.gz.
    Export(commands::export::ExportArgs),
    /// Boot an image under QEMU with OVMF and a swtpm vTPM; exit with the guest's outcome.
    Run(commands::run::RunArgs),
    /// Ask a running agent for its health.
    Status(commands::status::StatusArgs),
    /// Show (and verify) a running guest's runtime event log.
    Eventlog(commands::eventlog::EventLogArgs),
    /// Attest a running guest: bind its AK to its EK, verify a fresh quote and its
    /// event logs, and check the PCRs against the image's reference values.
    Attest(commands::attest::AttestArgs),
    /// Predict the PCRs, boot, show the healthy agent and its verified measurements,
    /// attest it against the prediction, power off.
    Demo(commands::demo::DemoArgs),
    /// Fetch and verify the pinned SEV-SNP and TDX firmware; show its metadata.
    Firmware(commands::firmware::FirmwareArgs),
    /// Compute reference values offline (vTPM PCRs, SEV-SNP launch digest, TDX MRTD).
    Measure(commands::measure::MeasureArgs),
    /// Run the key broker, or administer it (resources, reference values, policy).
    Broker(commands::broker::BrokerArgs),
    /// Write the init-data (TOML) that points a guest at its broker.
    Initdata(commands::initdata::InitdataArgs),
    /// Make an owner signing key for sealed workloads.
    Keygen(commands::seal::KeygenArgs),
    /// Seal a Wasm workload: sign its manifest and policy, encrypt it, store its key.
    Seal(commands::seal::SealArgs),
    /// Deploy a sealed bundle to a running appliance.
    Deploy(commands::workload::DeployArgs),
    /// List your workloads on an appliance.
    Ps(commands::workload::PsArgs),
    /// Print the appliance's Prometheus metrics (your workloads' and the agent's).
    Metrics(commands::workload::PsArgs),
    /// Show (or follow) a workload's log: its stdout, stderr and the appliance's events.
    Logs(commands::workload::LogsArgs),
    /// Stop a workload (its state stays).
    Stop(commands::workload::NameArgs),
    /// Remove a workload and its state.
    Rm(commands::workload::NameArgs),
    /// Move a workload with its sealed state to another appliance (both attested; the
    /// broker's lease decides), or check the certificates of a migration (--verify).
    Migrate(commands::migrate::MigrateArgs),
}

/// Run one command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Build(a) => commands::build::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Run(a) => commands::run::run(a),
        Command::Status(a) => commands::status::run(a),
        Command::Eventlog(a) => commands::eventlog::run(a),
        Command::Attest(a) => commands::attest::run(a),
        Command::Demo(a) => commands::demo::run(a),
        Command::Firmware(a) => commands::firmware::run(a),
        Command::Measure(a) => commands::measure::run(a),
        Command::Broker(a) => commands::broker::run(a),
        Command::Initdata(a) => commands::initdata::run(a),
        Command::Keygen(a) => commands::seal::keygen(a),
        Command::Seal(a) => commands::seal::seal_command(a),
        Command::Deploy(a) => commands::workload::deploy(a),
        Command::Ps(a) => commands::workload::ps(a),
        Command::Metrics(a) => commands::workload::metrics(a),
        Command::Logs(a) => commands::workload::logs(a),
        Command::Stop(a) => commands::workload::stop(a),
        Command::Rm(a) => commands::workload::rm(a),
        Command::Migrate(a) => commands::migrate::run(a),
    }
}
