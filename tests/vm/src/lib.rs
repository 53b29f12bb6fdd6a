//! VM test harness: builds the image once, boots it under QEMU TCG with swtpm through
//! `cvm run`, and drives the guest through the `cvm` CLI.
//!
//! Opt-in: the tests do nothing unless `CVM_VM_TESTS=1`, so a bare `cargo test` stays
//! hermetic; `./scripts/test` and CI always set it. `CVM_TEST_IMAGE` names an image
//! folder built beforehand (otherwise the harness runs `cvm build` itself, once).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod badge;
pub mod relay;
pub mod workload;

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

/// Whether VM tests are enabled; prints why not when they are not.
pub fn enabled() -> bool {
    let on = std::env::var("CVM_VM_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("VM tests disabled: set CVM_VM_TESTS=1 (./scripts/test does)");
    }
    on
}

/// The cargo target folder the test binary runs from (`target/release`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    // target/release/deps/<test> → target/release
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned()
}

/// A guest binary as `cvm build` takes it by default: `$CVM_GUEST_BIN/<name>`, else
/// the `guest` cargo profile's folder beside the test's own.
pub fn guest_bin(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("CVM_GUEST_BIN") {
        return PathBuf::from(dir).join(name);
    }
    target_dir()
        .parent()
        .expect("target root")
        .join("guest")
        .join(name)
}

/// The `cvm` binary under test.
pub fn cvm_bin() -> PathBuf {
    std::env::var_os("CVM_BIN").map_or_else(|| target_dir().join("cvm"), PathBuf::from)
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Run `cvm` with `args` to completion.
pub fn cvm(args: &[&str]) -> Output {
    Command::new(cvm_bin())
        .args(args)
        .output()
        .expect("run cvm")
}

/// The image folder all VM tests boot (built once per test process).
pub fn image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        if let Some(dir) = std::env::var_os("CVM_TEST_IMAGE") {
            return PathBuf::from(dir);
        }
        let dir = std::env::temp_dir().join(format!("cvm-vm-tests-{}", std::process::id()));
        let out = dir.join("image");
        let o = cvm(&["build", "--out", out.to_str().expect("utf-8 path")]);
        assert!(
            o.status.success(),
            "cvm build failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    })
}

/// A guest booted by `cvm run --json`.
pub struct Guest {
    child: Child,
    /// Host address of the agent, `127.0.0.1:PORT`.
    pub agent: String,
    stderr: Receiver<String>,
    stderr_seen: Vec<String>,
}

/// How long a TCG boot may take before the harness gives up.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

impl Guest {
    /// Start `cvm run --json` with `extra` arguments; does not wait for readiness.
    pub fn start(extra: &[&str]) -> Guest {
        Guest::start_image(image(), extra)
    }

    /// [`Guest::start`] with another image folder.
    pub fn start_image(image: &Path, extra: &[&str]) -> Guest {
        let mut child = Command::new(cvm_bin())
            .args([
                "run",
                "--json",
                "--image",
                image.to_str().expect("utf-8 path"),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start cvm run");
        let (tx, stderr) = channel();
        let err = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[cvm run] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Guest {
            child,
            agent: String::new(),
            stderr,
            stderr_seen: Vec::new(),
        }
    }

    /// Boot and wait for the agent; panics with `cvm run`'s output if it never comes.
    pub fn boot(extra: &[&str]) -> Guest {
        Guest::start(extra).wait_ready()
    }

    /// Wait for the agent's ready line (after [`Guest::start`]).
    pub fn wait_ready(self) -> Guest {
        let mut g = self;
        let prefix = "cvm: agent ready at https://";
        loop {
            match g.stderr.recv_timeout(BOOT_TIMEOUT) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix(prefix) {
                        g.agent = rest
                            .split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned();
                        return g;
                    }
                    g.stderr_seen.push(line);
                }
                Err(_) => {
                    // Drop sends SIGTERM: cvm run powers the guest down or kills QEMU.
                    panic!(
                        "guest never became ready; cvm run said:\n{}",
                        g.stderr_seen.join("\n")
                    );
                }
            }
        }
    }

    /// SIGTERM `cvm run` (it presses the guest's power button) and wait for its report.
    pub fn shutdown(self) -> (i32, Value) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("signal cvm run");
        self.wait()
    }

    /// Pull the plug: SIGKILL the guest's QEMU (a crash at whatever step the guest is
    /// in: nothing it has not written to its disk survives) and wait for `cvm run`.
    pub fn crash(self) -> (i32, Value) {
        let parent = self.child.id();
        let qemu = std::fs::read_dir("/proc")
            .expect("list /proc")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                // `PID (COMM) STATE PPID …`: COMM may hold spaces, so split after it.
                let Some((head, rest)) = stat.rsplit_once(") ") else {
                    return false;
                };
                head.contains("(qemu-system")
                    && rest.split_whitespace().nth(1) == Some(parent.to_string().as_str())
            })
            .expect("cvm run has a QEMU child");
        kill(Pid::from_raw(qemu as i32), Signal::SIGKILL).expect("kill QEMU");
        self.wait()
    }

    /// Wait for `cvm run` to exit on its own; returns its exit code and JSON report.
    pub fn wait(mut self) -> (i32, Value) {
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            out.read_to_string(&mut stdout)
                .expect("read cvm run stdout");
        }
        let status = self.child.wait().expect("wait for cvm run");
        let report = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("cvm run printed no JSON report ({e}): {stdout:?}"));
        (status.code().unwrap_or(-1), report)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

