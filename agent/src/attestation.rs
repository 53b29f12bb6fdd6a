//! Evidence for a verifier (no HTTP here): the TPM attestation key, its activation,
//! and quotes over all PCRs with the verifier's nonce, served together with the runtime
//! event log and the firmware's TCG event log so the verifier can replay both; and SNP
//! reports or TD quotes over the verifier's report data, with the runtime event log.
//!
//! The AK is created on first use and kept for the agent's life: a verifier activates it
//! once (binding it to the certified EK), then trusts quotes it signs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cvm_attest::EventLog;
use cvm_attest::azure::attester::AzAttesterError;
use cvm_attest::snp::attester::SnpAttesterError;
use cvm_attest::tdx::attester::TdxAttesterError;
use cvm_attest::tpm::attester::{AttesterError, TpmAttester};
use cvm_attest::tpm::{ActivationRequest, ActivationResponse, AkIdentity};
use cvm_proto::agent::AttestationEvidence;

use crate::runtime_log::Measurements;

/// Where the kernel exposes the firmware's TCG event log.
pub const FIRMWARE_LOG: &str = "kernel/security/tpm0/binary_bios_measurements";
/// Largest firmware log served (OVMF's is a few KiB).
const MAX_FIRMWARE_LOG: u64 = 1 << 20;

