//! SEV-SNP evidence from an untrusted guest or host: the 1184-byte report, the host's
//! certificate table, and the evidence JSON, through the full verifier.
#![no_main]

use cvm_attest::snp::SnpEvidence;
use cvm_attest::snp::attester::parse_cert_table;
use cvm_attest::snp::parse_report;
use cvm_attest::snp::verifier::{SnpPolicy, verify_snp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_report(data);
    let _ = parse_cert_table(data);
    if let Ok(ev) = serde_json::from_slice::<SnpEvidence>(data) {
        let _ = verify_snp(&ev, &SnpPolicy::default());
    }
});
