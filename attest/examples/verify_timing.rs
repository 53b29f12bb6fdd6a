//! Host-side verification times for each evidence type, on the recorded fixtures:
//! prints one JSON object of median microseconds (used by `./scripts/bench`).
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use cvm_attest::snp::verifier::{SnpPolicy, verify_snp};
use cvm_attest::snp::{CertTableEntry, CertType, SnpEvidence, parse_report};
use cvm_attest::tcg::FirmwareLog;
use cvm_attest::tdx::verifier::{QuoteCollateralV3, TdxPolicy, collateral_next_update, verify_tdx};
use cvm_attest::tpm::TpmEvidence;
use cvm_attest::tpm::verifier::verify_quote;

fn median_us(runs: usize, mut f: impl FnMut()) -> u128 {
    let mut t: Vec<u128> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_micros()
        })
        .collect();
    t.sort_unstable();
    t[runs / 2]
}

fn main() {
    // The fixtures folder is given at run time: a binary cargo reused from a build of
    // another checkout would otherwise look in that checkout.
    let data = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data").to_owned());
    let read = |p: &str| std::fs::read(format!("{data}/{p}")).unwrap();

    let tpm: serde_json::Value = serde_json::from_slice(&read("tpm/evidence.json")).unwrap();
    let nonce = hex::decode(tpm["nonce"].as_str().unwrap()).unwrap();
    let ev: TpmEvidence = serde_json::from_value(tpm["evidence"].clone()).unwrap();
    let ak =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &ev.ak_public).unwrap();
    let tpm_us = median_us(51, || {
        verify_quote(&ev, &nonce, std::slice::from_ref(&ak)).unwrap();
    });

    let log = read("ovmf-direct-boot.tcglog");
    let log_us = median_us(51, || {
        let l = FirmwareLog::parse(&log).unwrap();
        std::hint::black_box(l.replay_sha256());
    });

    let report = hex::decode(
        String::from_utf8(read("snp/report_milan.hex"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let snp = SnpEvidence {
        attestation_report: parse_report(&report).unwrap(),
        cert_chain: Some(vec![CertTableEntry {
            cert_type: CertType::VCEK,
            data: read("snp/vcek_milan.der"),
        }]),
    };
    let snp_us = median_us(21, || {
        verify_snp(&snp, &SnpPolicy::default()).unwrap();
    });

    let quote = read("tdx/tdx_quote");
    let collateral: QuoteCollateralV3 =
        serde_json::from_slice(&read("tdx/tdx_quote_collateral.json")).unwrap();
    let lenient = TdxPolicy {
        accepted_tcb_status: [
            "UpToDate",
            "SWHardeningNeeded",
            "ConfigurationNeeded",
            "ConfigurationAndSWHardeningNeeded",
            "OutOfDate",
            "OutOfDateConfigurationNeeded",
        ]
        .map(String::from)
        .to_vec(),
        ..TdxPolicy::default()
    };
    let now = collateral_next_update(&collateral).unwrap() - 86_400;
    let tdx_ok = verify_tdx(&quote, &collateral, now, &lenient).is_ok();
    let tdx_us = median_us(21, || {
        let _ = verify_tdx(&quote, &collateral, now, &lenient);
    });
    println!(
        "{}",
        serde_json::json!({
            "tpm_quote_us": tpm_us,
            "firmware_log_parse_replay_us": log_us,
            "snp_report_us": snp_us,
            "tdx_quote_us": tdx_us,
            "tdx_quote_verified": tdx_ok,
        })
    );
}
