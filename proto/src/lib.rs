//! Wire types shared by the guest (PID1, agent) and the host (`cvm`, the VM tests).
//!
//! Internal crate: serde types and string constants only, no I/O. Both sides import
//! them so that a format has exactly one definition.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod agent;
pub mod console;
