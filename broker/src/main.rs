//! `cvm-broker`: the key broker on its own, for a host that runs only the broker.

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "cvm-broker",
    version,
    about = "The cvm key broker (Trustee KBS protocol 0.4.0)"
)]
enum Command {
    /// Serve the KBS protocol and the admin API.
    Serve(cvm_broker::command::ServeArgs),
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CVM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Command::Serve(args) = Command::parse();
    match cvm_broker::command::run_serve(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
