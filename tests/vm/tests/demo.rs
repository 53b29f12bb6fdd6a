//! The main job, `cvm demo`, end to end on the test image: it boots, verifies the
//! event log, attests the guest against the PCRs it predicted, and powers off cleanly.

#![allow(clippy::unwrap_used)]

use cvm_vm_tests::{cvm, enabled, image};

#[test]
fn demo_boots_attests_and_powers_off() {
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
        "== guest: PoweroffOk",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("[FAIL]"), "{stdout}");
}
