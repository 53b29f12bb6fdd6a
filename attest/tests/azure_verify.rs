//! Azure SEV-SNP vTPM evidence on real recorded HCL reports (from the `az-cvm-vtpm`
//! crate's test data): the SNP report inside is bound to the HCL variable data, which
//! yields the vTPM's AK; tampered twins fail. The VCEK shipped with those fixtures is a
//! genuine Milan VCEK of *another* chip: it chains to AMD's root but did not sign this
//! report, and the verifier says exactly that. (No matching VCEK is public; the SNP
//! signature path itself is verified positively on the `sev` crate's Milan fixture.)
#![cfg(feature = "verifier")]
#![allow(clippy::unwrap_used)]

use cvm_attest::azure::verifier::{AzVerifyError, verify_az_snp, verify_hcl_snp};
use cvm_attest::azure::{AzSnpEvidence, HardwareReport, HclError, parse_hcl_report};
use cvm_attest::snp::verifier::{SnpPolicy, SnpVerifyError};
use cvm_attest::tpm::verifier::TpmVerifyError;

const HCL_SNP: &[u8] = include_bytes!("data/azure/hcl-report-snp.bin");
const HCL_TDX: &[u8] = include_bytes!("data/azure/hcl-report-tdx.bin");
const CERTS: &str = include_str!("data/azure/certs.pem");
/// Complete az-snp-vtpm evidence (version 2) recorded on Azure, from Trustee's test data.
const EVIDENCE_V2: &str = include_str!("data/azure/evidence-v2.json");
/// The nonce that evidence was made for (its HCL user-data; the quote's qualifying data).
const EVIDENCE_V2_NONCE: &str = "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef";

fn evidence_v2() -> AzSnpEvidence {
    serde_json::from_str(EVIDENCE_V2).unwrap()
}

/// The certificates of the bundle as DER: VCEK, ASK, ARK.
fn certs() -> Vec<Vec<u8>> {
    use base64::Engine as _;
    CERTS
        .split("-----END CERTIFICATE-----")
        .filter(|c| c.contains("BEGIN"))
        .map(|c| {
            let b64: String = c.lines().filter(|l| !l.starts_with("-----")).collect();
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .unwrap()
        })
        .collect()
}

fn vcek() -> Vec<u8> {
    certs()[0].clone()
}

fn azure_policy() -> SnpPolicy {
    SnpPolicy {
        vmpl: Some(0),
        ..SnpPolicy::default()
    }
}

#[test]
fn genuine_hcl_reports_parse_and_bind() {
    for (bytes, kind) in [
        (HCL_SNP, HardwareReport::Snp),
        (HCL_TDX, HardwareReport::Tdx),
    ] {
        let hcl = parse_hcl_report(bytes).unwrap();
        assert_eq!(hcl.kind, kind);
        assert_eq!(hcl.report_data(), hcl.expected_report_data());
        let (n, e) = hcl.ak_rsa().unwrap();
        assert_eq!((n.len(), e), (256, vec![1, 0, 1]));
    }
}

#[test]
fn a_vcek_of_another_chip_chains_but_did_not_sign() {
    // Binding and AK extraction pass; the chain to the Milan root passes; the signature
    // is refused.
    assert_eq!(
        verify_hcl_snp(HCL_SNP, &vcek(), &azure_policy()).unwrap_err(),
        AzVerifyError::Snp(SnpVerifyError::Signature("VCEK"))
    );
}

#[test]
fn tampered_twins_are_rejected() {
    let policy = azure_policy();
    // One flipped byte in the variable data (the AK's JSON): the binding breaks.
    let mut var = HCL_SNP.to_vec();
    let at = 1236 + 40;
    var[at] ^= 1;
    let err = verify_hcl_snp(&var, &vcek(), &policy).unwrap_err();
    assert!(
        matches!(err, AzVerifyError::Binding { .. } | AzVerifyError::Hcl(_)),
        "{err}"
    );
    // One flipped byte in the signed SNP report (its measurement, 0x90 into it).
    let mut report = HCL_SNP.to_vec();
    report[32 + 0x90] ^= 1;
    assert_eq!(
        verify_hcl_snp(&report, &vcek(), &policy).unwrap_err(),
        AzVerifyError::Snp(SnpVerifyError::Signature("VCEK"))
    );
    // The wrong certificate as the VCEK (the bundle's ASK: it did not sign the report).
    assert!(verify_hcl_snp(HCL_SNP, &certs()[1], &policy).is_err());
    // A TDX HCL report is not az-snp-vtpm evidence.
    assert_eq!(
        verify_hcl_snp(HCL_TDX, &vcek(), &policy).unwrap_err(),
        AzVerifyError::NotSnp
    );
    // Truncated, and not an HCL report at all.
    assert!(matches!(
        parse_hcl_report(&HCL_SNP[..1000]),
        Err(HclError::Truncated(_))
    ));
    let mut sig = HCL_SNP.to_vec();
    sig[0] ^= 1;
    assert!(matches!(
        parse_hcl_report(&sig),
        Err(HclError::Signature(_))
    ));
}

