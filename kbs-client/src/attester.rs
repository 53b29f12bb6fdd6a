//! What the client needs from a TEE: its name, optional `/auth` extra-params, and
//! evidence bound to the runtime-data digest (and to the broker's challenge
//! extra-params, where the TEE uses them).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kbs_types::Tee;
use serde_json::{Value, json};

#[cfg(any(feature = "snp", feature = "tdx"))]
pub mod cc;
#[cfg(all(feature = "tpm", feature = "snp", feature = "tdx"))]
pub mod guest;
#[cfg(feature = "tpm")]
pub mod tpm;

/// A TEE's evidence producer.
pub trait Attester {
    /// The TEE, as `/auth` names it.
    fn tee(&self) -> Tee;

    /// `/auth`'s `extra-params` (Trustee clients send `""`).
    fn auth_extra_params(&mut self) -> Result<Value, String> {
        Ok(Value::String(String::new()))
    }

    /// Evidence whose report data is `report_data` (the runtime-data digest; each TEE
    /// pads or truncates it as the protocol says), answering `challenge_extra`.
    fn evidence(
        &mut self,
        report_data: &[u8; 48],
        challenge_extra: &Value,
    ) -> Result<Value, String>;
}

/// Trustee's insecure `sample` TEE: no hardware, no signature. For development
/// brokers started with their dev flag only.
#[derive(Debug, Default)]
pub struct SampleAttester;

impl Attester for SampleAttester {
    fn tee(&self) -> Tee {
        Tee::Sample
    }

    fn evidence(&mut self, report_data: &[u8; 48], _: &Value) -> Result<Value, String> {
        Ok(json!({"svn": "1", "report_data": STANDARD.encode(report_data)}))
    }
}
