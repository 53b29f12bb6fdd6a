//! `snp` evidence: the report's chain to AMD's built-in roots and its signature, report
//! data = the runtime-data digest zero-padded to 64 bytes, HOST_DATA = the init-data
//! digest (zero without init-data), VMPL 0, then the launch measurement against the
//! `snp` references.

use cvm_attest::snp::SnpEvidence;
use cvm_attest::snp::verifier::{SnpPolicy, verify_snp};
use cvm_kbs_client::initdata::InitData;
use cvm_kbs_client::report_data::report_data_64;
use serde_json::{Value, json};

use super::{Verified, VerifyContext, VerifyError, match_reference, parse};

const TEE: &str = "snp";

pub(super) fn verify(
    evidence: &Value,
    report_data: &[u8; 48],
    init_data: Option<&InitData>,
    ctx: &VerifyContext<'_>,
) -> Result<Verified, VerifyError> {
    let ev: SnpEvidence = parse(TEE, evidence)?;
    let policy = SnpPolicy {
        report_data: Some(report_data_64(report_data)),
        host_data: Some(init_data.map(InitData::digest_as::<32>).unwrap_or([0; 32])),
        vmpl: Some(0),
        ..SnpPolicy::default()
    };
    let v = verify_snp(&ev, &policy).map_err(|e| match e {
        cvm_attest::snp::verifier::SnpVerifyError::HostData { .. } => {
            VerifyError::InitData(e.to_string())
        }
        e => VerifyError::Evidence {
            tee: TEE,
            detail: e.to_string(),
        },
    })?;
    let reference = match_reference(ctx.references.snp(), |m| {
        (*m != v.measurement).then(|| {
            format!(
                "measurement {} is not {}",
                hex::encode(v.measurement),
                hex::encode(m)
            )
        })
    })?;
    let r = &ev.attestation_report;
    Ok(Verified {
        claims: json!({
            "measurement": hex::encode(v.measurement),
            "generation": v.generation,
            "endorsement_key": v.key,
            "policy": format!("{:#x}", r.policy.0),
            "host_data": hex::encode(r.host_data),
            "vmpl": r.vmpl,
        }),
        reference,
    })
}
