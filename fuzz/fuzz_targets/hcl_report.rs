//! Azure HCL reports from an untrusted vTPM: parsing, the binding hash, the AK's JWK,
//! and the evidence JSON through the verifier.
#![no_main]

use cvm_attest::azure::AzSnpEvidence;
use cvm_attest::azure::parse_hcl_report;
use cvm_attest::azure::verifier::verify_az_snp;
use cvm_attest::snp::verifier::SnpPolicy;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(hcl) = parse_hcl_report(data) {
        let _ = hcl.expected_report_data();
        let _ = hcl.report_data();
        let _ = hcl.ak_rsa();
        let _ = hcl.user_data();
    }
    if let Ok(ev) = serde_json::from_slice::<AzSnpEvidence>(data) {
        let _ = verify_az_snp(&ev, b"nonce", &SnpPolicy::default());
    }
});
