//! Agent supervision: start it, restart it with backoff, reap every child, and turn
//! SIGTERM/SIGINT/SIGPWR or the power button into an orderly shutdown.
//!
//! One thread, one `poll` over a signalfd and the input devices: no signal handler runs
//! arbitrary code, and a timer for the next restart is just the poll timeout.

use std::fs::File;
use std::os::fd::AsFd as _;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::config::{Config, SuperviseConfig};
use crate::input;
use crate::power::console;

/// The signals PID1 handles through its signalfd (blocked for normal delivery).
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGPWR,
    ] {
        set.add(s);
    }
    set
}

/// Why supervision ended without a shutdown request.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    /// The agent could not be started at all.
    #[error("start agent {path} failed")]
    Spawn {
        /// The binary.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The agent kept failing.
    #[error("agent failed {failures} times in a row, last {last}")]
    Crashing {
        /// Consecutive failures.
        failures: u32,
        /// How the last run ended.
        last: String,
    },
    /// The signalfd or poll failed.
    #[error("wait for events failed")]
    Wait(#[source] nix::Error),
}

struct Running {
    pid: Pid,
    started: Instant,
}

/// Supervises one agent process.
pub struct Supervisor<'a> {
    config: &'a Config,
    signals: SignalFd,
    inputs: Vec<File>,
    agent: Option<Running>,
    failures: u32,
    next_start: Option<Instant>,
    extra_args: Vec<String>,
}

impl<'a> Supervisor<'a> {
    /// `signals` must already be blocked (see [`handled_signals`]).
    pub fn new(config: &'a Config) -> Result<Self, SuperviseError> {
        let signals = SignalFd::with_flags(
            &handled_signals(),
            SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC,
        )
        .map_err(SuperviseError::Wait)?;
        Ok(Supervisor {
            config,
            signals,
            inputs: input::open_event_devices(),
            agent: None,
            failures: 0,
            next_start: Some(Instant::now()),
            extra_args: Vec::new(),
        })
    }

    /// Append `args` to the agent's configured arguments (what this boot produced:
    /// the secrets descriptor, the state volume).
    pub fn with_args(mut self, args: Vec<String>) -> Self {
        self.extra_args = args;
        self
    }

