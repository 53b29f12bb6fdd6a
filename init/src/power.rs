//! Leaving the guest: orderly power-off and the fail-closed path.
//!
//! PID1 must never exit (the kernel would panic), never drop to a shell, and never leave
//! a workload running after a fatal error: every way out ends in `reboot(POWER_OFF)`.

use std::error::Error;
use std::fmt::Write as _;
use std::io::Write as _;
use std::thread::sleep;
use std::time::Duration;

use cvm_proto::console::{INIT_FATAL, INIT_POWEROFF_OK};
use nix::sys::reboot::{RebootMode, reboot};
use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::{Pid, sync};

/// Print `cvm-init: fatal: <cause: cause: …>`, stop everything, power off.
pub fn fatal(err: &dyn Error) -> ! {
    let mut line = String::from(INIT_FATAL);
    let _ = write!(line, "{err}");
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(line, ": {cause}");
        source = cause.source();
    }
    console(&line);
    terminate_all();
    power_off()
}

/// Print `cvm-init: poweroff: ok (<reason>)` and power off. Call after the agent stopped.
pub fn poweroff_ok(reason: &str) -> ! {
    terminate_all();
    console(&format!("{INIT_POWEROFF_OK} ({reason})"));
    power_off()
}

/// A status line, straight to the console, bypassing the log filter.
pub fn console(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// SIGKILL every process but PID1 and reap them.
fn terminate_all() {
    // kill(-1) reaches every process PID1 may signal, which is all of them but itself.
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    for _ in 0..100 {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::StillAlive) => sleep(Duration::from_millis(10)),
            Ok(_) => {}
            Err(_) => break, // ECHILD: nobody left
        }
    }
}

fn power_off() -> ! {
    sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    // reboot() only returns on error; PID1 may not exit, so wait for the end.
    loop {
        sleep(Duration::from_secs(3600));
    }
}
