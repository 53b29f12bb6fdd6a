//! PID1's configuration: a JSON file baked into the initramfs, overridden by a few
//! `cvm.*` kernel parameters. Both are parsed and validated here, once.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Where the image builder puts the configuration file.
pub const CONFIG_PATH: &str = "/etc/cvm/init.json";
/// Where PID1 writes the runtime event log for the agent to serve.
pub const EVENTLOG_PATH: &str = "/run/cvm/eventlog.json";
/// The guest TPM resource manager device.
pub const TPM_DEVICE: &str = "/dev/tpmrm0";

/// Default for [`SuperviseConfig::initial_backoff_ms`].
pub const DEFAULT_INITIAL_BACKOFF_MS: u64 = 250;
/// Default for [`SuperviseConfig::max_backoff_ms`].
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 8_000;
/// Default for [`SuperviseConfig::max_failures`].
pub const DEFAULT_MAX_FAILURES: u32 = 5;
/// Default for [`SuperviseConfig::stable_after_ms`].
pub const DEFAULT_STABLE_AFTER_MS: u64 = 30_000;
/// Default for [`SuperviseConfig::shutdown_grace_ms`].
pub const DEFAULT_SHUTDOWN_GRACE_MS: u64 = 5_000;
/// Default for [`InitConfig::tpm_wait_ms`].
pub const DEFAULT_TPM_WAIT_MS: u64 = 3_000;

/// Whether a TPM must back the runtime measurements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TpmMode {
    /// No TPM means no boot (default).
    #[default]
    Required,
    /// Use the TPM when the device exists; keep an unbacked log otherwise.
    Optional,
    /// Never touch a TPM; keep an unbacked log.
    Off,
}

/// The file form (`/etc/cvm/init.json`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// TPM requirement; default `required`. Kernel parameter `cvm.tpm=`.
    #[serde(default)]
    pub tpm: TpmMode,
    /// How long to wait for the TPM device to appear; default 3000 ms.
    #[serde(default = "default_tpm_wait_ms")]
    pub tpm_wait_ms: u64,
    /// The agent to start and supervise.
    pub agent: AgentConfig,
    /// Restart and shutdown behaviour.
    #[serde(default)]
    pub supervise: SuperviseConfig,
    /// Log level of PID1 and the agent (`error`…`trace`); default `info`. Kernel
    /// parameter `cvm.log=`.
    #[serde(default = "default_log")]
    pub log: String,
}

/// The agent process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Absolute path of the agent binary. Kernel parameter `cvm.agent=`.
    pub path: PathBuf,
    /// Arguments; the environment is always empty but for `RUST_LOG`.
    #[serde(default)]
    pub args: Vec<String>,
}

/// Agent supervision.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuperviseConfig {
    /// Delay before the first restart; doubles per consecutive failure. Default 250 ms.
    #[serde(default = "default_initial_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Upper bound of the restart delay; default 8000 ms.
    #[serde(default = "default_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Consecutive failures after which PID1 gives up and powers off; default 5.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// A run this long resets the failure count; default 30000 ms.
    #[serde(default = "default_stable_after_ms")]
    pub stable_after_ms: u64,
    /// Time the agent gets to exit after SIGTERM at shutdown; default 5000 ms.
    #[serde(default = "default_shutdown_grace_ms")]
    pub shutdown_grace_ms: u64,
}

impl Default for SuperviseConfig {
    fn default() -> Self {
        SuperviseConfig {
            initial_backoff_ms: DEFAULT_INITIAL_BACKOFF_MS,
            max_backoff_ms: DEFAULT_MAX_BACKOFF_MS,
            max_failures: DEFAULT_MAX_FAILURES,
            stable_after_ms: DEFAULT_STABLE_AFTER_MS,
            shutdown_grace_ms: DEFAULT_SHUTDOWN_GRACE_MS,
        }
    }
}

fn default_tpm_wait_ms() -> u64 {
    DEFAULT_TPM_WAIT_MS
}
fn default_log() -> String {
    "info".to_owned()
}
fn default_initial_backoff_ms() -> u64 {
    DEFAULT_INITIAL_BACKOFF_MS
}
fn default_max_backoff_ms() -> u64 {
    DEFAULT_MAX_BACKOFF_MS
}
fn default_max_failures() -> u32 {
    DEFAULT_MAX_FAILURES
}
fn default_stable_after_ms() -> u64 {
    DEFAULT_STABLE_AFTER_MS
}
fn default_shutdown_grace_ms() -> u64 {
    DEFAULT_SHUTDOWN_GRACE_MS
}

/// The validated configuration PID1 runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// TPM requirement.
    pub tpm: TpmMode,
    /// How long to wait for the TPM device.
    pub tpm_wait: Duration,
    /// Agent binary.
    pub agent_path: PathBuf,
    /// Agent arguments.
    pub agent_args: Vec<String>,
    /// Supervision settings.
    pub supervise: SuperviseConfig,
    /// Log level.
    pub log: String,
    /// The `cvm.*` parameters as given, in command-line order (measured verbatim).
    pub kernel_params: Vec<String>,
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is not valid JSON of the expected shape.
    #[error("configuration {path} is invalid")]
    Parse {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A `cvm.*` parameter this PID1 does not know.
    #[error("unknown kernel parameter {0} (known: cvm.tpm, cvm.agent, cvm.log)")]
    UnknownParam(String),
    /// A `cvm.*` parameter with a value that does not parse.
    #[error("kernel parameter {param}: {expected}")]
    BadParam {
        /// The parameter as written.
        param: String,
        /// What was expected.
        expected: &'static str,
    },
    /// A `cvm.*` parameter given twice.
    #[error("kernel parameter {0} is given more than once")]
    DuplicateParam(String),
    /// A setting that is out of range.
    #[error("configuration field {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: &'static str,
    },
}

