//! Sealed Wasm workloads: the bundle format, the workload policy and the wasmtime engine.
//!
//! Trust-chain place: runs inside the guest under the agent; the agent measures each
//! bundle's manifest before its key is requested.
//!
//! This crate is an empty skeleton: the bundle format and the runtime arrive with the
//! workload issue. Nothing here pretends to run a workload.
#![forbid(unsafe_code)]
