//! The runtime event log as a verifier receives it: parse, then replay both banks.
#![no_main]

use cvm_attest::{EventLog, HashAlg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = EventLog::parse(data) {
        let _ = log.replay(HashAlg::Sha256);
        let _ = log.replay(HashAlg::Sha384);
    }
});
