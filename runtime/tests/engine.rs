//! The per-workload runtime, `cvm-wasm` (the guest-profile binary the appliance runs),
//! driven as the agent drives it: each capability granted exactly as the policy says,
//! each limit stopping a misbehaving workload with a reason that names it, and every
//! escape attempt refused. The workloads are our own (`workloads/`), built for
//! wasm32-wasip2 (and the probe for wasm32-wasip1) by `./scripts/build-workloads`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cvm_runtime::launch::{LaunchSpec, Listen, StatusEvent, WasmKind};

/// target/<profile> of this test binary → target/.
fn target_root() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_owned()
}

fn artifact(path: PathBuf, how: &str) -> PathBuf {
    assert!(path.exists(), "{} is missing: {how}", path.display());
    path
}

fn cvm_wasm() -> PathBuf {
    artifact(
        target_root().join("guest/cvm-wasm"),
        "cargo build --profile guest -p cvm-runtime --features engine (./scripts/test does)",
    )
}

fn wasm(triple: &str, name: &str) -> PathBuf {
    artifact(
        target_root().join(format!("{triple}/release/{name}.wasm")),
        "./scripts/build-workloads",
    )
}

fn probe() -> PathBuf {
    wasm("wasm32-wasip2", "probe")
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    events: Vec<StatusEvent>,
}

impl Outcome {
    fn failed(&self) -> &str {
        self.events
            .iter()
            .find_map(|e| match e {
                StatusEvent::Failed { reason } => Some(reason.as_str()),
                _ => None,
            })
            .unwrap_or_else(|| {
                panic!(
                    "no failed event in {:?}; stderr {}",
                    self.events, self.stderr
                )
            })
    }
    fn exited(&self) -> Option<i32> {
        self.events.iter().find_map(|e| match e {
            StatusEvent::Exited { code } => Some(*code),
            _ => None,
        })
    }
}

/// A workload's folder: its policy, its state.
struct Workload {
    dir: tempfile::TempDir,
}

