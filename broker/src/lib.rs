//! The project's own key broker: the Trustee KBS protocol 0.4.0 with real verifiers.
//!
//! Trust-chain place: the relying party. It verifies guest evidence against reference
//! values before it releases any resource.
//!
//! This slice has the parts the server stands on: the resource path rule
//! ([`resource_path`]), the crash-safe store of resources, reference values and
//! policies ([`store`]), admin authentication ([`admin_token`]), the EAR-shaped
//! attestation token ([`token`]), the Rego resource policy ([`policy`]) and RCAR
//! sessions ([`session`]). The HTTP server,
//! verification and release arrive next in the key-release issue; until then no command
//! offers the broker.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod admin_token;
pub mod policy;
pub mod resource_path;
pub mod session;
pub mod store;
pub mod token;
