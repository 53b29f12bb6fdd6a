//! `GET /v1/attestation/identity`, `POST /v1/attestation/activate`,
//! `GET /v1/attestation?nonce=HEX` (evidence bound to the agent's TLS key),
//! `GET /v1/attestation/passport` (the broker's token for that key).

use std::sync::Arc;

use hyper::{Response, StatusCode};
use tracing::warn;

use super::{Body, error, json};
use crate::attestation::{Attestation, AttestationError};

/// Run a TPM operation off the async threads (TPM commands block for milliseconds to
/// seconds) and turn its result into a response.
async fn blocking<T, F>(att: Arc<Attestation>, f: F) -> Response<Body>
where
    T: serde::Serialize + Send + 'static,
    F: FnOnce(&Attestation) -> Result<T, AttestationError> + Send + 'static,
{
    match tokio::task::spawn_blocking(move || f(&att)).await {
        Ok(Ok(v)) => json(StatusCode::OK, &v),
        Ok(Err(e)) => failure(&e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            format!("attestation task failed: {e}"),
        ),
    }
}

fn failure(e: &AttestationError) -> Response<Body> {
    let detail = crate::error_chain(e);
    let (status, kind) = match e {
        AttestationError::NoTpm => (StatusCode::SERVICE_UNAVAILABLE, "NoTpm"),
        AttestationError::Snp(cvm_attest::snp::attester::SnpAttesterError::NotSnp { .. })
        | AttestationError::Tdx(cvm_attest::tdx::attester::TdxAttesterError::NotTdx(_))
        | AttestationError::Azure(cvm_attest::azure::attester::AzAttesterError::NotAzure(_)) => {
            (StatusCode::SERVICE_UNAVAILABLE, "NoTee")
        }
        AttestationError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
        AttestationError::Tpm(cvm_attest::tpm::attester::AttesterError::Nonce(_)) => {
            (StatusCode::BAD_REQUEST, "BadRequest")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "AttestationFailed"),
    };
    warn!(error = %detail, "attestation request failed");
    error(status, kind, detail)
}

/// `GET /v1/attestation/identity`.
pub async fn identity(att: Arc<Attestation>) -> Response<Body> {
    blocking(att, Attestation::identity).await
}

/// `POST /v1/attestation/activate`.
pub async fn activate(att: Arc<Attestation>, body: &[u8]) -> Response<Body> {
    let req = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("activation request is not the expected JSON: {e}"),
            );
        }
    };
    blocking(att, move |a| a.activate(&req)).await
}

/// `GET /v1/attestation?nonce=HEX[&tee=tpm|snp|tdx|az-snp-vtpm|az-tdx-vtpm]`
/// (default `tpm`).
pub async fn evidence(att: Arc<Attestation>, query: Option<&str>) -> Response<Body> {
    let param = |name: &str| {
        query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let tee = param("tee").unwrap_or_else(|| "tpm".to_owned());
    let nonce = param("nonce").map(hex::decode);
    let nonce = match nonce {
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "nonce is not hex".into(),
            );
        }
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "query parameter nonce=HEX is required".into(),
            );
        }
    };
    blocking(att, move |a| a.evidence(&tee, &nonce)).await
}

/// `GET /v1/attestation/passport`.
pub async fn passport(passports: Arc<crate::passport::Passports>) -> Response<Body> {
    let now = crate::workloads::now_ms() / 1000;
    match tokio::task::spawn_blocking(move || passports.get(now)).await {
        Ok(Ok(body)) => json(StatusCode::OK, &body),
        Ok(Err(e)) => {
            warn!(error = %e, "no passport");
            error(StatusCode::SERVICE_UNAVAILABLE, "NoPassport", e)
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            format!("passport task failed: {e}"),
        ),
    }
}
