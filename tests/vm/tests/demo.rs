//! The main job, `cvm demo`, end to end on the test image: it starts the broker,
//! registers the predicted PCRs, boots; PID1 attests and receives the key to its
//! encrypted state (created), the demo verifies the event log and attests the guest
//! against the prediction, seals the example workload, deploys it over attested TLS and
//! calls it, powers off, boots again (state unlocked), deploys it again and finds the
//! state it wrote on the first boot, powers off.

#![allow(clippy::unwrap_used)]

use cvm_vm_tests::{cvm, enabled, image, repo_root};

#[test]
fn demo_releases_keys_attests_and_powers_off() {
    if !enabled() {
        return;
    }
    let policy = repo_root().join("workloads/hello/policy.yaml");
    let out = cvm(&[
        "demo",
        "--image",
        image().to_str().unwrap(),
        "--workload-policy",
        policy.to_str().unwrap(),
    ]);
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
        "[ok] tls key",
        "[ok] the workload answers (boot 1)",
        "[ok] the workload answers (boot 2)",
        "[ok] the note written on boot 1 survived the reboot",
        "\"target\":\"default/hello/key\"",
        "\"outcome\":\"release\"",
        "== guest: PoweroffOk",
    ] {
        assert!(stdout.contains(line), "missing {line:?} in:\n{stdout}");
    }
    assert!(!stdout.contains("[FAIL]"), "{stdout}");
}
