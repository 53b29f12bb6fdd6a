//! TDX quote verification on a real TD quote and its collateral (from `dcap-qvl`'s
//! samples), offline; for each check a tampered twin that must be rejected by name.
#![cfg(feature = "verifier")]
#![allow(clippy::unwrap_used)]

use cvm_attest::tdx::verifier::{
    TdxPolicy, TdxVerifyError, VerifiedTd, check_td, collateral_next_update, verify_tdx,
};
use dcap_qvl::QuoteCollateralV3;

const QUOTE: &[u8] = include_bytes!("data/tdx/tdx_quote");
const COLLATERAL: &str = include_str!("data/tdx/tdx_quote_collateral.json");
/// Offsets in a v4 TD quote: 48-byte header, then the TD report body.
const MRTD: usize = 48 + 16 + 48 + 48 + 8 + 8 + 8;
const SIGNATURE: usize = 48 + 584 + 4;

fn collateral() -> QuoteCollateralV3 {
    serde_json::from_str(COLLATERAL).unwrap()
}

/// A time inside the collateral's validity (a day before the TCB info's next update).
fn now() -> u64 {
    collateral_next_update(&collateral()).unwrap() - 86_400
}

fn lenient() -> TdxPolicy {
    TdxPolicy {
        accepted_tcb_status: vec![
            "UpToDate".into(),
            "SWHardeningNeeded".into(),
            "ConfigurationNeeded".into(),
            "ConfigurationAndSWHardeningNeeded".into(),
            "OutOfDate".into(),
            "OutOfDateConfigurationNeeded".into(),
        ],
        ..TdxPolicy::default()
    }
}

fn genuine() -> VerifiedTd {
    verify_tdx(QUOTE, &collateral(), now(), &lenient()).unwrap()
}

#[test]
fn genuine_quote_verifies_and_registers_bind() {
    let v = genuine();
    assert_eq!(&v.mrtd[..], &QUOTE[MRTD..MRTD + 48]);
    // Every register, exactly as quoted, passes; the strict default accepts only
    // UpToDate, so it names the sample platform's status otherwise.
    let exact = TdxPolicy {
        mrtd: Some(v.mrtd),
        rtmr: v.rtmr.map(Some),
        mr_config_id: Some(v.mr_config_id),
        report_data: Some(v.report_data),
        ..lenient()
    };
    verify_tdx(QUOTE, &collateral(), now(), &exact).unwrap();
    match verify_tdx(QUOTE, &collateral(), now(), &TdxPolicy::default()) {
        Ok(v) => assert_eq!(v.tcb_status, "UpToDate"),
        Err(TdxVerifyError::TcbStatus { status, .. }) => assert_ne!(status, "UpToDate"),
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn tampered_twins_are_rejected() {
    let check = |q: &[u8]| verify_tdx(q, &collateral(), now(), &lenient());
    // One flipped byte in the signed TD report (MRTD).
    let mut body = QUOTE.to_vec();
    body[MRTD] ^= 1;
    assert!(matches!(check(&body), Err(TdxVerifyError::Quote(_))));
    // One flipped byte in the quote signature.
    let mut sig = QUOTE.to_vec();
    sig[SIGNATURE + 10] ^= 1;
    assert!(matches!(check(&sig), Err(TdxVerifyError::Quote(_))));
    // One changed byte in the PCK leaf certificate (the first PEM in the quote's
    // certification data, inside its signed part). A change to the root the quote
    // carries is harmless: the verifier trusts only its own copy of Intel's root.
    let mut chain = QUOTE.to_vec();
    let begin = chain.windows(11).position(|w| w == b"-----BEGIN ").unwrap();
    let at = begin + 28 + 300;
    chain[at] = if chain[at] == b'A' { b'B' } else { b'A' };
    assert!(matches!(check(&chain), Err(TdxVerifyError::Quote(_))));
    // Truncated and oversized.
    assert!(matches!(
        check(&QUOTE[..QUOTE.len() / 2]),
        Err(TdxVerifyError::Quote(_))
    ));
    assert!(matches!(check(&QUOTE[..10]), Err(TdxVerifyError::Quote(_))));
    // Collateral for another time: long after it expired.
    assert!(matches!(
        verify_tdx(QUOTE, &collateral(), now() + 10 * 365 * 86_400, &lenient()),
        Err(TdxVerifyError::Quote(_))
    ));
    // Collateral with a flipped byte in the signed TCB info.
    let mut c = collateral();
    c.tcb_info = c.tcb_info.replacen("\"version\":3", "\"version\":4", 1);
    assert!(matches!(
        verify_tdx(QUOTE, &c, now(), &lenient()),
        Err(TdxVerifyError::Quote(_))
    ));
}

#[test]
fn policy_checks_name_the_register() {
    let v = genuine();
    let attrs = [0u8; 8];
    let mut p = lenient();
    p.mrtd = Some([0xab; 48]);
    let err = check_td(&v, attrs, &p).unwrap_err();
    assert!(
        err.to_string().starts_with("MRTD mismatch: expected abab"),
        "{err}"
    );
    let mut p = lenient();
    p.rtmr[2] = Some([0; 48]);
    assert!(matches!(
        check_td(&v, attrs, &p),
        Err(TdxVerifyError::Mismatch {
            register: "RTMR2",
            ..
        })
    ));
    let mut p = lenient();
    p.mr_config_id = Some([1; 48]);
    assert!(matches!(
        check_td(&v, attrs, &p),
        Err(TdxVerifyError::Mismatch {
            register: "MRCONFIGID",
            ..
        })
    ));
    let mut p = lenient();
    p.report_data = Some([2; 64]);
    assert!(matches!(
        check_td(&v, attrs, &p),
        Err(TdxVerifyError::Mismatch {
            register: "REPORTDATA",
            ..
        })
    ));
    // A debuggable TD.
    let mut debug = attrs;
    debug[0] |= 1;
    assert!(matches!(
        check_td(&v, debug, &lenient()),
        Err(TdxVerifyError::Debug(_))
    ));
}

#[test]
fn evidence_json_verifies_and_a_foreign_event_log_is_refused() {
    use base64::Engine as _;
    use cvm_attest::tdx::TdxEvidence;
    use cvm_attest::tdx::verifier::verify_tdx_evidence;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let ev = TdxEvidence {
        cc_eventlog: None,
        quote: b64(QUOTE),
    };
    verify_tdx_evidence(&ev, &collateral(), now(), &lenient()).unwrap();
    // The sample quote's RTMRs were not produced by this (OVMF) log.
    let foreign = TdxEvidence {
        cc_eventlog: Some(b64(include_bytes!("data/ovmf-direct-boot.tcglog"))),
        quote: b64(QUOTE),
    };
    assert!(verify_tdx_evidence(&foreign, &collateral(), now(), &lenient()).is_err());
}
