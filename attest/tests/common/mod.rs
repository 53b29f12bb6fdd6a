//! A real TPM for tests: swtpm over TCP, provisioned like the guest's vTPM.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

pub struct Swtpm {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two adjacent free ports: the tss2 swtpm TCTI talks to PORT and its control
/// channel on PORT+1.
pub fn free_port_pair() -> (u16, u16) {
    loop {
        let port = free_port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return (port, port + 1);
        }
    }
}

/// A fresh swtpm with sha256 and sha384 banks, powered on and started.
pub fn swtpm() -> Swtpm {
    start(None)
}

/// A fresh swtpm whose EK certificate is signed by the local CA in `ca_dir` (created
/// there by swtpm_localca on first use, as `cvm run` does).
pub fn swtpm_with_ek_cert(ca_dir: &std::path::Path) -> Swtpm {
    start(Some(ca_dir))
}

/// The CA bundle a verifier trusts for EK certificates made with `ca_dir`.
pub fn ca_bundle(ca_dir: &std::path::Path) -> Vec<u8> {
    let mut pem = std::fs::read(ca_dir.join("issuercert.pem")).unwrap();
    pem.extend(std::fs::read(ca_dir.join("swtpm-localca-rootca-cert.pem")).unwrap());
    pem
}

fn start(ca_dir: Option<&std::path::Path>) -> Swtpm {
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Command::new("swtpm_setup");
    setup
        .args(["--tpm2", "--tpmstate"])
        .arg(dir.path())
        .args(["--pcr-banks", "sha256,sha384"]);
    if let Some(ca) = ca_dir {
        let ca = ca.display();
        let d = dir.path().display();
        std::fs::write(
            dir.path().join("localca.conf"),
            format!("statedir = {ca}\nsigningkey = {ca}/signkey.pem\nissuercert = {ca}/issuercert.pem\ncertserial = {ca}/certserial\n"),
        )
        .unwrap();
        std::fs::write(dir.path().join("localca.options"), "").unwrap();
        std::fs::write(
            dir.path().join("setup.conf"),
            format!("create_certs_tool = swtpm_localca\ncreate_certs_tool_config = {d}/localca.conf\ncreate_certs_tool_options = {d}/localca.options\n"),
        )
        .unwrap();
        setup
            .args(["--create-ek-cert", "--config"])
            .arg(dir.path().join("setup.conf"));
    }
    let setup = setup
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("swtpm_setup (run ./scripts/setup)");
    assert!(setup.success());
    // Tests run on threads: without this lock two of them can pick the same free ports,
    // one swtpm fails to bind, and its test talks to the other's TPM (and both hang).
    static LISTENING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = LISTENING.lock().unwrap_or_else(|e| e.into_inner());
    let (port, ctrl) = free_port_pair();
    let mut child = Command::new("swtpm")
        .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
        .arg("--tpmstate")
        .arg(format!("dir={}", dir.path().display()))
        .args(["--server", &format!("type=tcp,port={port}")])
        .args(["--ctrl", &format!("type=tcp,port={ctrl}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("swtpm");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "swtpm did not listen");
        assert!(
            child.try_wait().unwrap().is_none(),
            "swtpm exited (port {port} or {ctrl} taken?)"
        );
        sleep(Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "swtpm exited: another process answered on port {port}"
    );
    Swtpm {
        child,
        port,
        _dir: dir,
    }
}

pub fn tcti(t: &Swtpm) -> String {
    format!("swtpm:host=127.0.0.1,port={}", t.port)
}

/// PCR value as printed by tpm2_pcrread (independent of tss-esapi).
pub fn pcrread(t: &Swtpm, bank: &str, index: u32) -> String {
    let out = Command::new("tpm2_pcrread")
        .args(["-T", &tcti(t), &format!("{bank}:{index}")])
        .output()
        .expect("tpm2_pcrread (run ./scripts/setup)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{index}")))
        .unwrap();
    line.split("0x").nth(1).unwrap().trim().to_ascii_lowercase()
}
