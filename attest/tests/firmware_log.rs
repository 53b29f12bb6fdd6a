//! The firmware event log parser on a real log (OVMF + QEMU direct boot + Linux EFI
//! stub, recorded from the guest with the quote taken right after), checked against
//! the quoted PCRs and against tpm2-tools' own parser; malformed twins are named.
#![allow(clippy::unwrap_used)]

use cvm_attest::tcg::{EventType, FirmwareLog, FirmwareLogError};

const LOG: &[u8] = include_bytes!("data/ovmf-direct-boot.tcglog");

fn quoted() -> Vec<[u8; 32]> {
    let v: serde_json::Value =
        serde_json::from_str(include_str!("data/ovmf-direct-boot.pcrs.json")).unwrap();
    v["pcrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            hex::decode(p.as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect()
}

#[test]
fn real_log_replays_to_the_quote() {
    let log = FirmwareLog::parse(LOG).unwrap();
    assert_eq!(log.pcrs(), (0..=9).filter(|&p| p != 8).collect::<Vec<_>>());
    log.verify_replay(&quoted()).unwrap();
    // The kernel, OVMF's action and a separator in PCR 4; the EFI stub's two tagged
    // events (load options, initrd) in PCR 9.
    let pcr4: Vec<EventType> = log.events_of(4).map(|e| e.event_type).collect();
    assert_eq!(
        pcr4,
        [
            EventType::EFI_BOOT_SERVICES_APPLICATION,
            EventType::EFI_ACTION,
            EventType::SEPARATOR
        ]
    );
    assert_eq!(log.events_of(9).count(), 2);
    assert!(
        log.events_of(9)
            .all(|e| e.event_type == EventType::EVENT_TAG)
    );
}

#[test]
fn replay_matches_tpm2_eventlog() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    std::fs::write(&path, LOG).unwrap();
    let out = std::process::Command::new("tpm2_eventlog")
        .arg(&path)
        .output()
        .expect("tpm2_eventlog (tpm2-tools; run ./scripts/setup)");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    // Its summary ends the output: "pcrs:", then per bank "  sha256:" and lines
    // "    <index> : 0x<hex>" for the PCRs the log touches.
    let summary = text.rsplit("\npcrs:").next().unwrap();
    let sha256 = summary.split("  sha256:").nth(1).unwrap();
    let sha384 = sha256.split("  sha384:").nth(1).unwrap();
    let sha256 = sha256.split("  sha384:").next().unwrap();
    let log = FirmwareLog::parse(LOG).unwrap();
    let replayed384 = log.replay_sha384();
    let mut compared384 = 0;
    for line in sha384.lines().filter(|l| l.contains(": 0x")) {
        let (index, value) = line.split_once(": 0x").unwrap();
        let index: usize = index.trim().parse().unwrap();
        assert_eq!(
            hex::encode(replayed384[index]),
            value.trim().to_lowercase(),
            "sha384 PCR {index}"
        );
        compared384 += 1;
    }
    assert_eq!(compared384, 9);
    let replayed = log.replay_sha256();
    let mut compared = 0;
    for line in sha256.lines().filter(|l| l.contains(": 0x")) {
        compared += 1;
        let (index, value) = line.split_once(": 0x").unwrap();
        let index: usize = index.trim().parse().unwrap();
        assert_eq!(
            hex::encode(replayed[index]),
            value.trim().to_lowercase(),
            "PCR {index}"
        );
    }
    assert_eq!(compared, 9, "tpm2_eventlog summary:\n{summary}");
}

#[test]
fn tampered_logs_are_named() {
    // An event's digest changed: the log no longer replays to the quote.
    let log = FirmwareLog::parse(LOG).unwrap();
    let mut changed = log.clone();
    if let Some(d) = changed.events[5].sha256.as_mut() {
        d[0] ^= 1;
    }
    let pcr = changed.events[5].pcr;
    assert!(matches!(
        changed.verify_replay(&quoted()),
        Err(FirmwareLogError::Replay { pcr: p, .. }) if p == pcr
    ));
    // Truncated anywhere: an error naming the field, never a panic.
    for cut in (0..LOG.len()).step_by(7) {
        let _ = FirmwareLog::parse(&LOG[..cut]);
    }
    assert!(matches!(
        FirmwareLog::parse(&LOG[..LOG.len() - 10]),
        Err(FirmwareLogError::Truncated { .. })
    ));
    // Not a crypto-agile log.
    let mut header = LOG.to_vec();
    header[32] ^= 0xff; // inside the "Spec ID Event03" signature
    assert_eq!(FirmwareLog::parse(&header), Err(FirmwareLogError::Header));
}
