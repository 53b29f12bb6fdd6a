//! A real TPM 2.0 for the guest: swtpm, provisioned with `swtpm_setup` (EK certificate
//! signed by a local CA, sha256 and sha384 PCR banks), listening on a Unix control
//! socket for QEMU's `tpm-emulator` backend. The process ends with its owner.

use std::fs;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// PCR banks the vTPM allocates.
pub const PCR_BANKS: &str = "sha256,sha384";

/// swtpm could not be provisioned or started.
#[derive(Debug, thiserror::Error)]
pub enum SwtpmError {
    /// A program is missing.
    #[error("{program} not found (install swtpm and swtpm-tools: run ./scripts/setup)")]
    NotInstalled {
        /// The program.
        program: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `swtpm_setup` failed.
    #[error("swtpm_setup failed (log: {log})")]
    Setup {
        /// Its log.
        log: PathBuf,
    },
    /// swtpm exited or never created its socket.
    #[error("swtpm did not start (log: {log})")]
    Start {
        /// Its log.
        log: PathBuf,
    },
    /// File system error.
    #[error("{op} {path} failed")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SwtpmError {
    let path = path.to_owned();
    move |source| SwtpmError::Io { op, path, source }
}

/// A running swtpm; killed on drop.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    socket: PathBuf,
}

impl Swtpm {
    /// Provision a fresh TPM in `state` (a new, empty folder) with certificates signed
    /// by the local CA kept in `ca_dir` (created on first use, reused afterwards so
    /// verifiers can pin it), then start swtpm on a control socket inside `state`.
    pub fn start(state: &Path, ca_dir: &Path) -> Result<Self, SwtpmError> {
        fs::create_dir_all(state).map_err(io("create", state))?;
        fs::create_dir_all(ca_dir).map_err(io("create", ca_dir))?;
        let conf = write_config(state, ca_dir)?;
        let tpm_dir = state.join("tpm");
        fs::create_dir_all(&tpm_dir).map_err(io("create", &tpm_dir))?;
        let setup_log = state.join("swtpm_setup.log");
        let log_file = fs::File::create(&setup_log).map_err(io("create", &setup_log))?;
        let status = Command::new("swtpm_setup")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(&tpm_dir)
            .args(["--create-ek-cert", "--create-platform-cert", "--lock-nvram"])
            .args(["--pcr-banks", PCR_BANKS])
            .arg("--config")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(io("open", &setup_log))?)
            .stderr(log_file)
            .status()
            .map_err(|source| SwtpmError::NotInstalled {
                program: "swtpm_setup",
                source,
            })?;
        if !status.success() {
            return Err(SwtpmError::Setup { log: setup_log });
        }

        let socket = state.join("swtpm.sock");
        let log = state.join("swtpm.log");
        let child = Command::new("swtpm")
            .arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", tpm_dir.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .arg("--log")
            .arg(format!("file={},level=1", log.display()))
            // Exit when QEMU closes the control channel.
            .arg("--terminate")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| SwtpmError::NotInstalled {
                program: "swtpm",
                source,
            })?;
        let mut tpm = Swtpm { child, socket };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !tpm.socket.exists() {
            let exited = matches!(tpm.child.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                return Err(SwtpmError::Start { log });
            }
            sleep(Duration::from_millis(20));
        }
        Ok(tpm)
    }

    /// The control socket QEMU connects to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// swtpm_setup and swtpm_localca read their settings from files; ours point the CA at
/// `ca_dir` instead of the system-wide /var/lib/swtpm-localca.
fn write_config(state: &Path, ca_dir: &Path) -> Result<PathBuf, SwtpmError> {
    let localca_conf = state.join("swtpm-localca.conf");
    let localca_opts = state.join("swtpm-localca.options");
    let setup_conf = state.join("swtpm_setup.conf");
    let ca = ca_dir.display();
    let files = [
        (
            &localca_conf,
            format!(
                "statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n"
            ),
        ),
        (
            &localca_opts,
            "--platform-manufacturer cvm\n--platform-version 2.1\n--platform-model QEMU\n"
                .to_owned(),
        ),
        (
            &setup_conf,
            format!(
                "create_certs_tool = swtpm_localca\ncreate_certs_tool_config = {}\ncreate_certs_tool_options = {}\nactive_pcr_banks = {PCR_BANKS}\n",
                localca_conf.display(),
                localca_opts.display()
            ),
        ),
    ];
    for (path, text) in files {
        fs::write(path, text).map_err(io("write", path))?;
    }
    Ok(setup_conf)
}
