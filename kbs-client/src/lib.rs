//! Client of the KBS attestation protocol (RCAR 0.4.0, as the Confidential Containers
//! Trustee KBS speaks it), used by PID1 to fetch keys.
//!
//! Trust-chain place: inside the guest TCB; it carries evidence out and key material in.
//! Key material only ever exists in memory, is zeroised on drop, and is never logged.
//!
//! This slice has the parts a handshake is made of: the report-data rule
//! ([`report_data`]), the TEE key the broker encrypts to ([`tee_key`]) and JWE
//! decryption ([`jwe`]). The HTTP flow arrives next in the key-release issue.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod jwe;
pub mod report_data;
pub mod tee_key;

/// The protocol version the Trustee KBS accepts (an exact match).
pub const KBS_PROTOCOL_VERSION: &str = "0.4.0";

pub use kbs_types;
