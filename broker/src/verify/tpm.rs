//! `tpm` evidence: a quote of all sha256 PCRs by an attestation key the broker trusts,
//! qualified by the runtime-data digest truncated to 32 bytes (Trustee's rule).
//!
//! A cvm guest makes a fresh AK at boot, so the broker binds it to an endorsed TPM in
//! the handshake itself: the AK's identity rides in `/auth`'s extra-params, the broker
//! answers with a credential sealed to the EK for the AK's name
//! (TPM2_MakeCredential), and only the TPM holding both keys can recover the secret
//! the evidence must echo. AKs pinned in the broker's configuration are trusted
//! without this, as Trustee does.

use cvm_attest::tpm::RcarTpmEvidence;
use cvm_attest::tpm::verifier::verify_quote;
use cvm_kbs_client::initdata::InitData;
use cvm_kbs_client::report_data::tpm_nonce;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::{Verified, VerifyContext, VerifyError, check_pcr8, match_reference, parse};
use crate::appraise::{first_failure, tpm_pcrs};

const TEE: &str = "tpm";

fn evidence_error(detail: impl ToString) -> VerifyError {
    VerifyError::Evidence {
        tee: TEE,
        detail: detail.to_string(),
    }
}

pub(super) fn verify(
    evidence: &Value,
    report_data: &[u8; 48],
    init_data: Option<&InitData>,
    ctx: &VerifyContext<'_>,
) -> Result<Verified, VerifyError> {
    let ev: RcarTpmEvidence = parse(TEE, evidence)?;
    let mut trusted = ctx.trusted_aks.to_vec();
    if let Some(challenge) = ctx.ak_challenge {
        let answer = ev.ak_activation.as_ref().ok_or_else(|| {
            evidence_error("the broker challenged the AK but the evidence has no ak_activation")
        })?;
        let ak = challenge.check(answer).map_err(evidence_error)?;
        trusted.push(ak.der.clone());
    }
    if trusted.is_empty() {
        return Err(VerifyError::Config {
            tee: TEE,
            detail: "no AK to trust: send the AK identity in /auth extra-params, or pin the AK with --trusted-ak".into(),
        });
    }
    let quote =
        verify_quote(&ev.base, &tpm_nonce(report_data), &trusted).map_err(evidence_error)?;
    check_pcr8(&quote.pcrs[8], init_data)?;

    let firmware = ev.firmware_log.as_deref();
    let runtime = ev.runtime_log.as_ref();
    // The logs must replay even when no reference is registered.
    if let Some(failure) = first_failure(&tpm_pcrs(&quote.pcrs, firmware, runtime, None)) {
        return Err(evidence_error(failure));
    }
    let reference = match_reference(ctx.references.qemu(), |r| {
        first_failure(&tpm_pcrs(&quote.pcrs, firmware, runtime, Some(r)))
    })?;

    let pcrs: serde_json::Map<String, Value> = quote
        .pcrs
        .iter()
        .enumerate()
        .map(|(i, v)| (i.to_string(), json!(hex::encode(v))))
        .collect();
    let ak_der = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        &ev.base.ak_public,
    )
    .unwrap_or_default();
    Ok(Verified {
        claims: json!({
            "pcrs": pcrs,
            "ak_sha256": hex::encode(Sha256::digest(&ak_der)),
            "ak_endorsed": ctx.ak_challenge.is_some(),
            "reset_count": quote.reset_count,
            "runtime_log_events": runtime.map(|l| l.records.len()),
        }),
        reference,
    })
}