const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

impl Config {
    /// Validate the file `bytes` (read from `path`) with the kernel command line applied.
    pub fn new(path: &str, bytes: &[u8], cmdline: &str) -> Result<Config, ConfigError> {
        let file: InitConfig =
            serde_json::from_slice(bytes).map_err(|source| ConfigError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let mut config = Config {
            tpm: file.tpm,
            tpm_wait: Duration::from_millis(file.tpm_wait_ms),
            agent_path: file.agent.path,
            agent_args: file.agent.args,
            supervise: file.supervise,
            log: file.log,
            kernel_params: Vec::new(),
        };
        let mut seen = Vec::new();
        for param in cmdline
            .split_ascii_whitespace()
            .filter(|p| p.starts_with("cvm."))
        {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            if seen.contains(&key) {
                return Err(ConfigError::DuplicateParam(key.to_owned()));
            }
            seen.push(key);
            let bad = |expected| ConfigError::BadParam {
                param: param.to_owned(),
                expected,
            };
            match key {
                "cvm.tpm" => {
                    config.tpm = match value {
                        "required" => TpmMode::Required,
                        "optional" => TpmMode::Optional,
                        "off" => TpmMode::Off,
                        _ => return Err(bad("expected required, optional or off")),
                    }
                }
                "cvm.agent" => {
                    if !value.starts_with('/') || value.contains('"') {
                        return Err(bad("expected an absolute path"));
                    }
                    config.agent_path = PathBuf::from(value);
                }
                "cvm.log" => {
                    if !LOG_LEVELS.contains(&value) {
                        return Err(bad("expected error, warn, info, debug or trace"));
                    }
                    config.log = value.to_owned();
                }
                _ => return Err(ConfigError::UnknownParam(key.to_owned())),
            }
            config.kernel_params.push(param.to_owned());
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if !self.agent_path.is_absolute() {
            return Err(ConfigError::Invalid {
                field: "agent.path",
                reason: "must be an absolute path",
            });
        }
        if !LOG_LEVELS.contains(&self.log.as_str()) {
            return Err(ConfigError::Invalid {
                field: "log",
                reason: "must be error, warn, info, debug or trace",
            });
        }
        let s = &self.supervise;
        if s.initial_backoff_ms == 0 || s.max_backoff_ms < s.initial_backoff_ms {
            return Err(ConfigError::Invalid {
                field: "supervise.max_backoff_ms",
                reason: "must be at least initial_backoff_ms, which must be positive",
            });
        }
        if s.max_failures == 0 {
            return Err(ConfigError::Invalid {
                field: "supervise.max_failures",
                reason: "must be at least 1",
            });
        }
        Ok(())
    }

    /// The measured form of the kernel parameters: space-joined, in order.
    pub fn kernel_params_text(&self) -> String {
        self.kernel_params.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str =
        r#"{"agent":{"path":"/usr/bin/cvm-agent","args":["--listen","0.0.0.0:8080"]}}"#;

    #[test]
    fn defaults_apply() {
        let c = Config::new("f", FILE.as_bytes(), "console=ttyS0 quiet").unwrap();
        assert_eq!(c.tpm, TpmMode::Required);
        assert_eq!(c.log, "info");
        assert_eq!(c.supervise.max_failures, DEFAULT_MAX_FAILURES);
        assert!(c.kernel_params.is_empty());
    }

    #[test]
    fn kernel_params_override_and_are_kept_in_order() {
        let c = Config::new(
            "f",
            FILE.as_bytes(),
            "console=ttyS0 cvm.log=debug cvm.tpm=optional cvm.agent=/bin/other",
        )
        .unwrap();
        assert_eq!(c.tpm, TpmMode::Optional);
        assert_eq!(c.log, "debug");
        assert_eq!(c.agent_path, PathBuf::from("/bin/other"));
        assert_eq!(
            c.kernel_params_text(),
            "cvm.log=debug cvm.tpm=optional cvm.agent=/bin/other"
        );
    }

    #[test]
    fn malformed_params_are_named() {
        for (cmdline, needle) in [
            ("cvm.tpm=maybe", "cvm.tpm=maybe"),
            ("cvm.tpm", "cvm.tpm"),
            ("cvm.agent=relative", "cvm.agent=relative"),
            ("cvm.log=loud", "cvm.log=loud"),
            ("cvm.shell=1", "cvm.shell"),
            ("cvm.tpm=off cvm.tpm=required", "more than once"),
        ] {
            let err = Config::new("f", FILE.as_bytes(), cmdline)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{cmdline}: {err}");
        }
    }

    #[test]
    fn bad_file_is_rejected() {
        let err = Config::new("/etc/cvm/init.json", b"{\"agent\":{}}", "").unwrap_err();
        assert!(err.to_string().contains("/etc/cvm/init.json"), "{err}");
        let unknown = r#"{"agent":{"path":"/a"},"shell":true}"#;
        assert!(Config::new("f", unknown.as_bytes(), "").is_err());
        let zero = r#"{"agent":{"path":"/a"},"supervise":{"max_failures":0}}"#;
        assert!(Config::new("f", zero.as_bytes(), "").is_err());
    }
}
