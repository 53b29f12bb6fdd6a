//! Bodies of the agent's HTTP API.

use serde::{Deserialize, Serialize};

pub use cvm_attest::EventLog;

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    /// Always `"ok"` when the agent answers.
    pub status: String,
    /// The agent's version.
    pub version: String,
}

/// `GET /v1/eventlog`: the runtime event log and the register it must replay to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLogResponse {
    /// The log as PID1 and the agent wrote it.
    pub log: EventLog,
    /// The register's current values, read from the kernel when a TPM is present
    /// (`/sys/class/tpm/tpm0/pcr-<bank>/<index>`), lower-case hex.
    pub register_values: Vec<RegisterValue>,
}

/// One bank of the register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterValue {
    /// The bank, as in the event log (`sha256`, `sha384`).
    #[serde(rename = "hashAlg")]
    pub hash_alg: cvm_attest::HashAlg,
    /// Lower-case hex of the value.
    pub value: String,
}

/// Error body of every non-2xx response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// The error variant, e.g. `NotFound`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Human-readable detail.
    pub detail: String,
}

/// `GET /v1/attestation/evidence?nonce=HEX[&tee=tpm|snp|tdx|az-snp-vtpm|az-tdx-vtpm]`:
/// fresh evidence and the logs to replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationEvidence {
    /// The evidence type, in Trustee's naming (`tpm`, `snp`, `tdx`, `az-snp-vtpm`,
    /// `az-tdx-vtpm`).
    pub tee: String,
    /// The evidence, in Trustee's format for that type.
    pub evidence: serde_json::Value,
    /// The runtime event log, which replays to the runtime PCR.
    pub runtime_log: EventLog,
    /// The firmware's TCG PC Client event log (standard base64), when the firmware
    /// measured the boot into the TPM (`tpm` evidence).
    pub firmware_log: Option<String>,
}

/// The secrets PID1 hands the agent: the content of the `--secrets-fd` memfd.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    /// Resource path → standard base64 of its bytes.
    pub resources: std::collections::BTreeMap<String, String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names only: values are keys.
        f.debug_struct("Secrets")
            .field("resources", &self.resources.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// `GET /v1/state`: the appliance's persistent state and released secrets, by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateStatus {
    /// Whether an encrypted state volume is mounted.
    pub mounted: bool,
    /// PID1's record on the volume (`boots`, `uuid`), when mounted.
    pub record: Option<serde_json::Value>,
    /// The resources PID1 handed over (names only).
    pub secrets: Vec<String>,
    /// The kids (hex SHA-256 of the SubjectPublicKeyInfo) of the owners whose sealed
    /// workloads this appliance accepts, from its init-data.
    pub owners: Vec<String>,
}
