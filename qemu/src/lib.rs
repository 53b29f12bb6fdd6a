//! Running the guest: QEMU command lines per platform, a real vTPM from swtpm, QMP for
//! orderly power-down, and a runner that streams the serial console and reports the
//! guest's outcome.
//!
//! Trust-chain place: host side, outside the TCB. The command line shapes the launch
//! measurement (firmware, vCPUs, kernel hashes), so it is generated in one place and
//! unit-tested for every platform, including those that cannot run here.
//!
//! Non-goals: no management of long-lived VMs; one runner owns one VM for its lifetime.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod platform;
pub mod qmp;
pub mod swtpm;
pub mod vm;

pub use platform::{Accel, Boot, Firmware, Platform, SpecError, VmSpec, command_line};
pub use swtpm::{Swtpm, SwtpmError};
pub use vm::{Outcome, RunError, Vm, VmOptions};
