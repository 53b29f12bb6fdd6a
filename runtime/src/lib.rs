//! Sealed Wasm workloads: the bundle format, the workload policy, and the contract with
//! `cvm-wasm`, the per-workload runtime process (wasmtime; its own binary behind the
//! `engine` feature, so host tools and the agent never compile the engine).
//!
//! Trust-chain place: the bundle is made on the owner's machine (`cvm seal`) and opened
//! inside the guest by the agent, which verifies the owner's signature, measures the
//! manifest, fetches the content key from the broker, then decrypts and checks the
//! Wasm, in that order ([`bundle`]).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod bundle;
pub mod certificate;
#[cfg(feature = "confine")]
pub mod confine;
pub mod confinement;
mod cose;
pub mod launch;
pub mod migration;
pub mod policy;
pub mod snapshot;
