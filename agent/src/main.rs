//! `cvm-agent`: see the library.

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .with_writer(std::io::stderr)
        .init();
    // `cvm-agent baseline`: PID1 runs this once per boot, before the agent proper.
    if std::env::args().nth(1).as_deref() == Some("baseline") {
        return match cvm_agent::enforce::baseline::install() {
            Ok(report) => {
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("cvm-agent baseline: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    let result = cvm_agent::AgentArgs::parse(std::env::args().skip(1))
        .map_err(anyhow::Error::from)
        .and_then(|args| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(cvm_agent::run(args))
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cvm-agent: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
