//! Client of the KBS attestation protocol (RCAR), used by PID1 to fetch keys.
//!
//! Trust-chain place: inside the guest TCB; it carries evidence out and key material in.
//!
//! This crate is an empty skeleton: the client arrives with the key-release issue.
#![forbid(unsafe_code)]