/// Evidence could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    /// The agent runs without a TPM.
    #[error("this guest has no TPM (agent started with --tpm off)")]
    NoTpm,
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The TPM failed.
    #[error(transparent)]
    Tpm(#[from] AttesterError),
    /// No SNP here, or the SNP firmware failed.
    #[error(transparent)]
    Snp(#[from] SnpAttesterError),
    /// No TDX here, or the quote failed.
    #[error(transparent)]
    Tdx(#[from] TdxAttesterError),
    /// Not an Azure confidential VM, or its vTPM or IMDS failed.
    #[error(transparent)]
    Azure(#[from] AzAttesterError),
    /// The runtime event log could not be read.
    #[error("read the runtime event log {path} failed: {reason}")]
    EventLog {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The firmware log is unreadable or too large.
    #[error("read the firmware event log {path} failed: {reason}")]
    FirmwareLog {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The TPM attester, created on first use.
#[derive(Debug)]
pub struct Attestation {
    tcti: Option<String>,
    eventlog: PathBuf,
    sysfs: PathBuf,
    tls_key_sha256: [u8; 32],
    measurements: Arc<Measurements>,
    attester: Mutex<Option<TpmAttester>>,
}

impl Attestation {
    /// An attester for the TPM at `tcti` (`None`: no TPM) whose evidence binds the TLS
    /// key with SHA-256 `tls_key_sha256` (of its SubjectPublicKeyInfo); no measurement
    /// through `measurements` happens while evidence is made.
    pub fn new(
        tcti: Option<String>,
        eventlog: PathBuf,
        sysfs: PathBuf,
        tls_key_sha256: [u8; 32],
        measurements: Arc<Measurements>,
    ) -> Self {
        Self {
            tcti,
            eventlog,
            sysfs,
            tls_key_sha256,
            measurements,
            attester: Mutex::new(None),
        }
    }

    fn with_attester<T>(
        &self,
        f: impl FnOnce(&TpmAttester) -> Result<T, AttesterError>,
    ) -> Result<T, AttestationError> {
        let tcti = self.tcti.as_deref().ok_or(AttestationError::NoTpm)?;
        // A panic while holding the lock cannot leave the attester half-made: it is
        // only ever replaced whole, so a poisoned lock's content is still usable.
        let mut guard = self
            .attester
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            *guard = Some(TpmAttester::create(tcti)?);
        }
        match guard.as_ref() {
            Some(a) => Ok(f(a)?),
            None => Err(AttestationError::NoTpm),
        }
    }

    /// The EK certificate and the AK's public parts.
    pub fn identity(&self) -> Result<AkIdentity, AttestationError> {
        self.with_attester(TpmAttester::identity)
    }

    /// Recover a secret the verifier sealed to the EK for the AK.
    pub fn activate(
        &self,
        req: &ActivationRequest,
    ) -> Result<ActivationResponse, AttestationError> {
        let decode = |field: &str, v: &str| {
            STANDARD
                .decode(v)
                .map_err(|_| AttestationError::BadRequest(format!("{field} is not base64")))
        };
        let blob = decode("credential_blob", &req.credential_blob)?;
        let secret = decode("encrypted_secret", &req.encrypted_secret)?;
        let out = self.with_attester(|a| a.activate(&blob, &secret))?;
        Ok(ActivationResponse {
            secret: STANDARD.encode(out),
        })
    }

    /// Evidence of `tee` for the client's `nonce` (1 to 64 bytes) and the agent's TLS
    /// key, with the runtime event log (and for a TPM quote, the firmware's). The
    /// evidence answers `tls_key_nonce(key, nonce)`, never the bare nonce, so evidence
    /// fetched through this API always names the key that served it. For SNP and TDX
    /// the report data also binds the runtime log:
    /// `cvm_attest::binding::runtime_report_data`.
    pub fn evidence(
        &self,
        tee: &str,
        nonce: &[u8],
    ) -> Result<AttestationEvidence, AttestationError> {
        if nonce.is_empty() || nonce.len() > 64 {
            return Err(AttestationError::BadRequest(format!(
                "nonce must be 1 to 64 bytes, got {}",
                nonce.len()
            )));
        }
        let bound = cvm_attest::binding::tls_key_nonce(&self.tls_key_sha256, nonce);
        let nonce = &bound[..];
        let to_json = |v: Result<serde_json::Value, serde_json::Error>| {
            v.map_err(|e| AttestationError::BadRequest(format!("encode evidence: {e}")))
        };
        // One read of the log serves the binding and the answer, so they cannot differ,
        // and no measurement lands between it and the quote.
        let _still = self.measurements.hold_still();
        let runtime_log = self.runtime_log()?;
        let (evidence, firmware_log) = match tee {
            "tpm" => {
                let quote = self.with_attester(|a| a.quote(nonce))?;
                let log = read_firmware_log(&self.sysfs.join(FIRMWARE_LOG))?;
                (to_json(serde_json::to_value(quote))?, log)
            }
            "snp" | "tdx" => {
                // No register to extend here: the runtime log goes into the report data.
                let report_data = cvm_attest::binding::runtime_report_data(nonce, &runtime_log);
                let value = if tee == "snp" {
                    serde_json::to_value(cvm_attest::snp::attester::report(&report_data, None)?)
                } else {
                    serde_json::to_value(cvm_attest::tdx::attester::quote(&report_data)?)
                };
                (to_json(value)?, None)
            }
            "az-snp-vtpm" => {
                let tcti = self.tcti.as_deref().ok_or(AttestationError::NoTpm)?;
                let ev = cvm_attest::azure::attester::evidence(tcti, nonce)?;
                (to_json(serde_json::to_value(ev))?, None)
            }
            "az-tdx-vtpm" => {
                let tcti = self.tcti.as_deref().ok_or(AttestationError::NoTpm)?;
                let ev = cvm_attest::azure::attester::tdx_evidence(tcti, nonce)?;
                (to_json(serde_json::to_value(ev))?, None)
            }
            other => {
                return Err(AttestationError::BadRequest(format!(
                    "unknown tee {other:?} (known: tpm, snp, tdx, az-snp-vtpm, az-tdx-vtpm)"
                )));
            }
        };
        Ok(AttestationEvidence {
            tee: tee.to_owned(),
            tls_key_sha256: hex::encode(self.tls_key_sha256),
            evidence,
            runtime_log,
            firmware_log,
        })
    }

    fn runtime_log(&self) -> Result<EventLog, AttestationError> {
        std::fs::read(&self.eventlog)
            .map_err(|e| e.to_string())
            .and_then(|b| EventLog::parse(&b).map_err(|e| e.to_string()))
            .map_err(|reason| AttestationError::EventLog {
                path: self.eventlog.clone(),
                reason,
            })
    }
}

fn read_firmware_log(path: &Path) -> Result<Option<String>, AttestationError> {
    use std::io::Read as _;
    let fail = |reason: String| AttestationError::FirmwareLog {
        path: path.to_owned(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        // No measured-boot firmware (e.g. direct boot without a TPM-aware firmware).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(fail(e.to_string())),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FIRMWARE_LOG + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(e.to_string()))?;
    if bytes.len() as u64 > MAX_FIRMWARE_LOG {
        return Err(fail(format!("larger than {MAX_FIRMWARE_LOG} bytes")));
    }
    Ok(Some(STANDARD.encode(bytes)))
}
