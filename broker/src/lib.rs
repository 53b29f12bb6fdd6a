//! The project's own key broker: the Trustee KBS protocol 0.4.0 with real verifiers.
//!
//! Trust-chain place: the relying party. It verifies guest evidence against reference
//! values before it releases any resource.
//!
//! This crate is an empty skeleton: the broker arrives with the key-release issue, and
//! until then no command offers it.
#![forbid(unsafe_code)]
