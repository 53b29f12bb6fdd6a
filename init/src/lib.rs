//! PID1 of the cvm guest.
//!
//! Trust-chain place: measured by the firmware as part of the initramfs (PCR 9, SNP
//! launch digest, TDX RTMR2); the first user-space code, in the TCB. It measures itself,
//! its configuration, the `cvm.*` kernel parameters and the agent binary into the
//! runtime event log and PCR 15, then starts and supervises the agent.
//!
//! Inputs: `/etc/cvm/init.json` and the kernel command line. Outputs: the event log at
//! `/run/cvm/eventlog.json`, status lines on the console, and in the end a power-off.
//!
//! Non-goals: no shell, no login, no fallback to an unmeasured or unprotected mode; any
//! error is one console line and a power-off.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod config;
pub mod input;
pub mod measure;
pub mod mounts;
pub mod power;
pub mod supervise;
mod sys;

use std::fs;

use cvm_attest::RuntimeLog;
use nix::sys::reboot::set_cad_enabled;
use nix::sys::signal::{SigmaskHow, sigprocmask};
use tracing::info;

use config::{CONFIG_PATH, Config, EVENTLOG_PATH};

/// Everything that can stop PID1 before an orderly shutdown.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount failed.
    #[error(transparent)]
    Mount(#[from] mounts::MountError),
    /// A file PID1 needs could not be read or written.
    #[error("{op} {path} failed")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A measurement failed.
    #[error(transparent)]
    Measure(#[from] measure::MeasureError),
    /// Signal setup failed.
    #[error("block signals failed")]
    Signals(#[source] nix::Error),
    /// Supervision failed.
    #[error(transparent)]
    Supervise(#[from] supervise::SuperviseError),
}

fn io(op: &'static str, path: &'static str) -> impl FnOnce(std::io::Error) -> InitError {
    move |source| InitError::Io { op, path, source }
}

/// Run PID1 to the end: an orderly power-off or a fatal error.
pub fn run() -> ! {
    std::panic::set_hook(Box::new(|info| {
        power::fatal(&std::io::Error::other(format!("panic: {info}")));
    }));
    match boot() {
        Ok(reason) => power::poweroff_ok(reason),
        Err(e) => power::fatal(&e),
    }
}

fn boot() -> Result<&'static str, InitError> {
    // Signals first, so that no SIGCHLD or SIGTERM is lost between here and the loop.
    sigprocmask(
        SigmaskHow::SIG_BLOCK,
        Some(&supervise::handled_signals()),
        None,
    )
    .map_err(InitError::Signals)?;
    // Ctrl-Alt-Del becomes SIGINT to PID1 instead of an immediate reboot.
    let _ = set_cad_enabled(false);
    mounts::mount_all()?;

    let cmdline = fs::read_to_string("/proc/cmdline").map_err(io("read", "/proc/cmdline"))?;
    let config_bytes = fs::read(CONFIG_PATH).map_err(io("read configuration", CONFIG_PATH))?;
    let config = Config::new(CONFIG_PATH, &config_bytes, &cmdline)?;
    init_logging(&config.log);
    info!(version = env!("CARGO_PKG_VERSION"), "cvm-init starting");

    fs::create_dir_all("/run/cvm").map_err(io("create", "/run/cvm"))?;
    let register = measure::open_register(&config)?;
    let mut log = RuntimeLog::new(register, Some(EVENTLOG_PATH.into()));
    measure::measure_boot(&mut log, &config, CONFIG_PATH, &config_bytes)?;
    info!(records = log.log().records.len(), register = ?log.log().register, "boot measured");

    let mut supervisor = supervise::Supervisor::new(&config)?;
    let reason = supervisor.run()?;
    power::console(&format!("cvm-init: shutdown requested ({reason})"));
    Ok(reason)
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::new(format!("{level},cvm_init={level}"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .without_time()
        .with_target(true)
        .with_writer(std::io::stderr)
        .try_init();
}
