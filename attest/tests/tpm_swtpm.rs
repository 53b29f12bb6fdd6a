//! `TpmPcr` against a real TPM (swtpm over TCP), with tpm2-tools as the oracle.
#![cfg(feature = "tpm")]
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use cvm_attest::register::{RegisterError, TpmPcr};
use cvm_attest::{EventKind, EventLog, HashAlg, RuntimeLog};

struct Swtpm {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Two adjacent free ports: the tss2 swtpm TCTI talks to PORT and its control
/// channel on PORT+1.
fn free_port_pair() -> (u16, u16) {
    loop {
        let port = free_port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return (port, port + 1);
        }
    }
}

/// A fresh swtpm with sha256 and sha384 banks, powered on and started.
fn swtpm() -> Swtpm {
    let dir = tempfile::tempdir().unwrap();
    let setup = Command::new("swtpm_setup")
        .args(["--tpm2", "--tpmstate"])
        .arg(dir.path())
        .args(["--pcr-banks", "sha256,sha384"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("swtpm_setup (run ./scripts/setup)");
    assert!(setup.success());
    let (port, ctrl) = free_port_pair();
    let child = Command::new("swtpm")
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
        sleep(Duration::from_millis(20));
    }
    Swtpm {
        child,
        port,
        _dir: dir,
    }
}

fn tcti(t: &Swtpm) -> String {
    format!("swtpm:host=127.0.0.1,port={}", t.port)
}

/// PCR value as printed by tpm2_pcrread (independent of tss-esapi).
fn pcrread(t: &Swtpm, bank: &str, index: u32) -> String {
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

#[test]
fn extended_pcr_replays_and_matches_tpm2_tools() {
    let t = swtpm();
    let pcr = TpmPcr::open(&tcti(&t), 15).unwrap();
    assert_eq!(pcr.banks(), [HashAlg::Sha256, HashAlg::Sha384]);
    let mut log = RuntimeLog::new(Box::new(pcr), None);
    log.measure(EventKind::InitBinary, "/init", b"pid1 bytes")
        .unwrap();
    log.measure(EventKind::AgentBinary, "/usr/bin/cvm-agent", b"agent bytes")
        .unwrap();
    let snapshot: EventLog = log.log().clone();
    drop(log); // closes the TPM connection so tpm2-tools can use it

    for (alg, bank) in [(HashAlg::Sha256, "sha256"), (HashAlg::Sha384, "sha384")] {
        let actual = hex::decode(pcrread(&t, bank, 15)).unwrap();
        snapshot.verify_replay(alg, &actual).unwrap();
    }
    // A PCR we did not touch stays zero, and the log does not replay to it.
    let untouched = hex::decode(pcrread(&t, "sha256", 14)).unwrap();
    assert!(snapshot.verify_replay(HashAlg::Sha256, &untouched).is_err());
}

#[test]
fn read_back_through_tss_matches() {
    let t = swtpm();
    let mut pcr = TpmPcr::open(&tcti(&t), 16).unwrap();
    let before = pcr.read(HashAlg::Sha256).unwrap();
    cvm_attest::MeasurementRegister::extend(&mut pcr, &cvm_attest::Digests::of(b"x")).unwrap();
    let after = pcr.read(HashAlg::Sha256).unwrap();
    assert_eq!(
        after,
        HashAlg::Sha256.extend(&before, &HashAlg::Sha256.hash(b"x"))
    );
}

#[test]
fn bad_index_and_unreachable_tpm_are_errors() {
    assert!(matches!(
        TpmPcr::open("swtpm:host=127.0.0.1,port=1", 99),
        Err(RegisterError::BadIndex(99))
    ));
    let err = TpmPcr::open(&format!("swtpm:host=127.0.0.1,port={}", free_port()), 15)
        .err()
        .unwrap();
    assert!(err.to_string().contains("open TPM through swtpm:"), "{err}");
}
