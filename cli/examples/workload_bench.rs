//! Workload benchmarks against a booted appliance (`./scripts/bench` boots it): the
//! client's attestation, deploy-to-first-response of the example, per-request latency
//! and throughput through the agent's port against the same component served by
//! `cvm-wasm` (wasmtime) on the host, then as many idle `wasi:http` workloads as the
//! guest admits, with the agent's memory before and after. Prints one JSON document.
//!
//! Usage: workload_bench --agent ADDR --reference FILE --owner-key FILE --broker-url URL
//!   --broker-dir DIR --wasm hello.wasm --policy policy.yaml --port HOSTPORT
//!   --runtime cvm-wasm [--seconds S] [--max N] [--budget-seconds S]

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use cvm_cli::agent_client::{self, Agent};
use cvm_cli::commands::broker::{Admin, AdminArgs, random_key};
use cvm_cli::commands::workload::sign_request;
use cvm_runtime::bundle::owner::OwnerKey;
use cvm_runtime::bundle::{SealRequest, seal};
use cvm_runtime::launch::{LaunchSpec, Listen};
use cvm_runtime::policy::WorkloadPolicy;
use serde_json::json;

fn main() -> anyhow::Result<()> {
    let args: HashMap<String, String> = std::env::args()
        .skip(1)
        .collect::<Vec<_>>()
        .chunks(2)
        .map(|c| (c[0].trim_start_matches("--").to_owned(), c[1].clone()))
        .collect();
    let arg = |k: &str| {
        args.get(k)
            .cloned()
            .with_context(|| format!("--{k} missing"))
    };
    let addr = arg("agent")?;
    let reference: cvm_image::measure::qemu::QemuReference =
        serde_json::from_slice(&std::fs::read(arg("reference")?)?)?;
    let owner = OwnerKey::from_pem(&std::fs::read_to_string(arg("owner-key")?)?)?;
    let admin = Admin::connect(&AdminArgs {
        url: arg("broker-url")?,
        dir: Some(arg("broker-dir")?.into()),
        ca: None,
        admin_key: None,
    })?;
    let wasm = std::fs::read(arg("wasm")?)?;
    let policy_path = PathBuf::from(arg("policy")?);
    let port: u16 = arg("port")?.parse()?;
    let runtime = PathBuf::from(arg("runtime")?);
    let seconds: u64 = args.get("seconds").map_or(Ok(5), |s| s.parse())?;
    let max: usize = args.get("max").map_or(Ok(1000), |s| s.parse())?;
    let budget = Duration::from_secs(args.get("budget-seconds").map_or(Ok(1800), |s| s.parse())?);

    // The client's side of attested TLS, as every cvm deploy/ps/logs does it.
    let t = Instant::now();
    let trust = cvm_cli::commands::attest::ek_trust(None)?;
    let (report, agent) = cvm_cli::commands::attest::attest_guest(&addr, &trust, Some(&reference))?;
    anyhow::ensure!(report.ok, "attestation failed: {:?}", report.checks);
    let attest_ms = t.elapsed().as_millis();
    let idle = metrics(&agent, &owner)?;

    // Deploy-to-first-response, cold: the example's first deploy in this guest.
    let policy = WorkloadPolicy::from_yaml(&std::fs::read_to_string(&policy_path)?)?;
    let bundle = seal_one(&admin, &owner, &wasm, "hello", policy)?;
    let t = Instant::now();
    let status = deploy(&agent, &bundle)?;
    let deploy_ms = t.elapsed().as_millis();
    let guest_addr = format!("127.0.0.1:{port}");
    let first = loop {
        if let Ok((200, _)) = Client::connect(&guest_addr).and_then(|mut c| c.get("/healthz")) {
            break t.elapsed().as_millis();
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "hello never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    // The same component on the host, served by cvm-wasm (wasmtime 48, same policy).
    let host = HostServed::start(&runtime, &wasm, &policy_path)?;
    let latency_guest = latency(&guest_addr, 50)?;
    let latency_host = latency(&host.addr, 50)?;
    let rps_guest = throughput(&guest_addr, 4, Duration::from_secs(seconds))?;
    let rps_host = throughput(&host.addr, 4, Duration::from_secs(seconds))?;
    drop(host);

    // Enforcement overhead, same guest run: the example under its policy (mode
    // enforce: BPF LSM rules + Landlock) against the same bundle with mode audit
    // (programs report, nothing is denied, no Landlock), on /healthz and on /notes,
    // which opens a file of its preopen per request.
    post(&guest_addr, "/notes", "benchmark")?;
    let d = Duration::from_secs(seconds);
    let enforce_health = throughput_of(&guest_addr, "/healthz", 4, d)?;
    let enforce_notes = throughput_of(&guest_addr, "/notes", 4, d)?;
    remove(&agent, &owner, "hello")?;
    let mut audit_policy = WorkloadPolicy::from_yaml(&std::fs::read_to_string(&policy_path)?)?;
    audit_policy.mode = cvm_runtime::policy::Mode::Audit;
    deploy(
        &agent,
        &seal_one(&admin, &owner, &wasm, "hello", audit_policy)?,
    )?;
    wait_healthy(&guest_addr)?;
    post(&guest_addr, "/notes", "benchmark")?;
    let audit_health = throughput_of(&guest_addr, "/healthz", 4, d)?;
    let audit_notes = throughput_of(&guest_addr, "/notes", 4, d)?;

    // Density: idle wasi:http workloads until the guest refuses one (or the budget ends).
    let before = metrics(&agent, &owner)?;
    let started = Instant::now();
    let mut deployed = 0usize;
    let mut deploy_times = Vec::new();
    let mut stop = String::from("reached --max");
    for i in 0..max {
        if started.elapsed() > budget {
            stop = format!("time budget of {} s spent", budget.as_secs());
            break;
        }
        let policy = WorkloadPolicy::from_yaml(&format!(
            "http: {{port: {}}}\nlimits: {{memory_mib: 16}}\n",
            9000 + i
        ))?;
        let bundle = seal_one(&admin, &owner, &wasm, &format!("idle-{i}"), policy)?;
        let t = Instant::now();
        match deploy(&agent, &bundle) {
            Ok(_) => {
                deployed += 1;
                deploy_times.push(t.elapsed().as_millis());
            }
            Err(e) => {
                stop = format!("{e:#}");
                break;
            }
        }
        if i % 25 == 24 {
            eprintln!("  {deployed} idle workloads deployed");
        }
    }
    let after = metrics(&agent, &owner)?;
    deploy_times.sort_unstable();
    let mib = |v: Option<f64>| v.map(|b| b / f64::from(1 << 20));
    let per_workload = match (
        before.get("cvm_guest_memory_available_bytes"),
        after.get("cvm_guest_memory_available_bytes"),
    ) {
        (Some(b), Some(a)) if deployed > 0 => Some((b - a) / deployed as f64 / f64::from(1 << 20)),
        _ => None,
    };
    let out = json!({
        "client_attest_ms": attest_ms,
        "deploy_ms": deploy_ms,
        "compile_ms": status.compile_ms,
        "deploy_to_first_response_ms": first,
        "request_p50_us": {"guest_via_agent": latency_guest, "host_cvm_wasm": latency_host},
        "requests_per_s": {"guest_via_agent": rps_guest, "host_cvm_wasm": rps_host},
        "enforcement_requests_per_s": {
            "healthz": {"enforce": enforce_health, "audit": audit_health},
            "notes": {"enforce": enforce_notes, "audit": audit_notes},
        },
        "idle_workloads": deployed + 1,
        "density_stop": stop,
        "idle_deploy_p50_ms": deploy_times.get(deploy_times.len() / 2),
        "agent_rss_mib": {
            "idle": mib(idle.get("cvm_agent_memory_bytes").copied()),
            "at_max": mib(after.get("cvm_agent_memory_bytes").copied()),
        },
        "guest_available_mib": {
            "idle": mib(idle.get("cvm_guest_memory_available_bytes").copied()),
            "before_density": mib(before.get("cvm_guest_memory_available_bytes").copied()),
            "at_max": mib(after.get("cvm_guest_memory_available_bytes").copied()),
        },
        "mib_per_idle_workload": per_workload,
    });
    println!("{out}");
    Ok(())
}

/// Seal `wasm` as `name` under `policy`, its content key stored in the broker.
fn seal_one(
    admin: &Admin,
    owner: &OwnerKey,
    wasm: &[u8],
    name: &str,
    policy: WorkloadPolicy,
) -> anyhow::Result<Vec<u8>> {
    let key = random_key(cvm_runtime::bundle::KEY_LEN)?;
    let resource = format!("default/{name}/key");
    let state = if policy.preopens.is_empty() {
        None
    } else {
        let r = format!("default/{name}/state-key");
        admin.create_resource(&r, &random_key(32)?)?;
        Some(r)
    };
    let bundle = seal(
        &SealRequest {
            name,
            version: "0.1.0",
            wasm,
            policy,
            key_resource: &resource,
            state_key_resource: state.as_deref(),
        },
        owner,
        &key,
    )?;
    admin.put_resource(&resource, &key)?;
    Ok(bundle)
}

fn deploy(agent: &Agent, bundle: &[u8]) -> anyhow::Result<cvm_proto::agent::WorkloadStatus> {
    let body = agent_client::request(
        agent,
        "POST",
        "/v1/workloads",
        bundle,
        "application/cbor",
        &[],
    )?;
    Ok(agent_client::decode(
        &agent.addr,
        "POST",
        "/v1/workloads",
        &body,
    )?)
}

/// `DELETE /v1/workloads/NAME`, owner-signed.
fn remove(agent: &Agent, owner: &OwnerKey, name: &str) -> anyhow::Result<()> {
    let path = format!("/v1/workloads/{name}");
    let headers = sign_request(owner, agent, "DELETE", &path, b"")?;
    agent_client::request(agent, "DELETE", &path, b"", "application/json", &headers)?;
    Ok(())
}

/// Wait until the example answers `GET /healthz`.
fn wait_healthy(addr: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        if let Ok((200, _)) = Client::connect(addr).and_then(|mut c| c.get("/healthz")) {
            return Ok(());
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(60),
            "hello never answered"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `POST path` with `body` (one request, its own connection).
fn post(addr: &str, path: &str, body: &str) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr)?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    anyhow::ensure!(answer.starts_with("HTTP/1.1 20"), "POST {path}: {answer}");
    Ok(())
}

/// The agent's unlabelled gauges, by name.
fn metrics(agent: &Agent, owner: &OwnerKey) -> anyhow::Result<HashMap<String, f64>> {
    let headers = sign_request(owner, agent, "GET", "/v1/metrics", b"")?;
    let body = agent_client::request(agent, "GET", "/v1/metrics", b"", "text/plain", &headers)?;
    Ok(String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.contains('{'))
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_owned(), v.parse().ok()?))
        })
        .collect())
}

