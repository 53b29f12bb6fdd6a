//! The runtime event log: what PID1 and the agent measured, in order.
//!
//! The JSON form follows the TCG canonical event log (CEL-JSON): each record has a
//! `recnum`, the register index (`pcr`), the `digests` per bank and a typed `content`.
//! Our records use `content_type: "cvm"`. Replaying the digests of one bank from an
//! all-zero register must give the register's current value; [`EventLog::replay`] does
//! exactly that and nothing else.

use serde::{Deserialize, Serialize};

use crate::digest::{Digests, HashAlg};
use crate::register::RegisterId;

/// The `content_type` of every record this project writes.
pub const CONTENT_TYPE: &str = "cvm";

/// What a record measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// The PID1 binary itself (`/init`).
    InitBinary,
    /// The agent binary PID1 starts.
    AgentBinary,
    /// PID1's configuration file, as baked into the initramfs.
    InitConfig,
    /// The `cvm.*` kernel parameters, space-joined in command-line order.
    KernelParams,
    /// A sealed workload's signed manifest, measured by the agent before it fetches the
    /// workload's key (subject: `name version owner=KID`; the digest is the manifest's).
    WorkloadManifest,
    /// How a measured workload ended: refused after its manifest was measured, failed,
    /// exited, stopped or removed by its owner (subject: `NAME OUTCOME: detail`; the
    /// digest is the subject's). Restarts are not recorded, so a workload cannot grow
    /// the log.
    WorkloadOutcome,
    /// The appliance-wide enforcement baseline PID1 loaded before the agent started
    /// (subject: `sha256:DIGEST HOOKS`; the digest is the canonical baseline document's).
    EnforcementBaseline,
    /// A workload's effective confinement (baseline + its own rules, every layer),
    /// measured before its runtime starts and before its key is fetched (subject:
    /// `NAME mode=MODE`; the digest is the canonical confinement document's).
    WorkloadConfinement,
    /// The first kernel-enforcement event of one kind for one workload (or for the
    /// baseline): `NAME denied|audited HOOK detail`. Later ones of that kind are only
    /// counted and logged, so a workload cannot grow the log.
    EnforcementEvent,
}

/// The typed content of a record: what was measured and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventContent {
    /// What kind of object was measured.
    pub kind: EventKind,
    /// The object: a path for files, the measured text itself for parameters.
    pub subject: String,
}

/// One digest of a record, in one bank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestEntry {
    /// The bank's algorithm.
    #[serde(rename = "hashAlg")]
    pub hash_alg: HashAlg,
    /// Lower-case hex of the digest.
    pub digest: String,
}

/// One measurement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRecord {
    /// Position in the log, from 0, without gaps.
    pub recnum: u64,
    /// Index of the register the digest was extended into.
    pub pcr: u32,
    /// The digest of the measured bytes in every bank.
    pub digests: Vec<DigestEntry>,
    /// Always [`CONTENT_TYPE`] for records we write.
    pub content_type: String,
    /// What was measured.
    pub content: EventContent,
}

impl EventRecord {
    /// The record's digest for `alg`, decoded.
    pub fn digest(&self, alg: HashAlg) -> Result<Vec<u8>, EventLogError> {
        let entry = self.digests.iter().find(|d| d.hash_alg == alg).ok_or(
            EventLogError::MissingDigest {
                recnum: self.recnum,
                alg,
            },
        )?;
        let bytes = hex::decode(&entry.digest).map_err(|_| EventLogError::BadDigest {
            recnum: self.recnum,
            alg,
        })?;
        if bytes.len() != alg.digest_len() {
            return Err(EventLogError::BadDigest {
                recnum: self.recnum,
                alg,
            });
        }
        Ok(bytes)
    }
}

/// The whole log and the register it mirrors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLog {
    /// The register every record was extended into.
    pub register: RegisterId,
    /// The records, in the order they were extended.
    pub records: Vec<EventRecord>,
}

/// A log that does not replay or does not parse.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    /// The JSON is not an event log.
    #[error("event log is not valid JSON of the expected shape")]
    Parse(#[source] serde_json::Error),
    /// Record numbers must count up from 0.
    #[error("event log record {found} is out of order: expected recnum {expected}")]
    OutOfOrder {
        /// The recnum that should have come next.
        expected: u64,
        /// The recnum found.
        found: u64,
    },
    /// A record was extended into a register other than the log's.
    #[error(
        "event log record {recnum} names register {pcr}, but the log mirrors register {expected}"
    )]
    WrongRegister {
        /// The record.
        recnum: u64,
        /// Its register index.
        pcr: u32,
        /// The log's register index.
        expected: u32,
    },
    /// A record has no digest for the bank being replayed.
    #[error("event log record {recnum} has no {alg:?} digest")]
    MissingDigest {
        /// The record.
        recnum: u64,
        /// The bank.
        alg: HashAlg,
    },
    /// A digest is not hex of the right length.
    #[error("event log record {recnum} has a malformed {alg:?} digest")]
    BadDigest {
        /// The record.
        recnum: u64,
        /// The bank.
        alg: HashAlg,
    },
    /// The replayed value differs from the register.
    #[error("register mismatch: log replays to {replayed}, register holds {actual}")]
    RegisterMismatch {
        /// Hex of the replayed value.
        replayed: String,
        /// Hex of the register's value.
        actual: String,
    },
}

impl EventLog {
    /// An empty log for `register`.
    pub fn new(register: RegisterId) -> Self {
        EventLog {
            register,
            records: Vec::new(),
        }
    }

