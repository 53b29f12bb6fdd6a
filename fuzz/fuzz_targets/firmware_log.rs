//! The firmware's TCG event log and the TDX CC event log from an untrusted guest:
//! parse and replay.
#![no_main]

use cvm_attest::tcg::FirmwareLog;
use cvm_attest::tdx::verifier::verify_ccel;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = FirmwareLog::parse(data) {
        let pcrs = log.replay_sha256();
        let _ = log.verify_replay(&pcrs);
        let _ = log.replay_sha384();
    }
    // The same format as the TDX CC event log.
    let _ = verify_ccel(data, &[[0; 48]; 4]);
});
