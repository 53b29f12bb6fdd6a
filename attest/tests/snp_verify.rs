//! SEV-SNP verification on a real Milan report and its VCEK (from the `sev` crate's
//! test data); for each check a tampered twin that must be rejected by name.
#![cfg(feature = "verifier")]
#![allow(clippy::unwrap_used)]

use cvm_attest::snp::verifier::{
    MinTcb, SnpPolicy, SnpVerifyError, check_report, check_vcek_binding, verify_snp,
};
use cvm_attest::snp::{CertTableEntry, CertType, SnpEvidence, SnpParseError, parse_report};

const REPORT_HEX: &str = include_str!("data/snp/report_milan.hex");
const VCEK_MILAN: &[u8] = include_bytes!("data/snp/vcek_milan.der");
const VCEK_TURIN: &[u8] = include_bytes!("data/snp/vcek_turin.der");

fn report_bytes() -> Vec<u8> {
    hex::decode(REPORT_HEX.trim()).unwrap()
}

fn evidence(report: &[u8], vcek: &[u8]) -> SnpEvidence {
    SnpEvidence {
        attestation_report: parse_report(report).unwrap(),
        cert_chain: Some(vec![CertTableEntry {
            cert_type: CertType::VCEK,
            data: vcek.to_vec(),
        }]),
    }
}

fn exact_policy() -> SnpPolicy {
    let r = parse_report(&report_bytes()).unwrap();
    SnpPolicy {
        measurement: Some(r.measurement),
        report_data: Some(r.report_data),
        host_data: Some(r.host_data),
        vmpl: Some(r.vmpl),
        min_tcb: MinTcb {
            bootloader: r.reported_tcb.bootloader,
            tee: r.reported_tcb.tee,
            snp: r.reported_tcb.snp,
            microcode: r.reported_tcb.microcode,
        },
    }
}

#[test]
fn genuine_milan_report_verifies() {
    let ev = evidence(&report_bytes(), VCEK_MILAN);
    let v = verify_snp(&ev, &exact_policy()).unwrap();
    assert_eq!((v.generation, v.key), ("Milan", "VCEK"));
    // Trustee's JSON shape survives a round trip.
    let json = serde_json::to_string(&ev).unwrap();
    assert!(json.contains("\"attestation_report\"") && json.contains("\"cert_chain\""));
    let back: SnpEvidence = serde_json::from_str(&json).unwrap();
    assert_eq!(verify_snp(&back, &exact_policy()), Ok(v));
}

#[test]
fn tampered_twins_are_rejected() {
    let policy = SnpPolicy::default();
    // One flipped byte in the signed part: the measurement (offset 0x90).
    let mut signed = report_bytes();
    signed[0x90] ^= 1;
    assert_eq!(
        verify_snp(&evidence(&signed, VCEK_MILAN), &policy),
        Err(SnpVerifyError::Signature("VCEK"))
    );
    // One flipped byte in the signature (r starts at 0x2a0).
    let mut sig = report_bytes();
    sig[0x2a0 + 5] ^= 1;
    assert_eq!(
        verify_snp(&evidence(&sig, VCEK_MILAN), &policy),
        Err(SnpVerifyError::Signature("VCEK"))
    );
    // The debug bit set in the policy (bit 19 at offset 8): not signed as such.
    let mut debug = report_bytes();
    debug[8 + 2] |= 0x08;
    assert!(verify_snp(&evidence(&debug, VCEK_MILAN), &policy).is_err());
    // Another chip's VCEK (a genuine Turin one): it chains to AMD, but did not sign.
    assert_eq!(
        verify_snp(&evidence(&report_bytes(), VCEK_TURIN), &policy),
        Err(SnpVerifyError::Signature("VCEK"))
    );
    // One flipped byte inside the VCEK's signed part.
    let mut vcek = VCEK_MILAN.to_vec();
    vcek[200] ^= 1;
    assert!(matches!(
        verify_snp(&evidence(&report_bytes(), &vcek), &policy),
        Err(SnpVerifyError::Chain("VCEK") | SnpVerifyError::Certificate("VCEK"))
    ));
    // No endorsement key at all.
    let mut none = evidence(&report_bytes(), VCEK_MILAN);
    none.cert_chain = None;
    assert_eq!(
        verify_snp(&none, &policy),
        Err(SnpVerifyError::NoEndorsementKey)
    );
}

#[test]
fn policy_checks_name_what_differs() {
    let report = parse_report(&report_bytes()).unwrap();
    let exact = exact_policy();
    check_report(&report, &exact).unwrap();

    let mut debug = report;
    debug.policy.0 |= 1 << 19;
    assert!(matches!(
        check_report(&debug, &exact),
        Err(SnpVerifyError::Debug(_))
    ));

    let mut p = exact.clone();
    p.measurement = Some([0xaa; 48]);
    let err = check_report(&report, &p).unwrap_err();
    assert!(matches!(err, SnpVerifyError::Measurement { .. }));
    assert!(
        err.to_string()
            .starts_with("SNP measurement mismatch: expected aaaa"),
        "{err}"
    );

    let mut p = exact.clone();
    p.report_data = Some([0; 64]);
    assert!(matches!(
        check_report(&report, &p),
        Err(SnpVerifyError::ReportData { .. })
    ));
    let mut p = exact.clone();
    p.host_data = Some([1; 32]);
    assert!(matches!(
        check_report(&report, &p),
        Err(SnpVerifyError::HostData { .. })
    ));
    let mut p = exact.clone();
    p.vmpl = Some(report.vmpl + 1);
    assert!(matches!(
        check_report(&report, &p),
        Err(SnpVerifyError::Vmpl { .. })
    ));
    let mut p = exact.clone();
    p.min_tcb.snp = report.reported_tcb.snp + 1;
    assert!(matches!(
        check_report(&report, &p),
        Err(SnpVerifyError::TcbTooOld {
            component: "snp",
            ..
        })
    ));

    // The VCEK certifies the report's TCB and chip; another TCB or chip is refused.
    check_vcek_binding(VCEK_MILAN, &report).unwrap();
    let mut tcb = report;
    tcb.reported_tcb.microcode = tcb.reported_tcb.microcode.wrapping_add(1);
    assert!(matches!(
        check_vcek_binding(VCEK_MILAN, &tcb),
        Err(SnpVerifyError::VcekTcb {
            component: "microcode",
            ..
        })
    ));
    let mut chip = report;
    chip.chip_id[0] ^= 1;
    assert_eq!(
        check_vcek_binding(VCEK_MILAN, &chip),
        Err(SnpVerifyError::ChipId)
    );
}

#[test]
fn truncated_and_oversized_reports_are_refused() {
    let bytes = report_bytes();
    assert_eq!(parse_report(&bytes[..1183]), Err(SnpParseError::Size(1183)));
    let mut long = bytes.clone();
    long.push(0);
    assert_eq!(parse_report(&long), Err(SnpParseError::Size(1185)));
    assert!(parse_report(&[0u8; 1184]).is_err());
}
