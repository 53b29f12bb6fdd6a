//! `cvm`: see the library.

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) => match tracing_subscriber::EnvFilter::try_new(&v) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("cvm: error: RUST_LOG={v:?} is invalid: {e}");
                return std::process::ExitCode::from(1);
            }
        },
        Err(_) => tracing_subscriber::EnvFilter::new("info"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    match cvm_cli::run(cvm_cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cvm: error: {e:#}");
            std::process::ExitCode::from(cvm_cli::exit::ExitCode::of(&e) as u8)
        }
    }
}