/// `GET path` on the agent at `agent` over its TLS (key not checked: public answers),
/// as JSON; panics unless it answers 2xx.
pub fn agent_get(agent: &str, path: &str) -> Value {
    let out = Command::new("curl")
        .args(["-sfk", &format!("https://{agent}{path}")])
        .output()
        .expect("run curl");
    assert!(out.status.success(), "GET {path} failed");
    serde_json::from_slice(&out.stdout).expect("a JSON answer")
}

/// Parse a command's stdout as JSON, panicking with its stderr when it failed.
pub fn json_ok(o: &Output) -> Value {
    assert!(
        o.status.success(),
        "command failed ({}): {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("JSON on stdout")
}

/// A key broker started with `cvm broker serve --json` (stopped on drop).
pub struct Broker {
    child: Child,
    /// `https://127.0.0.1:PORT`.
    pub url: String,
    /// The CA to pin.
    pub ca: PathBuf,
    /// The broker's folder.
    pub dir: PathBuf,
}

impl Broker {
    /// Serve from `dir` on a free loopback port.
    pub fn start(dir: &Path) -> Broker {
        Broker::start_at(dir, "127.0.0.1:0")
    }

    /// Serve from `dir` on `listen` (HOST:PORT).
    pub fn start_at(dir: &Path, listen: &str) -> Broker {
        let mut child = Command::new(cvm_bin())
            .args(["broker", "serve", "--json", "--listen", listen, "--dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start cvm broker serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("read the broker's ready line");
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("broker printed no ready line ({e}): {line:?}"));
        Broker {
            child,
            url: ready["url"].as_str().expect("url").to_owned(),
            ca: PathBuf::from(ready["ca"].as_str().expect("ca")),
            dir: dir.to_owned(),
        }
    }

    /// Stop it (SIGTERM) and start it again from its folder on the same port: the
    /// broker an appliance could not reach for a while. `down` runs in between.
    pub fn outage<T>(&mut self, down: impl FnOnce() -> T) -> T {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        let _ = self.child.wait();
        let result = down();
        let listen = self.url.trim_start_matches("https://").to_owned();
        let dir = self.dir.clone();
        *self = Broker::start_at(&dir, &listen);
        result
    }

    /// The URL the guest uses (QEMU user networking: the host is 10.0.2.2).
    pub fn guest_url(&self) -> String {
        self.url.replace("127.0.0.1", "10.0.2.2")
    }

    /// Run `cvm broker <args>` against this broker (admin commands).
    pub fn admin(&self, args: &[&str]) -> Output {
        let mut full: Vec<&str> = vec!["broker"];
        full.extend_from_slice(args);
        let dir = self.dir.to_str().expect("utf-8 path");
        full.extend_from_slice(&["--url", &self.url, "--dir", dir]);
        cvm(&full)
    }

    /// The audit log so far.
    pub fn audit_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // One that already ended (an outage) is not signalled: its pid may be reused.
        if let Ok(None) = self.child.try_wait() {
            let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
            let _ = self.child.wait();
        }
    }
}
