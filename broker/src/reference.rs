//! Reference values the broker appraises evidence against: named documents as
//! `cvm measure --json` writes them, one per accepted build (several may be live at once
//! during a rollout). Each names its `platform`; evidence of a TEE is compared with the
//! references of the platform that TEE attests:
//!
//! | TEE | platform | compared |
//! |---|---|---|
//! | `tpm` | `qemu` | PCR 4, 9, 15 (with the logs, naming the first differing event) |
//! | `snp` | `snp` | the launch measurement |
//! | `tdx` | `tdx` | MRTD |

use cvm_image::measure::qemu::QemuReference;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Reference values that do not load.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    /// Not JSON of the expected shape.
    #[error("reference values {name:?} are malformed: {detail}")]
    Malformed {
        /// The reference's name.
        name: String,
        /// Why.
        detail: String,
    },
    /// A platform we have no comparison for.
    #[error("reference values {name:?} are for platform {platform:?}; known: qemu, snp, tdx")]
    Platform {
        /// The reference's name.
        name: String,
        /// Its platform.
        platform: String,
    },
    /// A name that is not a short identifier.
    #[error("reference name {0:?} must be 1-64 characters of A-Z a-z 0-9 . _ -")]
    Name(String),
}

/// One reference, typed by platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// Direct boot under QEMU with a vTPM.
    Qemu(Box<QemuReference>),
    /// An SEV-SNP launch digest.
    Snp {
        /// The launch measurement.
        measurement: [u8; 48],
    },
    /// A TDX build-time measurement.
    Tdx {
        /// MRTD.
        mrtd: [u8; 48],
    },
}

#[derive(Deserialize)]
struct SnpDoc {
    measurement: String,
}

#[derive(Deserialize)]
struct TdxDoc {
    mrtd: String,
}

fn hex48(name: &str, field: &str, v: &str) -> Result<[u8; 48], ReferenceError> {
    hex::decode(v)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ReferenceError::Malformed {
            name: name.to_owned(),
            detail: format!("{field} is not 48 bytes of hex"),
        })
}

impl Reference {
    /// Type the document `values` named `name`.
    pub fn from_json(name: &str, values: &Value) -> Result<Self, ReferenceError> {
        let malformed = |e: serde_json::Error| ReferenceError::Malformed {
            name: name.to_owned(),
            detail: e.to_string(),
        };
        match values["platform"].as_str().unwrap_or_default() {
            "qemu" => Ok(Reference::Qemu(Box::new(
                serde_json::from_value(values.clone()).map_err(malformed)?,
            ))),
            "snp" => {
                let d: SnpDoc = serde_json::from_value(values.clone()).map_err(malformed)?;
                Ok(Reference::Snp {
                    measurement: hex48(name, "measurement", &d.measurement)?,
                })
            }
            "tdx" => {
                let d: TdxDoc = serde_json::from_value(values.clone()).map_err(malformed)?;
                Ok(Reference::Tdx {
                    mrtd: hex48(name, "mrtd", &d.mrtd)?,
                })
            }
            other => Err(ReferenceError::Platform {
                name: name.to_owned(),
                platform: other.to_owned(),
            }),
        }
    }
}

/// The stored document: every named reference as imported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceDocument {
    /// Name → the `cvm measure --json` output.
    pub references: std::collections::BTreeMap<String, Value>,
}

/// The loaded reference values.
#[derive(Debug, Clone, Default)]
pub struct ReferenceSet {
    entries: Vec<(String, Reference)>,
}

/// Check a reference name.
pub fn check_name(name: &str) -> Result<(), ReferenceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ReferenceError::Name(name.to_owned()))
    }
}

impl ReferenceSet {
    /// Type every reference of `doc`.
    pub fn load(doc: &ReferenceDocument) -> Result<Self, ReferenceError> {
        let mut entries = Vec::new();
        for (name, values) in &doc.references {
            check_name(name)?;
            entries.push((name.clone(), Reference::from_json(name, values)?));
        }
        Ok(Self { entries })
    }

    /// The `qemu` references.
    pub fn qemu(&self) -> impl Iterator<Item = (&str, &QemuReference)> {
        self.entries.iter().filter_map(|(n, r)| match r {
            Reference::Qemu(q) => Some((n.as_str(), q.as_ref())),
            _ => None,
        })
    }

    /// The `snp` launch measurements.
    pub fn snp(&self) -> impl Iterator<Item = (&str, &[u8; 48])> {
        self.entries.iter().filter_map(|(n, r)| match r {
            Reference::Snp { measurement } => Some((n.as_str(), measurement)),
            _ => None,
        })
    }

    /// The `tdx` MRTDs.
    pub fn tdx(&self) -> impl Iterator<Item = (&str, &[u8; 48])> {
        self.entries.iter().filter_map(|(n, r)| match r {
            Reference::Tdx { mrtd } => Some((n.as_str(), mrtd)),
            _ => None,
        })
    }
}