    /// Run until a shutdown is requested (returns its reason) or the agent cannot be
    /// kept alive (returns the error). On return the agent has been stopped.
    pub fn run(&mut self) -> Result<&'static str, SuperviseError> {
        loop {
            if self.agent.is_none()
                && let Some(at) = self.next_start
                && Instant::now() >= at
            {
                self.start()?;
            }
            if let Some(reason) = self.wait_events()? {
                self.stop_agent();
                return Ok(reason);
            }
        }
    }

    fn start(&mut self) -> Result<(), SuperviseError> {
        let mut cmd = Command::new(&self.config.agent_path);
        let child = crate::sys::unblock_signals_in_child(&mut cmd)
            .args(&self.config.agent_args)
            .args(&self.extra_args)
            .env_clear()
            .env("RUST_LOG", &self.config.log)
            .spawn()
            .map_err(|source| SuperviseError::Spawn {
                path: self.config.agent_path.display().to_string(),
                source,
            })?;
        let pid = Pid::from_raw(child.id() as i32);
        // PID1 reaps with waitpid(-1); the Child handle is not used for waiting.
        drop(child);
        info!(pid = pid.as_raw(), "agent started");
        self.agent = Some(Running {
            pid,
            started: Instant::now(),
        });
        self.next_start = None;
        Ok(())
    }

    /// Wait for one batch of events; `Some(reason)` when a shutdown was requested.
    fn wait_events(&mut self) -> Result<Option<&'static str>, SuperviseError> {
        let timeout = match self.next_start {
            Some(at) => {
                let ms = at.saturating_duration_since(Instant::now()).as_millis();
                PollTimeout::try_from(ms.min(60_000) as i32).unwrap_or(PollTimeout::NONE)
            }
            None => PollTimeout::NONE,
        };
        let (signal_ready, input_ready) = {
            let mut fds = Vec::with_capacity(1 + self.inputs.len());
            fds.push(PollFd::new(self.signals.as_fd(), PollFlags::POLLIN));
            for dev in &self.inputs {
                fds.push(PollFd::new(dev.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::Error::EINTR) => return Ok(None),
                Err(e) => return Err(SuperviseError::Wait(e)),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let inputs: Vec<usize> = fds[1..]
                .iter()
                .enumerate()
                .filter(|(_, fd)| ready(fd))
                .map(|(i, _)| i)
                .collect();
            (ready(&fds[0]), inputs)
        };
        for i in input_ready {
            if input::power_pressed(&mut self.inputs[i]) {
                return Ok(Some("power button"));
            }
        }
        if signal_ready {
            while let Some(info) = self.signals.read_signal().map_err(SuperviseError::Wait)? {
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => self.reap()?,
                    Ok(Signal::SIGTERM) => return Ok(Some("SIGTERM")),
                    Ok(Signal::SIGINT) => return Ok(Some("ctrl-alt-del")),
                    Ok(Signal::SIGPWR) => return Ok(Some("SIGPWR")),
                    _ => {}
                }
            }
        }
        Ok(None)
    }

    /// Reap every exited child; schedule a restart when the agent was one of them.
    fn reap(&mut self) -> Result<(), SuperviseError> {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return Ok(()),
                Ok(s) => s,
            };
            let Some(pid) = status.pid() else { continue };
            if self.agent.as_ref().is_some_and(|a| a.pid == pid) {
                let Some(ran) = self.agent.take() else {
                    continue;
                };
                self.agent_exited(describe(status), ran.started.elapsed())?;
            }
        }
    }

    fn agent_exited(&mut self, how: String, ran: Duration) -> Result<(), SuperviseError> {
        let s: &SuperviseConfig = &self.config.supervise;
        if ran >= Duration::from_millis(s.stable_after_ms) {
            self.failures = 0;
        }
        self.failures += 1;
        if self.failures >= s.max_failures {
            return Err(SuperviseError::Crashing {
                failures: self.failures,
                last: how,
            });
        }
        let delay = backoff(s, self.failures);
        warn!(status = %how, failures = self.failures, delay_ms = delay.as_millis() as u64, "agent exited, restarting");
        console(&format!(
            "cvm-init: agent {how}; restart in {} ms",
            delay.as_millis()
        ));
        self.next_start = Some(Instant::now() + delay);
        Ok(())
    }

    /// SIGTERM the agent, give it the grace period, then let PID1's final kill do the rest.
    fn stop_agent(&mut self) {
        let Some(agent) = self.agent.take() else {
            return;
        };
        let _ = kill(agent.pid, Signal::SIGTERM);
        let deadline =
            Instant::now() + Duration::from_millis(self.config.supervise.shutdown_grace_ms);
        while Instant::now() < deadline {
            match waitpid(agent.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(20)),
                _ => {
                    info!("agent stopped");
                    return;
                }
            }
        }
        warn!("agent did not stop within the grace period; killing it");
    }
}

/// `initial * 2^(failures-1)`, capped.
fn backoff(s: &SuperviseConfig, failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(20);
    let ms = s
        .initial_backoff_ms
        .saturating_mul(1u64 << shift)
        .min(s.max_backoff_ms);
    Duration::from_millis(ms)
}

fn describe(status: WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with status {code}"),
        WaitStatus::Signaled(_, sig, _) => format!("killed by {sig}"),
        other => format!("ended ({other:?})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let s = SuperviseConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 500,
            ..SuperviseConfig::default()
        };
        let ms: Vec<u128> = (1..=5).map(|f| backoff(&s, f).as_millis()).collect();
        assert_eq!(ms, vec![100, 200, 400, 500, 500]);
        assert_eq!(backoff(&s, 1000).as_millis(), 500);
    }
}
