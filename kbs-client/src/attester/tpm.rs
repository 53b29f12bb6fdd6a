//! `tpm` evidence from a TPM 2.0 (feature `tpm`): a fresh AK whose identity goes in
//! `/auth`'s extra-params; the broker's credential challenge (sealed to the EK for the
//! AK's name) is activated in the TPM and the recovered secret rides in the evidence
//! beside the quote and both event logs.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cvm_attest::EventLog;
use cvm_attest::tpm::attester::{TpmAttester, TpmSession};
use cvm_attest::tpm::{ActivationRequest, ActivationResponse, RcarTpmEvidence};
use kbs_types::Tee;
use serde_json::Value;

use super::Attester;
use crate::report_data::tpm_nonce;

/// A TPM attester with the logs to send. It keeps one TPM session (EK and AK loaded)
/// for its whole life, so a handshake creates no keys.
#[derive(Debug)]
pub struct TpmRcarAttester {
    tpm: TpmSession,
    firmware_log: Option<Vec<u8>>,
    runtime_log: Option<EventLog>,
}

impl TpmRcarAttester {
    /// An AK in the TPM at `tcti`, with the firmware's TCG log and the runtime log.
    pub fn new(
        tcti: &str,
        firmware_log: Option<Vec<u8>>,
        runtime_log: Option<EventLog>,
    ) -> Result<Self, String> {
        Ok(Self {
            tpm: TpmAttester::create(tcti)
                .and_then(|a| a.session())
                .map_err(|e| e.to_string())?,
            firmware_log,
            runtime_log,
        })
    }

    /// Replace the runtime log sent with the next evidence.
    pub fn set_runtime_log(&mut self, log: EventLog) {
        self.runtime_log = Some(log);
    }
}

impl Attester for TpmRcarAttester {
    fn tee(&self) -> Tee {
        Tee::Tpm
    }

    fn auth_extra_params(&mut self) -> Result<Value, String> {
        let identity = self.tpm.identity().map_err(|e| e.to_string())?;
        serde_json::to_value(identity).map_err(|e| e.to_string())
    }

    fn evidence(&mut self, report_data: &[u8; 48], challenge: &Value) -> Result<Value, String> {
        let ak_activation = if challenge.is_object() {
            let req: ActivationRequest = serde_json::from_value(challenge.clone())
                .map_err(|e| format!("the broker's AK challenge is malformed: {e}"))?;
            let decode = |field: &str, v: &str| {
                STANDARD
                    .decode(v)
                    .map_err(|_| format!("the broker's AK challenge {field} is not base64"))
            };
            let secret = self
                .tpm
                .activate(
                    &decode("credential_blob", &req.credential_blob)?,
                    &decode("encrypted_secret", &req.encrypted_secret)?,
                )
                .map_err(|e| e.to_string())?;
            Some(ActivationResponse {
                secret: STANDARD.encode(secret),
            })
        } else {
            None
        };
        let base = self
            .tpm
            .quote(&tpm_nonce(report_data))
            .map_err(|e| e.to_string())?;
        let evidence = RcarTpmEvidence {
            base,
            ak_activation,
            firmware_log: self.firmware_log.as_deref().map(|b| STANDARD.encode(b)),
            runtime_log: self.runtime_log.clone(),
        };
        serde_json::to_value(evidence).map_err(|e| e.to_string())
    }
}
