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

/// `GET /v1/attestation/passport`: the broker's attestation token for the agent's TLS
/// key (see `cvm_kbs_client::passport`) and the broker's key to check it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassportBody {
    /// The broker the appliance attested to (its init-data's).
    pub broker: String,
    /// The broker's token key, a P-256 JWK.
    pub broker_key: serde_json::Value,
    /// The token (an EAR JWT).
    pub token: String,
}

/// `GET /v1/attestation?nonce=HEX[&tee=tpm|snp|tdx|az-snp-vtpm|az-tdx-vtpm]`:
/// fresh evidence and the logs to replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationEvidence {
    /// The evidence type, in Trustee's naming (`tpm`, `snp`, `tdx`, `az-snp-vtpm`,
    /// `az-tdx-vtpm`).
    pub tee: String,
    /// SHA-256 (hex) of the TLS key the evidence binds
    /// (`cvm_attest::binding::tls_key_nonce`): a client compares it with the key its
    /// connection saw, and checks the evidence against the bound nonce.
    pub tls_key_sha256: String,
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

/// Where a workload is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WorkloadState {
    /// Its runtime is compiling it.
    Starting,
    /// Serving (or, for a command, running).
    Running,
    /// A command that finished (see `exit_code`).
    Exited,
    /// Stopped by its owner.
    Stopped,
    /// Stopped by a limit, a trap or a crash, or never started (see `reason`).
    Failed,
}

/// `GET /v1/workloads/NAME` (and each item of `GET /v1/workloads`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadStatus {
    /// The manifest's name.
    pub name: String,
    /// The manifest's version.
    pub version: String,
    /// Hex kid of the owner key that signed it.
    pub owner: String,
    /// SHA-256 of the signed manifest: what the event log holds for it.
    pub manifest_sha256: String,
    /// SHA-256 of the Wasm.
    pub wasm_sha256: String,
    /// `http-component`, `command-component` or `preview1-module`, once compiled.
    pub kind: Option<String>,
    /// Where it is.
    pub state: WorkloadState,
    /// Why it failed or stopped.
    pub reason: Option<String>,
    /// A command's exit code.
    pub exit_code: Option<i32>,
    /// The guest port the agent serves it on (`http` workloads).
    pub http_port: Option<u16>,
    /// Times its runtime was restarted after a crash.
    pub restarts: u32,
    /// Requests or calls the policy refused.
    pub denials: u64,
    /// Requests that failed inside the workload (a trap or a limit).
    pub failed_requests: u64,
    /// Resident memory of its runtime process, bytes (while it runs).
    pub rss_bytes: Option<u64>,
    /// Compile time in the guest, ms.
    pub compile_ms: Option<u64>,
    /// Unix seconds it was deployed.
    pub deployed_at: u64,
    /// The version of its sealed state this run opened (workloads with state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_version: Option<u64>,
}

/// Which stream a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LogStream {
    /// The workload's stdout.
    Stdout,
    /// The workload's stderr.
    Stderr,
    /// The runtime's and agent's account of it (compiled, denied, failed, stopped).
    Event,
}

/// One line of `GET /v1/workloads/NAME/logs` (JSON lines; `?follow=1` streams).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogLine {
    /// Position in the workload's log (resume with `?since=SEQ`).
    pub seq: u64,
    /// Unix milliseconds.
    pub time_ms: u64,
    /// Its stream.
    pub stream: LogStream,
    /// The text, without its newline.
    pub text: String,
}

/// Header naming the owner key (hex kid) that signed a request.
pub const HEADER_OWNER: &str = "x-cvm-owner";
/// Header with the request's Unix time, seconds.
pub const HEADER_TIME: &str = "x-cvm-time";
/// Header with a fresh random value (hex, 16 bytes or more) that makes each signed
/// request unique, so a replay is recognised even within one second.
pub const HEADER_NONCE: &str = "x-cvm-nonce";
/// Header with the owner's signature (standard base64) over
/// [`request_signing_input`].
pub const HEADER_SIGNATURE: &str = "x-cvm-signature";
/// How far a signed request's time may be from the agent's clock, seconds.
pub const REQUEST_MAX_SKEW: u64 = 300;

/// The bytes an owner signs to make a request to the agent: the method, the path with
/// its query, the time, a nonce, the body's SHA-256 and the agent's TLS key (SHA-256 of
/// its SubjectPublicKeyInfo, hex; empty over plain HTTP) — so a signature is good for
/// one request, to one appliance, once, for a few minutes.
pub fn request_signing_input(
    method: &str,
    path_and_query: &str,
    time: u64,
    nonce_hex: &str,
    body_sha256_hex: &str,
    agent_key_sha256_hex: &str,
) -> Vec<u8> {
    format!(
        "cvm-agent-request/1\n{method}\n{path_and_query}\n{time}\n{nonce_hex}\n{body_sha256_hex}\n{agent_key_sha256_hex}\n"
    )
    .into_bytes()
}
