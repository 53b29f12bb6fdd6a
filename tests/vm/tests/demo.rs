//! The main job, `cvm demo`, end to end on the test image: it starts the broker,
//! registers the predicted PCRs, boots; PID1 attests and receives the key to its
//! encrypted state (created), the demo verifies the event log and attests the guest
//! against the prediction, powers off, boots again (state unlocked), powers off.

#![allow(clippy::unwrap_used)]

use cvm_vm_tests::{cvm, enabled, image};

#[test]
fn demo_releases_keys_attests_and_powers_off() {
    if !enabled() {
        return;
    }
    let out = cvm(&["demo", "--image", image().to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cvm demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "[ok] attestation key",
        "[ok] quote",
        "[ok] PCR 4 = reference",
        "[ok] PCR 9 = reference",
        "[ok] PCR 15 = reference",
        "[ok] PCR 8 = reference",
        "[ok] state volume seen by boot 1",
        "[ok] state volume seen by boot 2",
        "\"outcome\":\"release\"",
        "== guest: PoweroffOk",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("[FAIL]"), "{stdout}");
}
