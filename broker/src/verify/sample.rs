//! `sample` evidence (Trustee's insecure test TEE): `{"svn","report_data"}` with the
//! runtime-data digest in standard base64 and no signature at all. Accepted only with
//! the broker's dev flag; its claims sit under `sample`, which the default policy
//! refuses to release anything to.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Verified, VerifyError, parse};

const TEE: &str = "sample";

#[derive(Deserialize)]
struct SampleEvidence {
    svn: String,
    report_data: String,
}

pub(super) fn verify(evidence: &Value, report_data: &[u8; 48]) -> Result<Verified, VerifyError> {
    let ev: SampleEvidence = parse(TEE, evidence)?;
    let got = STANDARD
        .decode(&ev.report_data)
        .map_err(|_| VerifyError::Malformed {
            tee: TEE,
            detail: "report_data is not standard base64".into(),
        })?;
    if got != report_data {
        return Err(VerifyError::Evidence {
            tee: TEE,
            detail: "report_data is not this session's runtime-data digest".into(),
        });
    }
    Ok(Verified {
        claims: json!({"svn": ev.svn, "report_data": ev.report_data, "debug": false}),
        reference: None,
    })
}
