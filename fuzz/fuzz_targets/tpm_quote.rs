//! TPM quote structures from an untrusted guest: TPMS_ATTEST and TPMT_SIGNATURE, and
//! the evidence JSON around them.
#![no_main]

use cvm_attest::tpm::TpmEvidence;
use cvm_attest::tpm::quote::{parse_quote, parse_signature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_quote(data);
    let _ = parse_signature(data);
    let _ = serde_json::from_slice::<TpmEvidence>(data);
});
