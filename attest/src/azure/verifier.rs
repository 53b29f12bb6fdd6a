//! Verifying `az-snp-vtpm` evidence: the HCL report's SNP report is verified as any SNP
//! report (VCEK to AMD's built-in roots, policy), its report data must be the hash of
//! the HCL variable data, the attestation key is taken from that variable data, and
//! the TPM quote must be signed by that key over the verifier's nonce.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rsa::pkcs8::EncodePublicKey as _;
use rsa::{BigUint, RsaPublicKey};

use super::{
    AzSnpEvidence, AzTdxEvidence, AzTpmQuote, HardwareReport, HclError, HclReport, parse_hcl_report,
};
use crate::snp::verifier::{SnpPolicy, SnpVerifyError, VerifiedSnp, verify_snp};
use crate::snp::{CertTableEntry, CertType, SnpEvidence, SnpParseError, parse_report};
use crate::tdx::verifier::{QuoteCollateralV3, TdxPolicy, TdxVerifyError, VerifiedTd, verify_tdx};
use crate::tpm::verifier::{TpmVerifyError, VerifiedQuote, verify_quote};
use crate::tpm::{TpmEvidence, TpmQuote};

/// A check of Azure SNP vTPM evidence that failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AzVerifyError {
    /// A field is not base64.
    #[error("evidence field {0} is not base64")]
    Base64(&'static str),
    /// The HCL report does not parse.
    #[error(transparent)]
    Hcl(#[from] HclError),
    /// The HCL report carries an SNP report, not a TD report.
    #[error("HCL report carries an SNP report; az-tdx-vtpm evidence needs a TD report")]
    NotTdx,
    /// The TD quote does not verify.
    #[error(transparent)]
    Tdx(#[from] TdxVerifyError),
    /// The TD quote is of another TD report than the HCL's.
    #[error("the TD quote's MRTD or RTMRs differ from the HCL's TD report")]
    TdReportMismatch,
    /// The HCL report carries a TD report, not an SNP report.
    #[error("HCL report carries a TDX report; az-snp-vtpm evidence needs an SNP report")]
    NotSnp,
    /// The SNP report does not parse.
    #[error(transparent)]
    SnpParse(#[from] SnpParseError),
    /// The SNP report does not verify.
    #[error(transparent)]
    Snp(#[from] SnpVerifyError),
    /// The SNP report is not bound to this HCL variable data.
    #[error(
        "HCL binding mismatch: SNP report data is {actual}, the variable data hashes to {expected}"
    )]
    Binding {
        /// Hex of the hash of the variable data.
        expected: String,
        /// Hex of the report data.
        actual: String,
    },
    /// The AK in the variable data is not a usable RSA key.
    #[error("HCL attestation key is not a valid RSA key")]
    Ak,
    /// The quote does not verify with the HCL's AK.
    #[error(transparent)]
    Quote(#[from] TpmVerifyError),
    /// The HCL report was not refreshed for this nonce.
    #[error("HCL user-data mismatch: expected the nonce {expected}, got {actual}")]
    UserData {
        /// Hex of the nonce, zero-padded to 64 bytes.
        expected: String,
        /// The report's user-data.
        actual: String,
    },
}

/// What verified evidence shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAzSnp {
    /// The SNP report's verification.
    pub snp: VerifiedSnp,
    /// The quoted PCRs.
    pub quote: VerifiedQuote,
    /// The HCL variable data's `user-data`, when present.
    pub user_data: Option<String>,
}

fn b64url(field: &'static str, v: &str) -> Result<Vec<u8>, AzVerifyError> {
    URL_SAFE_NO_PAD
        .decode(v.trim_end_matches('='))
        .map_err(|_| AzVerifyError::Base64(field))
}

/// The hardware report's report data must be the hash of the HCL variable data.
fn check_binding(hcl: &HclReport) -> Result<(), AzVerifyError> {
    let expected = hcl.expected_report_data();
    if hcl.report_data() != expected {
        return Err(AzVerifyError::Binding {
            expected: hex::encode(expected),
            actual: hex::encode(hcl.report_data()),
        });
    }
    Ok(())
}

/// The HCL's attestation key, as DER SubjectPublicKeyInfo.
fn ak_der(hcl: &HclReport) -> Result<Vec<u8>, AzVerifyError> {
    let (n, e) = hcl.ak_rsa()?;
    let ak = RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e))
        .map_err(|_| AzVerifyError::Ak)?;
    Ok(ak
        .to_public_key_der()
        .map_err(|_| AzVerifyError::Ak)?
        .into_vec())
}

/// Verify `evidence` for `nonce`. `policy.report_data` is ignored: on Azure the report
/// data is the HCL's, and freshness comes from the quote's nonce.
pub fn verify_az_snp(
    evidence: &AzSnpEvidence,
    nonce: &[u8],
    policy: &SnpPolicy,
) -> Result<VerifiedAzSnp, AzVerifyError> {
    let hcl_bytes = b64url("hcl_report", &evidence.hcl_report)?;
    let vcek = b64url("vcek", &evidence.vcek)?;
    let (snp, ak_der, user_data) = verify_hcl_snp(&hcl_bytes, &vcek, policy)?;
    let (quote, user_data) = verify_hcl_quote(&evidence.tpm_quote, &ak_der, user_data, nonce)?;
    Ok(VerifiedAzSnp {
        snp,
        quote,
        user_data,
    })
}