/// Median microseconds of `n` sequential GET /healthz on one keep-alive connection.
fn latency(addr: &str, n: usize) -> anyhow::Result<u128> {
    let mut c = Client::connect(addr)?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let (code, _) = c.get("/healthz")?;
        anyhow::ensure!(code == 200, "GET /healthz answered {code}");
        times.push(t.elapsed().as_micros());
    }
    times.sort_unstable();
    Ok(times[n / 2])
}

/// Requests per second from `conns` keep-alive connections for `d`.
fn throughput(addr: &str, conns: usize, d: Duration) -> anyhow::Result<f64> {
    throughput_of(addr, "/healthz", conns, d)
}

/// Requests per second of `GET path` from `conns` keep-alive connections for `d`.
fn throughput_of(addr: &str, path: &str, conns: usize, d: Duration) -> anyhow::Result<f64> {
    let start = Instant::now();
    let handles: Vec<_> = (0..conns)
        .map(|_| {
            let addr = addr.to_owned();
            let path = path.to_owned();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                let mut c = Client::connect(&addr)?;
                let mut n = 0;
                while start.elapsed() < d {
                    let (code, _) = c.get(&path)?;
                    anyhow::ensure!(code == 200, "GET {path} answered {code}");
                    n += 1;
                }
                Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for h in handles {
        total += h.join().expect("load thread")?;
    }
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// A keep-alive HTTP/1.1 client (Content-Length or chunked answers).
struct Client {
    r: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: &str) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            r: BufReader::new(s),
        })
    }

    fn get(&mut self, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
        write!(
            self.r.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n"
        )?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let code = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let (mut len, mut chunked) = (None, false);
        loop {
            line.clear();
            self.r.read_line(&mut line)?;
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().ok();
            }
            if l.starts_with("transfer-encoding:") && l.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.r.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim(), 16)
                    .map_err(|_| std::io::Error::other("bad chunk size"))?;
                let mut chunk = vec![0; n + 2];
                self.r.read_exact(&mut chunk)?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            body.resize(len.unwrap_or(0), 0);
            self.r.read_exact(&mut body)?;
        }
        Ok((code, body))
    }
}

