//! Azure confidential VMs (`az-snp-vtpm`, `az-tdx-vtpm`): the paravisor's (HCL) report
//! vouches for the vTPM's attestation key, whose quote carries the full runtime-data
//! digest as its nonce (Trustee's rule for these TEEs); init-data is bound through
//! PCR 8. No references are compared yet: Azure's UKI PCR predictions come with the
//! cloud image build, so a token here is at best `warning`.

use cvm_attest::azure::verifier::{verify_az_snp, verify_az_tdx};
use cvm_attest::azure::{AzSnpEvidence, AzTdxEvidence};
use cvm_attest::snp::verifier::SnpPolicy;
use cvm_attest::tdx::verifier::TdxPolicy;
use cvm_attest::tpm::verifier::VerifiedQuote;
use cvm_kbs_client::initdata::InitData;
use serde_json::{Value, json};

use super::{Verified, VerifyContext, VerifyError, check_pcr8, parse};

fn pcr_claims(q: &VerifiedQuote) -> Value {
    q.pcrs
        .iter()
        .enumerate()
        .map(|(i, v)| (i.to_string(), json!(hex::encode(v))))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

pub(super) fn verify_snp(
    evidence: &Value,
    report_data: &[u8; 48],
    init_data: Option<&InitData>,
) -> Result<Verified, VerifyError> {
    const TEE: &str = "az-snp-vtpm";
    let ev: AzSnpEvidence = parse(TEE, evidence)?;
    let policy = SnpPolicy {
        vmpl: Some(0),
        ..SnpPolicy::default()
    };
    let v = verify_az_snp(&ev, report_data, &policy).map_err(|e| VerifyError::Evidence {
        tee: TEE,
        detail: e.to_string(),
    })?;
    check_pcr8(&v.quote.pcrs[8], init_data)?;
    Ok(Verified {
        claims: json!({
            "measurement": hex::encode(v.snp.measurement),
            "generation": v.snp.generation,
            "pcrs": pcr_claims(&v.quote),
        }),
        reference: None,
    })
}

pub(super) fn verify_tdx(
    evidence: &Value,
    report_data: &[u8; 48],
    init_data: Option<&InitData>,
    ctx: &VerifyContext<'_>,
) -> Result<Verified, VerifyError> {
    const TEE: &str = "az-tdx-vtpm";
    let ev: AzTdxEvidence = parse(TEE, evidence)?;
    let collateral = ctx.tdx_collateral.ok_or_else(|| VerifyError::Config {
        tee: TEE,
        detail: "no TDX collateral (start the broker with --tdx-collateral FILE)".into(),
    })?;
    let v = verify_az_tdx(&ev, report_data, collateral, ctx.now, &TdxPolicy::default()).map_err(
        |e| VerifyError::Evidence {
            tee: TEE,
            detail: e.to_string(),
        },
    )?;
    check_pcr8(&v.quote.pcrs[8], init_data)?;
    Ok(Verified {
        claims: json!({
            "mrtd": hex::encode(v.td.mrtd),
            "tcb_status": v.td.tcb_status,
            "pcrs": pcr_claims(&v.quote),
        }),
        reference: None,
    })
}
