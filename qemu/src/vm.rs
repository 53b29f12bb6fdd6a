//! One VM on the `qemu` platform: swtpm + QEMU, the serial console streamed to a log
//! file (and optionally to the terminal), and the guest's outcome read from PID1's and
//! the agent's status lines.

use std::fs;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use cvm_proto::console::{ConsoleEvent, parse_line};

use crate::platform::{Accel, Boot, Firmware, Platform, SpecError, VmSpec, command_line};
use crate::qmp;
use crate::swtpm::{Swtpm, SwtpmError};

/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";

/// What to boot and how.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// Accelerator.
    pub accel: Accel,
    /// vCPUs.
    pub cpus: u32,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// What the firmware boots.
    pub boot: Boot,
    /// Firmware code image.
    pub firmware_code: PathBuf,
    /// Firmware variable store template (copied per VM).
    pub firmware_vars: PathBuf,
    /// Whether the guest gets a vTPM.
    pub tpm: bool,
    /// Folder for this VM's files (vars copy, TPM state, sockets); must be private.
    pub run_dir: PathBuf,
    /// Folder of the swtpm local CA, shared across runs.
    pub ca_dir: PathBuf,
    /// Host port forwarded to the agent; `None` picks a free one.
    pub host_port: Option<u16>,
    /// More forwards (host port on 127.0.0.1, guest port): workloads' HTTP ports.
    pub forwards: Vec<(u16, u16)>,
    /// Serial console log file.
    pub serial_log: PathBuf,
    /// Echo the console to stderr as it arrives.
    pub echo: bool,
    /// Init-data (TOML) for the guest, through fw_cfg.
    pub initdata: Option<PathBuf>,
    /// Raw disk image for the guest's encrypted state.
    pub state_disk: Option<PathBuf>,
}

/// How the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// PID1 completed an orderly shutdown.
    PoweroffOk,
    /// PID1 reported a fatal error and powered off.
    Fatal(String),
    /// QEMU ended without a status line from PID1 (kernel panic, crash, kill).
    NoStatus(String),
}

impl Outcome {
    /// True for an orderly power-off.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::PoweroffOk)
    }
}

