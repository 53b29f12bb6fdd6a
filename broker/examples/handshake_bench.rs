//! Key-release latency and throughput on loopback, printed as one JSON document:
//!
//! - `tpm`: the full handshake with real `tpm` evidence from swtpm (AK identity →
//!   credential challenge → activation → quote → token) plus one resource fetch, each
//!   time with a fresh TEE key and a fresh HTTPS connection, `HANDSHAKES` times
//!   (default 1000): median, p99, mean.
//! - `concurrent`: 64 clients at once doing the same with `sample` evidence (the broker
//!   in dev mode), so the figure is the broker's capacity rather than swtpm's.
//!
//! Run by `./scripts/bench`; needs swtpm.
#![allow(clippy::unwrap_used, missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../../attest/tests/common/mod.rs"]
mod swtpm;

use std::time::{Duration, Instant};

use common::{ALLOW_ALL, Options, start};
use cvm_kbs_client::attester::SampleAttester;
use cvm_kbs_client::attester::tpm::TpmRcarAttester;
use cvm_kbs_client::client::KbsClient;
use serde_json::json;

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn main() {
    let n: usize = std::env::var("HANDSHAKES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let concurrent_total: usize = std::env::var("CONCURRENT_TOTAL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64 * 20);

    // tpm: a real TPM and a broker that endorses its AK and has a matching reference.
    let ca = tempfile::tempdir().unwrap();
    let tpm = swtpm::swtpm_with_ek_cert(ca.path());
    let bundle = ca.path().join("bundle.pem");
    std::fs::write(&bundle, swtpm::ca_bundle(ca.path())).unwrap();
    let b = start(Options {
        ek_ca: Some(bundle),
        ..Options::default()
    });
    b.put_resource("cvm/state/key", &[7u8; 32]);
    let zero = "00".repeat(32);
    let reference = json!({"name": "bench", "values": {
        "platform": "qemu", "pcrs": {"4": zero, "9": zero, "15": zero}, "events": [],
        "runtime_events": [], "inputs": {"kernel_sha256": zero, "initrd_sha256": null,
        "cmdline": "", "memory_mib": 1024}}});
    let r = b.admin(
        "POST",
        "/kbs/v0/reference-values",
        reference.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200);
    let mut attester = TpmRcarAttester::new(&swtpm::tcti(&tpm), None, None).unwrap();
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        let mut c = KbsClient::new(b.client_config()).unwrap();
        c.attest(&mut attester).unwrap();
        let key = c.resource("cvm/state/key").unwrap();
        assert_eq!(key.len(), 32);
        times.push(t0.elapsed());
    }
    times.sort();
    let mean = times.iter().map(Duration::as_secs_f64).sum::<f64>() / n as f64 * 1000.0;

    // concurrent: the broker's own capacity, with sample evidence.
    let s = start(Options {
        allow_sample: true,
        ..Options::default()
    });
    s.put_resource("cvm/state/key", &[7u8; 32]);
    s.set_policy(ALLOW_ALL);
    let clients = 64;
    let per_client = concurrent_total.div_ceil(clients);
    let config = s.client_config();
    let t0 = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let config = config.clone();
            std::thread::spawn(move || {
                for _ in 0..per_client {
                    let mut c = KbsClient::new(config.clone()).unwrap();
                    c.attest(&mut SampleAttester).unwrap();
                    c.resource("cvm/state/key").unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let wall = t0.elapsed().as_secs_f64();
    let done = clients * per_client;

    let report = json!({
        "tpm": {
            "runs": n,
            "p50_ms": percentile(&times, 0.50),
            "p99_ms": percentile(&times, 0.99),
            "mean_ms": mean,
            "max_ms": percentile(&times, 1.0),
        },
        "concurrent": {
            "clients": clients,
            "handshakes": done,
            "seconds": wall,
            "handshakes_per_s": done as f64 / wall,
        },
    });
    println!("{report}");
}