/// Verify an HCL report's SNP report and its binding to the variable data; return the
/// verification, the AK (DER SubjectPublicKeyInfo) it vouches for, and the user data.
pub fn verify_hcl_snp(
    hcl_bytes: &[u8],
    vcek_der: &[u8],
    policy: &SnpPolicy,
) -> Result<(VerifiedSnp, Vec<u8>, Option<String>), AzVerifyError> {
    let hcl = parse_hcl_report(hcl_bytes)?;
    if hcl.kind != HardwareReport::Snp {
        return Err(AzVerifyError::NotSnp);
    }
    let snp = SnpEvidence {
        attestation_report: parse_report(&hcl.hw_report)?,
        cert_chain: Some(vec![CertTableEntry {
            cert_type: CertType::VCEK,
            data: vcek_der.to_vec(),
        }]),
    };
    // The binding first: it needs no key, and a report over other data is refused
    // before anything else is looked at.
    check_binding(&hcl)?;
    let ak_der = ak_der(&hcl)?;
    let mut policy = policy.clone();
    policy.report_data = None;
    let verified_snp = verify_snp(&snp, &policy)?;
    Ok((verified_snp, ak_der, hcl.user_data()))
}

/// Azure carries the quote's bare RSA signature; wrap it as the TPMT_SIGNATURE
/// (RSASSA, sha256) the AK made, standard base64.
fn raw_rsassa_to_tpmt(hex_sig: &str) -> Option<String> {
    let raw = hex::decode(hex_sig).ok()?;
    let len = u16::try_from(raw.len()).ok()?;
    let mut tpmt = Vec::with_capacity(raw.len() + 6);
    tpmt.extend_from_slice(&crate::tpm::quote::ALG_RSASSA.to_be_bytes());
    tpmt.extend_from_slice(&crate::tpm::quote::ALG_SHA256.to_be_bytes());
    tpmt.extend_from_slice(&len.to_be_bytes());
    tpmt.extend_from_slice(&raw);
    Some(STANDARD.encode(tpmt))
}

/// The quote by the HCL's AK (`ak_der`) over `nonce`, and the HCL `user-data` freshness.
fn verify_hcl_quote(
    tpm_quote: &AzTpmQuote,
    ak_der: &[u8],
    user_data: Option<String>,
    nonce: &[u8],
) -> Result<(VerifiedQuote, Option<String>), AzVerifyError> {
    let hex_b64 = |field: &'static str, v: &str| -> Result<String, AzVerifyError> {
        hex::decode(v)
            .map(|b| STANDARD.encode(b))
            .map_err(|_| AzVerifyError::Base64(field))
    };
    let tpm = TpmEvidence {
        ak_public: STANDARD.encode(ak_der),
        tpm_quote: TpmQuote {
            message: hex_b64("tpm_quote.message", &tpm_quote.message)?,
            signature: raw_rsassa_to_tpmt(&tpm_quote.signature)
                .ok_or(AzVerifyError::Base64("tpm_quote.signature"))?,
            pcrs: tpm_quote.pcrs.clone(),
        },
        ek_cert: None,
    };
    let quote = verify_quote(&tpm, nonce, &[ak_der.to_vec()])?;
    // The guest writes the nonce to NV 0x01400002 before reading the HCL report, so the
    // report itself is fresh too (Trustee checks the same).
    if let Some(actual) = &user_data {
        let expected = hex::encode(super::nonce_report_data(nonce));
        if !actual.eq_ignore_ascii_case(&expected) {
            return Err(AzVerifyError::UserData {
                expected,
                actual: actual.clone(),
            });
        }
    }
    Ok((quote, user_data))
}

/// What verified `az-tdx-vtpm` evidence shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAzTdx {
    /// The TD quote's verification.
    pub td: VerifiedTd,
    /// The quoted PCRs.
    pub quote: VerifiedQuote,
    /// The HCL variable data's `user-data`, when present.
    pub user_data: Option<String>,
}

/// Verify `az-tdx-vtpm` evidence for `nonce`: the HCL's TD report is bound to its
/// variable data, the TD quote verifies (DCAP, with `collateral` at `now_secs`) over the
/// same report data and the same MRTD and RTMRs, and the quote by the HCL's AK verifies.
/// `policy.report_data` is replaced by the HCL's.
pub fn verify_az_tdx(
    evidence: &AzTdxEvidence,
    nonce: &[u8],
    collateral: &QuoteCollateralV3,
    now_secs: u64,
    policy: &TdxPolicy,
) -> Result<VerifiedAzTdx, AzVerifyError> {
    let hcl = parse_hcl_report(&b64url("hcl_report", &evidence.hcl_report)?)?;
    let (mrtd, rtmr) = hcl.td_registers().ok_or(AzVerifyError::NotTdx)?;
    check_binding(&hcl)?;
    let mut policy = policy.clone();
    policy.report_data = Some(hcl.report_data());
    let td = verify_tdx(
        &b64url("td_quote", &evidence.td_quote)?,
        collateral,
        now_secs,
        &policy,
    )?;
    if td.mrtd != mrtd || td.rtmr != rtmr {
        return Err(AzVerifyError::TdReportMismatch);
    }
    let ak_der = ak_der(&hcl)?;
    let (quote, user_data) =
        verify_hcl_quote(&evidence.tpm_quote, &ak_der, hcl.user_data(), nonce)?;
    Ok(VerifiedAzTdx {
        td,
        quote,
        user_data,
    })
}
