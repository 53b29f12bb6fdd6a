//! PID1 of the cvm guest.
//!
//! Trust-chain place: measured by the firmware as part of the initramfs (PCR 9, SNP
//! launch digest, TDX RTMR2); the first user-space code, in the TCB. It measures itself,
//! its configuration, the `cvm.*` kernel parameters and the agent binary into the
//! runtime event log and PCR 15, installs and measures the kernel enforcement baseline,
//! releases keys, then starts and supervises the agent.
//!
//! Inputs: `/etc/cvm/init.json` and the kernel command line. Outputs: the event log at
//! `/run/cvm/eventlog.json`, status lines on the console, and in the end a power-off.
//!
//! Non-goals: no shell, no login, no fallback to an unmeasured or unprotected mode; any
//! error is one console line and a power-off.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod config;
pub mod enforcement;
pub mod initdata;
pub mod input;
pub mod keys;
pub mod measure;
pub mod mounts;
pub mod power;
pub mod secrets;
pub mod state;
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
    /// The init-data is unusable or could not be bound.
    #[error(transparent)]
    InitData(#[from] initdata::InitDataErrorKind),
    /// Key release failed (the broker's reason, or why it could not be reached).
    #[error(transparent)]
    Keys(#[from] keys::KeyError),
    /// The state volume could not be opened.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The enforcement baseline could not be installed.
    #[error(transparent)]
    Baseline(#[from] enforcement::BaselineError),
    /// The secrets could not be handed over.
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
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
    raise_fd_limit();

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

    // Before the key release, so the broker's evidence shows the baseline.
    enforcement::install(&config, &mut log)?;
    let released = release_keys(&config, &log)?;
    let mut supervisor = supervise::Supervisor::new(&config)?.with_args(released.agent_args());
    let reason = supervisor.run();
    if released.state_open {
        state::close();
    }
    let reason = reason?;
    power::console(&format!("cvm-init: shutdown requested ({reason})"));
    Ok(reason)
}

/// Open files allowed to PID1 and, inherited, to the agent and every workload runtime.
/// The kernel's default of 1024 caps the agent at about 170 workloads (each holds its
/// port's listener, a status socket and two pipes); memory should be the limit instead.
const MAX_OPEN_FILES: u64 = 65536;

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, MAX_OPEN_FILES, MAX_OPEN_FILES) {
        tracing::warn!(error = %e, "could not raise the open-file limit; workloads will be fewer");
    }
}

/// Where PID1 leaves the trusted owner keys for the agent (public, not secret).
pub const OWNERS_PATH: &str = "/run/cvm/owners.pem";
/// Where PID1 leaves the init-data body (exactly the bound bytes) for the agent, which
/// presents it to the broker when it fetches workload keys.
pub const INITDATA_PATH: &str = "/run/cvm/initdata.toml";
/// Where PID1 leaves the broker CA the init-data pins, for the agent.
pub const BROKER_CA_PATH: &str = "/run/cvm/broker-ca.pem";

/// What key release left for the rest of the boot.
#[derive(Debug, Default)]
struct Released {
    /// Kept open (and inherited by the agent) for the whole boot.
    secrets: Option<secrets::SecretsFd>,
    state_open: bool,
    owners: bool,
    /// The broker's URL and whether a CA is pinned (the agent fetches workload keys).
    broker: Option<(String, bool)>,
}

impl Released {
    fn agent_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(fd) = &self.secrets {
            args.extend(["--secrets-fd".to_owned(), fd.raw().to_string()]);
        }
        if self.state_open {
            args.extend(["--state-dir".to_owned(), state::STATE_MOUNT.to_owned()]);
        }
        if self.owners {
            args.extend(["--owners".to_owned(), OWNERS_PATH.to_owned()]);
        }
        if let Some((url, ca)) = &self.broker {
            args.extend(["--broker".to_owned(), url.clone()]);
            args.extend(["--initdata".to_owned(), INITDATA_PATH.to_owned()]);
            if *ca {
                args.extend(["--broker-ca".to_owned(), BROKER_CA_PATH.to_owned()]);
            }
        }
        args
    }
}

/// With init-data: bind it, attest to its broker, open the state volume, hand the
/// resources to the agent. Without: a stateless boot that holds no keys.
fn release_keys(config: &Config, log: &RuntimeLog) -> Result<Released, InitError> {
    let Some((body, data)) = initdata::read(std::path::Path::new(initdata::FW_CFG_INITDATA))?
    else {
        power::console("cvm-init: no init-data: no key release, no state volume");
        return Ok(Released::default());
    };
    let settings = initdata::settings(&body, &data)?;
    let platform = keys::detect();
    let tcti = measure::tpm_tcti(config);
    if platform == keys::Platform::Tpm {
        let tcti = tcti.as_deref().ok_or(keys::KeyError::NoAttester(
            "init-data needs a TPM to bind it to (PCR 8), and there is none".into(),
        ))?;
        initdata::bind_tpm(tcti, &data)?;
    }
    info!(digest = %hex::encode(&data.digest), broker = %settings.broker_url, "init-data bound");
    let keys = keys::release(&settings, platform, tcti.as_deref(), log.log())?;
    power::console(&format!(
        "{}{}",
        cvm_proto::console::INIT_KEYS_RELEASED,
        settings.broker_url
    ));
    let mut state_open = false;
    if let (Some(device), Some(key)) = (&settings.state_device, &keys.state_key) {
        let device = state::resolve(device)?;
        let volume = state::open(&device, key)?;
        state_open = true;
        power::console(&format!(
            "{}{} (boot {} of this volume)",
            cvm_proto::console::INIT_STATE,
            if volume.created {
                "created"
            } else {
                "unlocked"
            },
            volume.record.boots
        ));
    }
    if let Some(pem) = &settings.owners {
        fs::write(OWNERS_PATH, pem).map_err(io("write", OWNERS_PATH))?;
    }
    fs::write(INITDATA_PATH, &settings.body).map_err(io("write", INITDATA_PATH))?;
    if let Some(ca) = &settings.broker_ca {
        fs::write(BROKER_CA_PATH, ca).map_err(io("write", BROKER_CA_PATH))?;
    }
    // Created last: every child spawned from here on (only the agent) inherits it.
    let secrets = secrets::SecretsFd::new(&keys.resources)?;
    Ok(Released {
        secrets: Some(secrets),
        state_open,
        owners: settings.owners.is_some(),
        broker: Some((settings.broker_url.clone(), settings.broker_ca.is_some())),
    })
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