impl Workload {
    fn new(policy: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.yaml"), policy).unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        Self { dir }
    }
    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    fn spec(&self, wasm: &Path, http: Option<Listen>, status: Option<PathBuf>) -> LaunchSpec {
        LaunchSpec {
            name: "probe".into(),
            wasm: wasm.to_owned(),
            policy: self.dir.path().join("policy.yaml"),
            state: self.state(),
            http,
            status,
            confine: false,
        }
    }
    fn command(&self, spec: &LaunchSpec) -> Command {
        let mut c = Command::new(cvm_wasm());
        c.args(spec.to_args())
            .env_clear()
            .env("SECRET_OF_THE_HOST", "must not leak")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// Run a command workload to its end; status events come on stderr (no --status).
    fn run(&self, wasm: &Path) -> Outcome {
        let out = self.command(&self.spec(wasm, None, None)).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let events = stderr
            .lines()
            .filter_map(|l| serde_json::from_str::<StatusEvent>(l).ok())
            .collect();
        Outcome {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr,
            events,
        }
    }
}

#[test]
fn a_command_gets_exactly_its_args_and_env() {
    let w = Workload::new("args: [env]\nenv: {GREETING: hello, MODE: test}");
    let out = w.run(&probe());
    assert_eq!(
        out.stdout.trim(),
        "GREETING=hello,MODE=test",
        "{}",
        out.stderr
    );
    assert_eq!(out.exited(), Some(0));
    assert!(matches!(
        out.events[0],
        StatusEvent::Compiled {
            kind: WasmKind::CommandComponent,
            ..
        }
    ));
    let w = Workload::new("args: [args, one, 'two three']");
    assert_eq!(w.run(&probe()).stdout.trim(), "args one two three");
}

#[test]
fn a_preview1_module_runs_too() {
    let w = Workload::new("args: [print, from-p1]\npreopens: [{dir: d, guest: /d, access: rw}]");
    let out = w.run(&wasm("wasm32-wasip1", "probe"));
    assert_eq!(out.stdout.trim(), "from-p1", "{}", out.stderr);
    assert!(matches!(
        out.events[0],
        StatusEvent::Compiled {
            kind: WasmKind::Preview1Module,
            ..
        }
    ));
}

#[test]
fn the_exit_code_comes_back() {
    // Preview 1 carries the number; a preview 2 command says only success or failure.
    let out = Workload::new("args: [exit, '7']").run(&wasm("wasm32-wasip1", "probe"));
    assert_eq!(out.exited(), Some(7), "{}", out.stderr);
    assert_eq!(out.code, Some(7));
    let out = Workload::new("args: [exit, '7']").run(&probe());
    assert_eq!(out.exited(), Some(1), "{}", out.stderr);
    let out = Workload::new("args: [exit, '0']").run(&probe());
    assert_eq!(out.exited(), Some(0), "{}", out.stderr);
}

#[test]
fn preopens_grant_read_only_and_read_write_and_nothing_else() {
    let policy = "preopens:\n  - {dir: data, guest: /data, access: rw}\n  - {dir: conf, guest: /conf, access: ro}\n";
    let w = Workload::new(&format!("{policy}args: [write, /data/out.txt, kept]"));
    let out = w.run(&probe());
    assert_eq!(out.exited(), Some(0), "{}", out.stderr);
    assert_eq!(
        std::fs::read_to_string(w.state().join("data/out.txt")).unwrap(),
        "kept"
    );

    std::fs::write(w.state().join("conf/setting"), "blue").unwrap();
    for (args, expect_ok, needle) in [
        ("[read, /conf/setting]", true, "blue"),
        ("[write, /conf/setting, red]", false, "write /conf/setting"),
        (
            "[read, /data/../../policy.yaml]",
            false,
            "read /data/../../policy.yaml",
        ),
        (
            "[read, /data/../conf/setting]",
            false,
            "read /data/../conf/setting",
        ),
        ("[read, /etc/passwd]", false, "read /etc/passwd"),
        ("[ls, /]", false, "ls /"),
    ] {
        std::fs::write(
            w.dir.path().join("policy.yaml"),
            format!("{policy}args: {args}"),
        )
        .unwrap();
        let out = w.run(&probe());
        let ok = out.exited() == Some(0);
        assert_eq!(ok, expect_ok, "{args}: {} {}", out.stdout, out.stderr);
        let text = if ok { &out.stdout } else { &out.stderr };
        assert!(text.contains(needle), "{args}: {text}");
    }
    assert_eq!(
        std::fs::read_to_string(w.state().join("conf/setting")).unwrap(),
        "blue"
    );
}

#[test]
fn a_preopen_planted_as_a_symlink_out_of_the_state_is_refused() {
    let w = Workload::new(
        "args: [read, /data/passwd]\npreopens: [{dir: data, guest: /data, access: ro}]",
    );
    std::os::unix::fs::symlink("/etc", w.state().join("data")).unwrap();
    let out = w.run(&probe());
    assert!(
        out.failed().contains("outside the workload's state"),
        "{}",
        out.failed()
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn an_endless_loop_is_stopped_by_the_wall_clock_limit() {
    let out = Workload::new("args: [loop]\nlimits: {wall_ms: 300}").run(&probe());
    assert!(
        out.failed()
            .contains("wall-clock limit reached: the policy allows 300 ms"),
        "{}",
        out.failed()
    );
    assert_ne!(out.code, Some(0));
}

#[test]
fn a_workload_blocked_in_a_host_call_is_stopped_by_the_wall_clock_limit() {
    let started = Instant::now();
    let out = Workload::new("args: [sleep, '60000']\nlimits: {wall_ms: 300}").run(&probe());
    assert!(
        out.failed().contains("wall-clock limit reached"),
        "{}",
        out.failed()
    );
    // Not a timing assertion on performance: a 60 s sleep must not have run out.
    assert!(started.elapsed() < Duration::from_secs(50));
}

#[test]
fn an_endless_loop_is_stopped_by_the_fuel_limit() {
    let out = Workload::new("args: [loop]\nlimits: {fuel: 50000000}").run(&probe());
    assert!(
        out.failed()
            .contains("fuel limit reached: the policy allows 50000000 units"),
        "{}",
        out.failed()
    );
}

#[test]
fn unbounded_allocation_is_stopped_by_the_memory_limit() {
    let out = Workload::new("args: [alloc]\nlimits: {memory_mib: 24}").run(&probe());
    assert!(
        out.failed().contains("memory limit reached"),
        "{}",
        out.failed()
    );
    assert!(
        out.failed().contains("its policy allows 24 MiB"),
        "{}",
        out.failed()
    );
}

/// A TCP peer that answers one line.
fn echo_server() -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        if let Ok((mut s, _)) = l.accept() {
            let mut buf = [0u8; 5];
            let _ = s.read_exact(&mut buf);
            let _ = s.write_all(b"pong\n");
        }
    });
    (addr, t)
}

#[test]
fn connect_is_limited_to_the_allowlist() {
    let (addr, server) = echo_server();
    let allowed = Workload::new(&format!(
        "args: [connect, '{addr}']\nnetwork: {{connect: ['{addr}']}}"
    ));
    let out = allowed.run(&probe());
    assert_eq!(
        out.stdout.trim(),
        format!("connected {addr}: pong"),
        "{}",
        out.stderr
    );
    server.join().unwrap();

    let (other, _server) = echo_server();
    let denied = Workload::new(&format!(
        "args: [connect, '{other}']\nnetwork: {{connect: ['{addr}']}}"
    ));
    let out = denied.run(&probe());
    assert_eq!(out.exited(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("connect {other}")),
        "{}",
        out.stderr
    );
    assert!(
        out.events.contains(&StatusEvent::Denied {
            what: "connect".into(),
            detail: format!("{other} is not in the policy's network.connect"),
        }),
        "{:?}",
        out.events
    );

    // No network section: no TCP at all.
    let out = Workload::new(&format!("args: [connect, '{other}']")).run(&probe());
    assert_eq!(out.exited(), Some(1), "{}", out.stderr);
}