/// The example served by `cvm-wasm` on the host's loopback.
struct HostServed {
    child: std::process::Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl HostServed {
    fn start(runtime: &Path, wasm: &[u8], policy: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let state = dir.path().join("state");
        std::fs::create_dir_all(state.join("data"))?;
        std::fs::write(dir.path().join("app.wasm"), wasm)?;
        let spec = LaunchSpec {
            name: "hello".into(),
            wasm: dir.path().join("app.wasm"),
            policy: policy.to_owned(),
            state,
            http: Some(Listen::Tcp("127.0.0.1:0".parse()?)),
            status: None,
            confine: false,
        };
        let mut child = Command::new(runtime)
            .args(spec.to_args())
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {}", runtime.display()))?;
        let stderr = child.stderr.take().context("stderr")?;
        for line in BufReader::new(stderr).lines() {
            let line = line?;
            if let Ok(cvm_runtime::launch::StatusEvent::Ready { listen: Some(l) }) =
                serde_json::from_str(&line)
            {
                let addr = l.trim_start_matches("tcp:").to_owned();
                return Ok(Self {
                    child,
                    addr,
                    _dir: dir,
                });
            }
        }
        let _ = child.kill();
        bail!("cvm-wasm on the host never became ready")
    }
}

impl Drop for HostServed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
