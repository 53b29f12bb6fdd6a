//! The firmware's TCG PC Client event log (crypto-agile format, TCG PC Client Platform
//! Firmware Profile §10): what OVMF, the shim or the kernel's EFI stub measured into
//! PCRs 0-9 before PID1 ran. The guest kernel exposes it as
//! `/sys/kernel/security/tpm0/binary_bios_measurements`; the verifier parses it,
//! replays it against the quoted PCRs, and compares chosen events with reference values.
//! Untrusted bytes: bounded, never panics.

pub mod event;

pub use event::{EventType, FirmwareEvent, FirmwareLog, FirmwareLogError};
