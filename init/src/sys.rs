//! The one place in PID1 that needs `unsafe`: resetting the signal mask in a child
//! between fork and exec.
//!
//! PID1 blocks the signals it reads through its signalfd. A blocked mask survives
//! `execve`, and `std::process::Command` does not reset it (checked: a child of a
//! process with SIGTERM blocked starts with SIGTERM blocked), so without this the agent
//! would never see the SIGTERM of an orderly shutdown.
#![allow(unsafe_code)]

use std::os::unix::process::CommandExt as _;
use std::process::Command;

use nix::sys::signal::{SigSet, SigmaskHow, sigprocmask};

/// Make `cmd` start its child with no signals blocked.
pub fn unblock_signals_in_child(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the forked child before exec. It only calls
    // sigprocmask(2), which is async-signal-safe, touches no heap and takes no locks;
    // `SigSet::empty()` is a stack value built with sigemptyset(3), also safe there.
    unsafe {
        cmd.pre_exec(|| {
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
                .map_err(std::io::Error::from)
        })
    }
}
