//! Client of the KBS attestation protocol (RCAR 0.4.0, as the Confidential Containers
//! Trustee KBS speaks it), used by PID1 to fetch keys.
//!
//! Trust-chain place: inside the guest TCB; it carries evidence out and key material in.
//! Key material only ever exists in memory, is zeroised on drop, and is never logged.
//!
//! - [`client`]: the handshake and resource fetch, over [`http`] (rustls, pinned CA).
//! - [`passport`]: the broker's attestation token checked as a passport for a key.
//! - [`counter`]: the broker's monotonic counters (cvm's extension).
//! - [`attester`]: what a TEE contributes (`tpm` with feature `tpm`; `sample` for dev).
//! - The wire rules: [`report_data`] (JCS + SHA-384), [`tee_key`] and [`jwe`],
//!   [`initdata`] (TOML and its digest).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod attester;
pub mod client;
pub mod counter;
pub mod http;
pub mod initdata;
pub mod jwe;
pub mod passport;
pub mod report_data;
pub mod resource_path;
pub mod tee_key;

/// The protocol version the Trustee KBS accepts (an exact match).
pub const KBS_PROTOCOL_VERSION: &str = "0.4.0";

pub use kbs_types;
