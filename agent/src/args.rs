//! The agent's command line (set by PID1's configuration, so kept strict and small).

use std::net::SocketAddr;
use std::path::PathBuf;

/// Default listen address: every guest interface, port 8080.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default event log path, where PID1 writes it.
pub const DEFAULT_EVENTLOG: &str = "/run/cvm/eventlog.json";
/// The guest's TPM, through the kernel's resource manager.
pub const DEFAULT_TPM: &str = "device:/dev/tpmrm0";
/// The per-workload runtime binary.
pub const DEFAULT_RUNTIME: &str = "/usr/bin/cvm-wasm";
/// Where the agent keeps each workload's run folder (tmpfs: guest memory).
pub const DEFAULT_RUN_DIR: &str = "/run/cvm/workloads";

/// Validated arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentArgs {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// The runtime event log to serve.
    pub eventlog: PathBuf,
    /// TCTI of the TPM that quotes (`--tpm`), or `off`.
    pub tpm: Option<String>,
    /// The memfd PID1 handed the released secrets in (`--secrets-fd N`).
    pub secrets_fd: Option<i32>,
    /// The mounted encrypted state volume (`--state-dir PATH`).
    pub state_dir: Option<PathBuf>,
    /// The trusted owner keys, PEM (`--owners PATH`).
    pub owners: Option<PathBuf>,
    /// The key broker workload keys come from (`--broker URL`).
    pub broker: Option<String>,
    /// The CA pinned for the broker, PEM (`--broker-ca PATH`; absent: plain HTTP).
    pub broker_ca: Option<PathBuf>,
    /// The init-data body PID1 bound, presented to the broker (`--initdata PATH`).
    pub initdata: Option<PathBuf>,
    /// The per-workload runtime binary (`--runtime PATH`).
    pub runtime: PathBuf,
    /// The workloads' run folders (`--run-dir PATH`).
    pub run_dir: PathBuf,
}

/// Arguments that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    /// An argument the agent does not know.
    #[error(
        "unknown argument {0} (known: --listen ADDR, --eventlog PATH, --tpm TCTI|off, --secrets-fd N, --state-dir PATH, --owners PATH, --broker URL, --broker-ca PATH, --initdata PATH, --runtime PATH, --run-dir PATH)"
    )]
    Unknown(String),
    /// A flag without its value.
    #[error("argument {0} needs a value")]
    MissingValue(&'static str),
    /// `--listen` is not `IP:PORT`.
    #[error("--listen {0}: expected IP:PORT")]
    BadListen(String),
    /// `--secrets-fd` is not a descriptor number above stderr.
    #[error("--secrets-fd {0}: expected a descriptor number above 2")]
    BadFd(String),
}

impl AgentArgs {
    /// Parse `args` (without the program name).
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, ArgsError> {
        let mut listen = DEFAULT_LISTEN.to_owned();
        let mut eventlog = PathBuf::from(DEFAULT_EVENTLOG);
        let mut tpm = Some(DEFAULT_TPM.to_owned());
        let mut secrets_fd = None;
        let mut state_dir = None;
        let mut owners = None;
        let (mut broker, mut broker_ca, mut initdata) = (None, None, None);
        let mut runtime = PathBuf::from(DEFAULT_RUNTIME);
        let mut run_dir = PathBuf::from(DEFAULT_RUN_DIR);
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--listen" => listen = it.next().ok_or(ArgsError::MissingValue("--listen"))?,
                "--eventlog" => {
                    eventlog = it
                        .next()
                        .ok_or(ArgsError::MissingValue("--eventlog"))?
                        .into()
                }
                "--tpm" => {
                    let v = it.next().ok_or(ArgsError::MissingValue("--tpm"))?;
                    tpm = (v != "off").then_some(v);
                }
                "--secrets-fd" => {
                    let v = it.next().ok_or(ArgsError::MissingValue("--secrets-fd"))?;
                    secrets_fd = Some(
                        v.parse::<i32>()
                            .ok()
                            .filter(|n| *n > 2)
                            .ok_or(ArgsError::BadFd(v))?,
                    );
                }
                "--owners" => {
                    owners = Some(it.next().ok_or(ArgsError::MissingValue("--owners"))?.into())
                }
                "--broker" => broker = Some(it.next().ok_or(ArgsError::MissingValue("--broker"))?),
                "--broker-ca" => {
                    broker_ca = Some(
                        it.next()
                            .ok_or(ArgsError::MissingValue("--broker-ca"))?
                            .into(),
                    )
                }
                "--initdata" => {
                    initdata = Some(
                        it.next()
                            .ok_or(ArgsError::MissingValue("--initdata"))?
                            .into(),
                    )
                }
                "--runtime" => {
                    runtime = it
                        .next()
                        .ok_or(ArgsError::MissingValue("--runtime"))?
                        .into()
                }
                "--run-dir" => {
                    run_dir = it
                        .next()
                        .ok_or(ArgsError::MissingValue("--run-dir"))?
                        .into()
                }
                "--state-dir" => {
                    state_dir = Some(
                        it.next()
                            .ok_or(ArgsError::MissingValue("--state-dir"))?
                            .into(),
                    )
                }
                _ => return Err(ArgsError::Unknown(arg)),
            }
        }
        let listen = listen.parse().map_err(|_| ArgsError::BadListen(listen))?;
        Ok(AgentArgs {
            listen,
            eventlog,
            tpm,
            secrets_fd,
            state_dir,
            owners,
            broker,
            broker_ca,
            initdata,
            runtime,
            run_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(a: &[&str]) -> Result<AgentArgs, ArgsError> {
        AgentArgs::parse(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults_and_overrides() {
        assert_eq!(parse(&[]).unwrap().listen.port(), 8080);
        let a = parse(&["--listen", "127.0.0.1:9", "--eventlog", "/x"]).unwrap();
        assert_eq!(a.listen.to_string(), "127.0.0.1:9");
        assert_eq!(a.eventlog, PathBuf::from("/x"));
        assert_eq!(a.tpm.as_deref(), Some(DEFAULT_TPM));
        assert_eq!(parse(&["--tpm", "off"]).unwrap().tpm, None);
    }

    #[test]
    fn bad_arguments_are_named() {
        assert_eq!(
            parse(&["--shell"]),
            Err(ArgsError::Unknown("--shell".into()))
        );
        assert_eq!(
            parse(&["--listen"]),
            Err(ArgsError::MissingValue("--listen"))
        );
        assert_eq!(
            parse(&["--listen", "8080"]),
            Err(ArgsError::BadListen("8080".into()))
        );
        assert_eq!(
            parse(&["--secrets-fd", "1"]),
            Err(ArgsError::BadFd("1".into()))
        );
        let a = parse(&["--secrets-fd", "7", "--state-dir", "/var/lib/cvm"]).unwrap();
        assert_eq!(
            (a.secrets_fd, a.state_dir.as_deref()),
            (Some(7), Some(std::path::Path::new("/var/lib/cvm")))
        );
    }
}
