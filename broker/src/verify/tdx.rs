//! `tdx` evidence: DCAP verification of the TD quote with the broker's collateral
//! (offline: no PCS access from the broker), REPORTDATA = the runtime-data digest
//! zero-padded, MRCONFIGID = the init-data digest (zero without init-data), the CC event
//! log replayed to the RTMRs, then MRTD against the `tdx` references.

use cvm_attest::tdx::TdxEvidence;
use cvm_attest::tdx::verifier::{TdxPolicy, TdxVerifyError, verify_tdx_evidence};
use cvm_kbs_client::initdata::InitData;
use cvm_kbs_client::report_data::report_data_64;
use serde_json::{Value, json};

use super::{Verified, VerifyContext, VerifyError, match_reference, parse};

const TEE: &str = "tdx";

pub(super) fn verify(
    evidence: &Value,
    report_data: &[u8; 48],
    init_data: Option<&InitData>,
    ctx: &VerifyContext<'_>,
) -> Result<Verified, VerifyError> {
    let ev: TdxEvidence = parse(TEE, evidence)?;
    let collateral = ctx.tdx_collateral.ok_or_else(|| VerifyError::Config {
        tee: TEE,
        detail: "no TDX collateral (start the broker with --tdx-collateral FILE)".into(),
    })?;
    let policy = TdxPolicy {
        report_data: Some(report_data_64(report_data)),
        mr_config_id: Some(init_data.map(InitData::digest_as::<48>).unwrap_or([0; 48])),
        ..TdxPolicy::default()
    };
    let v = verify_tdx_evidence(&ev, collateral, ctx.now, &policy).map_err(|e| match e {
        TdxVerifyError::Mismatch {
            register: "MRCONFIGID",
            ..
        } => VerifyError::InitData(e.to_string()),
        e => VerifyError::Evidence {
            tee: TEE,
            detail: e.to_string(),
        },
    })?;
    let reference = match_reference(ctx.references.tdx(), |m| {
        (*m != v.mrtd).then(|| format!("MRTD {} is not {}", hex::encode(v.mrtd), hex::encode(m)))
    })?;
    Ok(Verified {
        claims: json!({
            "mrtd": hex::encode(v.mrtd),
            "rtmr": v.rtmr.iter().map(hex::encode).collect::<Vec<_>>(),
            "mr_config_id": hex::encode(v.mr_config_id),
            "tcb_status": v.tcb_status,
        }),
        reference,
    })
}