#[test]
fn malformed_or_mismatched_wasm_never_starts() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm at all").unwrap();
    let out = Workload::new("{}").run(&junk);
    assert!(out.failed().contains("preamble"), "{}", out.failed());

    let truncated = dir.path().join("truncated.wasm");
    let bytes = std::fs::read(probe()).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let out = Workload::new("{}").run(&truncated);
    assert!(
        out.failed().contains("not a valid component"),
        "{}",
        out.failed()
    );

    let hello = wasm("wasm32-wasip2", "hello");
    let out = Workload::new("{}").run(&hello);
    assert!(
        out.failed().contains("no `http` section"),
        "{}",
        out.failed()
    );
    let out = Workload::new("http: {port: 8080}").run(&probe());
    assert!(
        out.failed().contains("does not export wasi:http"),
        "{}",
        out.failed()
    );
    let out = Workload::new("limits: {memory_mib: 0}").run(&probe());
    assert!(
        out.failed().contains("limits.memory_mib"),
        "{}",
        out.failed()
    );
}

/// A served workload, its status socket read on a thread.
struct Served {
    child: Child,
    events: std::sync::mpsc::Receiver<StatusEvent>,
    addr: String,
    _w: Workload,
}

impl Served {
    fn start(w: Workload, wasm: &Path) -> Self {
        let sock = w.dir.path().join("status.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let spec = w.spec(
            wasm,
            Some(Listen::Tcp("127.0.0.1:0".parse().unwrap())),
            Some(sock),
        );
        let child = w.command(&spec).spawn().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            for line in BufReader::new(s).lines().map_while(Result::ok) {
                if tx.send(serde_json::from_str(&line).unwrap()).is_err() {
                    break;
                }
            }
        });
        let mut served = Self {
            child,
            events: rx,
            addr: String::new(),
            _w: w,
        };
        loop {
            match served.next_event() {
                StatusEvent::Ready { listen: Some(l) } => {
                    served.addr = l.strip_prefix("tcp:").unwrap().to_owned();
                    return served;
                }
                StatusEvent::Failed { reason } => panic!("workload failed: {reason}"),
                _ => {}
            }
        }
    }
    fn next_event(&self) -> StatusEvent {
        self.events
            .recv_timeout(Duration::from_secs(60))
            .expect("a status event")
    }
    fn request(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(&self.addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: w\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp[9..12].parse().unwrap();
        let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        // Chunked bodies: keep the text lines only.
        let text = body
            .lines()
            .filter(|l| !l.is_empty() && u64::from_str_radix(l.trim(), 16).is_err())
            .collect::<Vec<_>>()
            .join("\n");
        (status, text)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_example_service_answers_and_keeps_its_state() {
    let w = Workload::new(
        "env: {GREETING: bonjour}\npreopens: [{dir: data, guest: /data, access: rw}]\nhttp: {port: 8080}\nlimits: {memory_mib: 16, fuel: 1000000000, wall_ms: 5000}",
    );
    let state = w.state();
    let served = Served::start(w, &wasm("wasm32-wasip2", "hello"));
    assert_eq!(served.request("GET", "/healthz", "").0, 200);
    assert_eq!(
        served.request("GET", "/", ""),
        (200, "bonjour from a sealed workload, visit 1".into())
    );
    assert_eq!(
        served.request("GET", "/", "").1,
        "bonjour from a sealed workload, visit 2"
    );
    assert_eq!(served.request("POST", "/notes", "remember the milk").0, 201);
    assert_eq!(served.request("POST", "/notes", "").0, 400);
    assert_eq!(
        served.request("GET", "/notes", ""),
        (200, "remember the milk".into())
    );
    assert_eq!(served.request("DELETE", "/notes", "").0, 405);
    assert_eq!(served.request("GET", "/nope", "").0, 404);
    assert_eq!(
        std::fs::read_to_string(state.join("data/visits")).unwrap(),
        "2"
    );
}

#[test]
fn a_request_over_its_limit_fails_alone_and_the_service_keeps_serving() {
    let w = Workload::new(
        "preopens: [{dir: data, guest: /data, access: rw}]\nhttp: {port: 8080}\nlimits: {fuel: 100}",
    );
    let served = Served::start(w, &wasm("wasm32-wasip2", "hello"));
    for _ in 0..2 {
        let (status, text) = served.request("GET", "/", "");
        assert_eq!(status, 500);
        assert!(text.contains("fuel limit reached"), "{text}");
        loop {
            if let StatusEvent::RequestFailed { reason } = served.next_event() {
                assert!(reason.contains("fuel limit reached"), "{reason}");
                break;
            }
        }
    }
}
