//! Sealed Wasm workloads: the bundle format and the workload policy (this slice), and
//! the wasmtime engine (next, behind a feature so host tools never compile it).
//!
//! Trust-chain place: the bundle is made on the owner's machine (`cvm seal`) and opened
//! inside the guest by the agent, which verifies the owner's signature, measures the
//! manifest, fetches the content key from the broker, then decrypts and checks the
//! Wasm, in that order ([`bundle`]).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod bundle;
pub mod policy;
