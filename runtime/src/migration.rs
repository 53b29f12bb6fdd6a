//! The bodies of a migration: the owner's request to the source, the source's offer to
//! the destination, and the report the owner gets back (the protocol is described in
//! the agent's `workloads/migrate.rs`).

use serde::{Deserialize, Serialize};

use crate::certificate::Certificate;

/// `POST /v1/workloads/NAME/migrate` (owner-signed, to the source).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateRequest {
    /// The destination's agent, HOST:PORT as the source reaches it.
    pub to: String,
    /// SHA-256 of the destination's TLS key (hex), as the owner attested it.
    pub to_key_sha256: String,
}

/// How a migration ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The destination holds and serves the workload; the source deleted its copy.
    Migrated,
    /// The source holds and serves the workload again.
    Aborted,
    /// Nothing left the source: the destination was refused before any data was sent.
    Refused,
    /// Not settled yet: the broker could not be asked whether the destination
    /// committed, so nothing serves until it answers; the source then takes the
    /// release back and serves again (`Aborted`), or learns of the commit
    /// (`Migrated`). `GET /v1/migrations/ID` shows the settled report.
    Pending,
}

/// The source's answer to the owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrateReport {
    /// The migration's id.
    pub migration: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it did not migrate, or what went wrong after the commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The state version the source released (absent when refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Bytes of the sealed snapshot sent.
    #[serde(default)]
    pub snapshot_bytes: u64,
    /// Milliseconds from the request to the outcome.
    pub millis: u64,
    /// Where those milliseconds went, step by step at the source.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Step>,
    /// The certificates, in the order they were signed.
    pub certificates: Vec<Certificate>,
}

/// One step of a migration at the source and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// What the source did: `destination passport`, `quiesce`, `snapshot`, …
    pub step: String,
    /// Milliseconds it took.
    pub millis: u64,
}

/// `POST /v1/migrations` (source to destination): everything the destination needs,
/// authenticated by the release certificate (which binds the snapshot's and the
/// manifest's digests and names the destination's key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// The owner's sealed bundle, base64.
    pub bundle: String,
    /// The sealed snapshot, base64.
    pub snapshot: String,
    /// The source's release certificate.
    pub release: Certificate,
}
