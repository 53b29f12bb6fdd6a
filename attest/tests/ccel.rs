//! CC event log replay against RTMRs. No TDX machine or recorded CCEL is available
//! here, so the log is derived from a real one: the OVMF TCG log recorded from a guest,
//! rewritten the way TDVF logs the same events (sha384 only, MR index instead of PCR:
//! PCR 0, 1 and 7 → RTMR0, PCR 2-6 → RTMR1, PCR 8-15 → RTMR2). The expected RTMRs are
//! folded here independently of the library's replay.
#![cfg(feature = "verifier")]
#![allow(clippy::unwrap_used)]

use cvm_attest::tcg::FirmwareLog;
use cvm_attest::tdx::verifier::{TdxVerifyError, verify_ccel};
use sha2::{Digest as _, Sha384};

const OVMF_LOG: &[u8] = include_bytes!("data/ovmf-direct-boot.tcglog");

fn mr_index(pcr: u32) -> u32 {
    match pcr {
        0 | 1 | 7 => 1,
        2..=6 => 2,
        _ => 3,
    }
}

/// Encode (MR index, event type, sha384, data) events as a sha384-only crypto-agile log.
fn encode(events: &[(u32, u32, [u8; 48], Vec<u8>)]) -> Vec<u8> {
    let mut spec = b"Spec ID Event03\0".to_vec();
    spec.extend_from_slice(&0u32.to_le_bytes()); // platform class
    spec.extend_from_slice(&[0, 2, 0, 2]); // minor, major, errata, uintn size
    spec.extend_from_slice(&1u32.to_le_bytes()); // one algorithm
    spec.extend_from_slice(&0x000cu16.to_le_bytes()); // sha384
    spec.extend_from_slice(&48u16.to_le_bytes());
    spec.push(0); // no vendor info
    let mut out = Vec::new();
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&3u32.to_le_bytes()); // EV_NO_ACTION
    out.extend_from_slice(&[0u8; 20]);
    out.extend_from_slice(&(spec.len() as u32).to_le_bytes());
    out.extend_from_slice(&spec);
    for (mr, kind, digest, data) in events {
        out.extend_from_slice(&mr.to_le_bytes());
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
        out.extend_from_slice(&0x000cu16.to_le_bytes());
        out.extend_from_slice(digest);
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(data);
    }
    // The ACPI table's log area is zero-filled after the last event.
    out.extend_from_slice(&[0u8; 64]);
    out
}

fn derived() -> (Vec<u8>, [[u8; 48]; 4]) {
    let log = FirmwareLog::parse(OVMF_LOG).unwrap();
    let events: Vec<_> = log
        .events
        .iter()
        .map(|e| {
            (
                mr_index(e.pcr),
                e.event_type.0,
                e.sha384.unwrap(),
                e.data.clone(),
            )
        })
        .collect();
    let mut rtmr = [[0u8; 48]; 4];
    for (mr, _, digest, _) in &events {
        let r = &mut rtmr[*mr as usize - 1];
        let mut h = Sha384::new();
        h.update(*r);
        h.update(digest);
        r.copy_from_slice(&h.finalize());
    }
    (encode(&events), rtmr)
}

#[test]
fn derived_ccel_replays_to_its_rtmrs() {
    let (ccel, rtmr) = derived();
    verify_ccel(&ccel, &rtmr).unwrap();
    // The sha256-only view of a sha384-only log is refused, not guessed.
    assert!(
        FirmwareLog::parse(&ccel)
            .unwrap()
            .verify_replay(&[[0; 32]; 24])
            .is_err()
    );
}

#[test]
fn ccel_twins_name_the_rtmr() {
    let (ccel, rtmr) = derived();
    // A quoted RTMR1 that the log does not produce.
    let mut other = rtmr;
    other[1][0] ^= 1;
    assert!(matches!(
        verify_ccel(&ccel, &other),
        Err(TdxVerifyError::EventLog {
            register: "RTMR1",
            ..
        })
    ));
    // A digest changed inside the log (the first event is in RTMR0; its sha384 starts
    // after header (32 + Spec ID) + index, type, count, alg id).
    let log = FirmwareLog::parse(&ccel).unwrap();
    assert_eq!(log.events[0].pcr, 1);
    let header = 32 + u32::from_le_bytes(ccel[28..32].try_into().unwrap()) as usize;
    let mut changed = ccel.clone();
    changed[header + 4 + 4 + 4 + 2] ^= 1;
    assert!(matches!(
        verify_ccel(&changed, &rtmr),
        Err(TdxVerifyError::EventLog {
            register: "RTMR0",
            ..
        })
    ));
    // Truncated.
    assert!(matches!(
        verify_ccel(&ccel[..ccel.len() - 100], &rtmr),
        Err(TdxVerifyError::EventLogParse(_))
    ));
}
