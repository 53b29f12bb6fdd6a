//! The firmware's TCG event log from an untrusted guest: parse and replay.
#![no_main]

use cvm_attest::tcg::FirmwareLog;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = FirmwareLog::parse(data) {
        let pcrs = log.replay_sha256();
        let _ = log.verify_replay(&pcrs);
    }
});
