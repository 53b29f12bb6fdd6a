//! Measurements, evidence and verification shared by the guest and the relying party.
//!
//! Trust-chain place: inside the guest this crate records what PID1 and the agent
//! measure (the runtime event log) and extends it into a measurement register (a TPM
//! PCR today; TDX RTMR3 and SNP report data arrive with the attestation issue). On the
//! host and in the broker the same types replay a log to the value a register must hold.
//!
//! Inputs: bytes to measure and a register to extend. Outputs: the event log (JSON,
//! modelled on the TCG canonical event log) and the register value.
//!
//! Non-goals: this crate does not decide what is trusted; reference values and policy
//! live with the verifier.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod azure;
pub mod baseline;
pub mod binding;
pub mod digest;
pub mod eventlog;
pub mod register;
#[cfg(any(feature = "snp", feature = "verifier"))]
pub mod snp;
pub mod tcg;
pub mod tdx;
pub mod tpm;
pub mod tsm;

pub use digest::{Digests, HashAlg};
pub use eventlog::{EventContent, EventKind, EventLog, EventLogError, EventRecord};
pub use register::{MeasurementRegister, RegisterError, RegisterId, RuntimeLog};