/// The VM could not be run or did not behave.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Invalid VM description.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The vTPM failed.
    #[error(transparent)]
    Swtpm(#[from] SwtpmError),
    /// QEMU could not be started.
    #[error("start {QEMU} failed (install qemu-system-x86: run ./scripts/setup)")]
    Spawn(#[source] std::io::Error),
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
    /// The guest ended before the agent was ready.
    #[error("guest stopped before the agent was ready: {0:?}")]
    EndedEarly(Outcome),
    /// Nothing happened in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
    /// QMP failed.
    #[error("power down through QMP failed")]
    Qmp(#[from] qmp::QmpError),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RunError {
    let path = path.to_owned();
    move |source| RunError::Io { op, path, source }
}

enum Msg {
    Event(ConsoleEvent),
    Eof(Vec<String>),
}

/// A running VM; QEMU and swtpm are killed on drop.
pub struct Vm {
    qemu: Child,
    _swtpm: Option<Swtpm>,
    events: Receiver<Msg>,
    qmp: PathBuf,
    host_port: u16,
    started: Instant,
    seen: Vec<ConsoleEvent>,
    tail: Option<Vec<String>>,
    exit: Option<ExitStatus>,
}

impl Vm {
    /// Start swtpm (when asked) and QEMU.
    pub fn start(opts: &VmOptions) -> Result<Vm, RunError> {
        fs::create_dir_all(&opts.run_dir).map_err(io("create", &opts.run_dir))?;
        let vars = opts.run_dir.join("OVMF_VARS.fd");
        fs::copy(&opts.firmware_vars, &vars)
            .map_err(io("copy firmware variables", &opts.firmware_vars))?;
        let swtpm = match opts.tpm {
            true => Some(Swtpm::start(&opts.run_dir.join("swtpm"), &opts.ca_dir)?),
            false => None,
        };
        let host_port = match opts.host_port {
            Some(p) => p,
            None => free_port().map_err(io("find a free port on", Path::new("127.0.0.1")))?,
        };
        let qmp = opts.run_dir.join("qmp.sock");
        let spec = VmSpec {
            platform: Platform::Qemu,
            accel: opts.accel,
            cpus: opts.cpus,
            memory_mib: opts.memory_mib,
            firmware: Firmware::Pflash {
                code: opts.firmware_code.clone(),
                vars,
            },
            boot: opts.boot.clone(),
            tpm_socket: swtpm.as_ref().map(|t| t.socket().to_owned()),
            host_port: Some(host_port),
            forwards: opts.forwards.clone(),
            qmp_socket: Some(qmp.clone()),
            initdata: opts.initdata.clone(),
            state_disk: opts.state_disk.clone(),
        };
        let args = command_line(&spec)?;
        let log = fs::File::create(&opts.serial_log).map_err(io("create", &opts.serial_log))?;
        let started = Instant::now();
        let mut qemu = Command::new(QEMU)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a Ctrl-C on the terminal reaches `cvm`, which powers
            // the guest down in order, instead of killing QEMU mid-flight.
            .process_group(0)
            .spawn()
            .map_err(RunError::Spawn)?;
        let (tx, events) = channel();
        let stdout = qemu.stdout.take();
        let stderr = qemu.stderr.take();
        let echo = opts.echo;
        // QEMU's own complaints (bad option, missing file) arrive on its stderr, read on
        // a thread of their own so neither pipe can fill up and stall QEMU.
        let stderr_lines = std::thread::spawn(move || {
            let mut lines = Vec::new();
            if let Some(err) = stderr {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    if echo {
                        eprintln!("qemu: {line}");
                    }
                    lines.push(format!("qemu: {line}"));
                }
            }
            lines
        });
        std::thread::spawn(move || {
            let mut log = log;
            let mut tail: Vec<String> = Vec::new();
            if let Some(out) = stdout {
                let mut reader = BufReader::new(out);
                let mut buf = Vec::new();
                while reader
                    .read_until(b'\n', &mut buf)
                    .map(|n| n > 0)
                    .unwrap_or(false)
                {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\n', '\r'])
                        .to_owned();
                    buf.clear();
                    let _ = writeln!(log, "{line}");
                    if echo {
                        eprintln!("{line}");
                    }
                    if let Some(event) = parse_line(&line) {
                        let _ = tx.send(Msg::Event(event));
                    }
                    tail.push(line);
                    if tail.len() > 20 {
                        tail.remove(0);
                    }
                }
            }
            for line in stderr_lines.join().unwrap_or_default() {
                let _ = writeln!(log, "{line}");
                tail.push(line);
            }
            let _ = tx.send(Msg::Eof(tail));
        });
        Ok(Vm {
            qemu,
            _swtpm: swtpm,
            events,
            qmp,
            host_port,
            started,
            seen: Vec::new(),
            tail: None,
            exit: None,
        })
    }

    /// The host port forwarded to the agent.
    pub fn host_port(&self) -> u16 {
        self.host_port
    }

    /// QEMU's process id.
    pub fn qemu_pid(&self) -> u32 {
        self.qemu.id()
    }

    /// The QMP socket (for a power-down from another thread).
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp
    }

    /// Time since QEMU was started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Wait for the agent's ready line; returns its guest listen address.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<String, RunError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(addr) = self.seen.iter().find_map(|e| match e {
                ConsoleEvent::AgentReady(a) => Some(a.clone()),
                _ => None,
            }) {
                return Ok(addr);
            }
            if self.tail.is_some() {
                return Err(RunError::EndedEarly(self.outcome()));
            }
            if !self.next_event(Some(deadline))? {
                return Err(RunError::Timeout(timeout, "the agent's ready line"));
            }
        }
    }

    /// Press the ACPI power button.
    pub fn powerdown(&self) -> Result<(), RunError> {
        qmp::execute(&self.qmp, "system_powerdown")?;
        Ok(())
    }

    /// Wait for QEMU to exit (without limit for `None`); on timeout kill it and report
    /// the timeout.
    pub fn wait_exit(&mut self, timeout: Option<Duration>) -> Result<Outcome, RunError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        while self.tail.is_none() {
            if !self.next_event(deadline)? {
                let _ = self.qemu.kill();
                return Err(RunError::Timeout(
                    timeout.unwrap_or_default(),
                    "the guest to power off",
                ));
            }
        }
        self.exit = self.qemu.wait().ok();
        Ok(self.outcome())
    }

    /// One console message, or false at the deadline.
    fn next_event(&mut self, deadline: Option<Instant>) -> Result<bool, RunError> {
        let msg = match deadline {
            Some(d) => self
                .events
                .recv_timeout(d.saturating_duration_since(Instant::now())),
            None => self
                .events
                .recv()
                .map_err(|_| RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(Msg::Event(e)) => self.seen.push(e),
            Ok(Msg::Eof(tail)) => self.tail = Some(tail),
            Err(RecvTimeoutError::Timeout) => return Ok(false),
            Err(RecvTimeoutError::Disconnected) => self.tail = Some(Vec::new()),
        }
        Ok(true)
    }

    fn outcome(&self) -> Outcome {
        for e in &self.seen {
            match e {
                ConsoleEvent::Fatal(cause) => return Outcome::Fatal(cause.clone()),
                ConsoleEvent::PoweroffOk => return Outcome::PoweroffOk,
                ConsoleEvent::AgentReady(_) => {}
            }
        }
        let tail = self.tail.as_deref().unwrap_or(&[]);
        let last = tail
            .iter()
            .rev()
            .find(|l| !l.trim().is_empty())
            .cloned()
            .unwrap_or_default();
        Outcome::NoStatus(match self.exit {
            Some(s) => format!("QEMU {s}; last console line: {last:?}"),
            None => format!("last console line: {last:?}"),
        })
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.qemu.kill();
            let _ = self.qemu.wait();
        }
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