    /// Parse a log from its JSON form.
    pub fn parse(json: &[u8]) -> Result<Self, EventLogError> {
        serde_json::from_slice(json).map_err(EventLogError::Parse)
    }

    /// Append a record for `digests`; returns it.
    pub fn append(&mut self, pcr: u32, digests: &Digests, content: EventContent) -> &EventRecord {
        let recnum = self.records.len() as u64;
        let digests = [HashAlg::Sha256, HashAlg::Sha384]
            .into_iter()
            .map(|alg| DigestEntry {
                hash_alg: alg,
                digest: hex::encode(digests.get(alg)),
            })
            .collect();
        self.records.push(EventRecord {
            recnum,
            pcr,
            digests,
            content_type: CONTENT_TYPE.to_owned(),
            content,
        });
        &self.records[self.records.len() - 1]
    }

    /// Replay the `alg` bank from an all-zero register; returns the final value.
    pub fn replay(&self, alg: HashAlg) -> Result<Vec<u8>, EventLogError> {
        let expected_pcr = self.register.index();
        let mut value = vec![0u8; alg.digest_len()];
        for (i, record) in self.records.iter().enumerate() {
            if record.recnum != i as u64 {
                return Err(EventLogError::OutOfOrder {
                    expected: i as u64,
                    found: record.recnum,
                });
            }
            if let Some(expected) = expected_pcr
                && record.pcr != expected
            {
                return Err(EventLogError::WrongRegister {
                    recnum: record.recnum,
                    pcr: record.pcr,
                    expected,
                });
            }
            value = alg.extend(&value, &record.digest(alg)?);
        }
        Ok(value)
    }

    /// Check that the log replays to `actual` in bank `alg`.
    pub fn verify_replay(&self, alg: HashAlg, actual: &[u8]) -> Result<(), EventLogError> {
        let replayed = self.replay(alg)?;
        if replayed != actual {
            return Err(EventLogError::RegisterMismatch {
                replayed: hex::encode(replayed),
                actual: hex::encode(actual),
            });
        }
        Ok(())
    }

    /// The first record of `kind`, if any.
    pub fn find(&self, kind: EventKind) -> Option<&EventRecord> {
        self.records.iter().find(|r| r.content.kind == kind)
    }

    /// Every record of `kind`, in order.
    pub fn all(&self, kind: EventKind) -> impl Iterator<Item = &EventRecord> {
        self.records.iter().filter(move |r| r.content.kind == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EventLog {
        let mut log = EventLog::new(RegisterId::TpmPcr { index: 15 });
        for (kind, data) in [
            (EventKind::InitBinary, b"init".as_slice()),
            (EventKind::AgentBinary, b"agent".as_slice()),
        ] {
            log.append(
                15,
                &Digests::of(data),
                EventContent {
                    kind,
                    subject: "x".into(),
                },
            );
        }
        log
    }

    #[test]
    fn replay_matches_manual_extend() {
        let log = sample();
        let mut v = vec![0u8; 32];
        for data in [b"init".as_slice(), b"agent".as_slice()] {
            v = HashAlg::Sha256.extend(&v, &HashAlg::Sha256.hash(data));
        }
        assert_eq!(log.replay(HashAlg::Sha256).unwrap(), v);
        log.verify_replay(HashAlg::Sha256, &v).unwrap();
    }

    #[test]
    fn json_round_trip_and_golden_shape() {
        let log = sample();
        let json = serde_json::to_value(&log).unwrap();
        assert_eq!(
            json["register"],
            serde_json::json!({"kind": "tpm-pcr", "index": 15})
        );
        assert_eq!(json["records"][0]["content"]["kind"], "init-binary");
        assert_eq!(json["records"][0]["digests"][0]["hashAlg"], "sha256");
        assert_eq!(json["records"][0]["content_type"], "cvm");
        let back = EventLog::parse(json.to_string().as_bytes()).unwrap();
        assert_eq!(back, log);
    }

    #[test]
    fn tampered_digest_is_rejected() {
        let log = sample();
        let good = log.replay(HashAlg::Sha256).unwrap();
        let mut tampered = log.clone();
        tampered.records[1].digests[0].digest = hex::encode(HashAlg::Sha256.hash(b"evil"));
        let err = tampered.verify_replay(HashAlg::Sha256, &good).unwrap_err();
        assert!(
            matches!(err, EventLogError::RegisterMismatch { .. }),
            "{err}"
        );
    }

    #[test]
    fn reordered_or_dropped_records_are_rejected() {
        let log = sample();
        let mut swapped = log.clone();
        swapped.records.swap(0, 1);
        assert!(matches!(
            swapped.replay(HashAlg::Sha256),
            Err(EventLogError::OutOfOrder {
                expected: 0,
                found: 1
            })
        ));
        let mut dropped = log.clone();
        dropped.records.remove(0);
        assert!(dropped.replay(HashAlg::Sha256).is_err());
    }

    #[test]
    fn record_for_another_register_is_rejected() {
        let mut log = sample();
        log.records[0].pcr = 16;
        assert!(matches!(
            log.replay(HashAlg::Sha384),
            Err(EventLogError::WrongRegister { recnum: 0, .. })
        ));
    }

    #[test]
    fn malformed_digest_is_rejected() {
        let mut log = sample();
        log.records[0].digests[1].digest = "abcd".into();
        assert!(matches!(
            log.replay(HashAlg::Sha384),
            Err(EventLogError::BadDigest { recnum: 0, .. })
        ));
    }
}