#[test]
fn genuine_azure_evidence_verifies_end_to_end() {
    let nonce = hex::decode(EVIDENCE_V2_NONCE).unwrap();
    let v = verify_az_snp(&evidence_v2(), &nonce, &azure_policy()).unwrap();
    assert_eq!((v.snp.generation, v.snp.key), ("Milan", "VCEK"));
    assert_eq!(v.quote.pcrs.len(), 24);
    assert!(
        v.user_data
            .unwrap()
            .to_lowercase()
            .starts_with(EVIDENCE_V2_NONCE)
    );
}

#[test]
fn azure_evidence_twins_are_rejected() {
    let nonce = hex::decode(EVIDENCE_V2_NONCE).unwrap();
    let policy = azure_policy();
    // Another nonce: the quote is a replay.
    assert!(matches!(
        verify_az_snp(&evidence_v2(), b"another nonce", &policy),
        Err(AzVerifyError::Quote(TpmVerifyError::NonceMismatch { .. }))
    ));
    // One flipped byte in the quote signature.
    let mut sig = evidence_v2();
    let mut bytes = hex::decode(&sig.tpm_quote.signature).unwrap();
    bytes[7] ^= 1;
    sig.tpm_quote.signature = hex::encode(bytes);
    assert_eq!(
        verify_az_snp(&sig, &nonce, &policy).unwrap_err(),
        AzVerifyError::Quote(TpmVerifyError::Signature)
    );
    // A PCR changed after the quote.
    let mut pcr = evidence_v2();
    pcr.tpm_quote.pcrs[4] = "00".repeat(32);
    assert!(matches!(
        verify_az_snp(&pcr, &nonce, &policy),
        Err(AzVerifyError::Quote(
            TpmVerifyError::PcrDigestMismatch { .. }
        ))
    ));
    // The VCEK of another chip (the az-cvm-vtpm fixture's).
    let mut vcek = evidence_v2();
    vcek.vcek = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(certs()[0].clone())
    };
    assert_eq!(
        verify_az_snp(&vcek, &nonce, &policy).unwrap_err(),
        AzVerifyError::Snp(SnpVerifyError::Signature("VCEK"))
    );
}

#[test]
fn az_tdx_evidence_binds_and_refuses_a_quote_of_another_td() {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use cvm_attest::azure::AzTdxEvidence;
    use cvm_attest::azure::verifier::verify_az_tdx;
    use cvm_attest::tdx::verifier::{
        QuoteCollateralV3, TdxPolicy, TdxVerifyError, collateral_next_update,
    };
    // A genuine TD quote and its collateral (dcap-qvl's sample), but of another TD than
    // the recorded HCL report's: the report data it carries is not the HCL's.
    let collateral: QuoteCollateralV3 =
        serde_json::from_str(include_str!("data/tdx/tdx_quote_collateral.json")).unwrap();
    let now = collateral_next_update(&collateral).unwrap() - 86_400;
    let policy = TdxPolicy {
        accepted_tcb_status: ["UpToDate", "SWHardeningNeeded", "OutOfDate"]
            .map(String::from)
            .to_vec(),
        ..TdxPolicy::default()
    };
    let evidence = |hcl: &[u8]| AzTdxEvidence {
        version: 1,
        tpm_quote: evidence_v2().tpm_quote,
        hcl_report: URL_SAFE_NO_PAD.encode(hcl),
        td_quote: URL_SAFE_NO_PAD.encode(include_bytes!("data/tdx/tdx_quote")),
    };
    let err = verify_az_tdx(&evidence(HCL_TDX), b"nonce", &collateral, now, &policy).unwrap_err();
    assert!(
        matches!(
            err,
            AzVerifyError::Tdx(TdxVerifyError::Mismatch {
                register: "REPORTDATA",
                ..
            })
        ),
        "{err}"
    );
    // An SNP HCL report is not az-tdx-vtpm evidence.
    assert_eq!(
        verify_az_tdx(&evidence(HCL_SNP), b"nonce", &collateral, now, &policy).unwrap_err(),
        AzVerifyError::NotTdx
    );
    // A flipped byte in the variable data breaks the binding before any quote is read.
    let mut var = HCL_TDX.to_vec();
    var[1236 + 40] ^= 1;
    assert!(matches!(
        verify_az_tdx(&evidence(&var), b"nonce", &collateral, now, &policy),
        Err(AzVerifyError::Binding { .. })
    ));
    // The HCL's TD report exposes its registers.
    let hcl = parse_hcl_report(HCL_TDX).unwrap();
    assert!(hcl.td_registers().is_some());
    assert!(parse_hcl_report(HCL_SNP).unwrap().td_registers().is_none());
}
