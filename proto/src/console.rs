//! The status lines PID1 and the agent print on the serial console.
//!
//! The host reads the console to learn the guest's outcome, so these lines are a
//! protocol: each starts with a fixed prefix and is printed exactly once per event.

/// Prefix of every status line PID1 prints.
pub const INIT_PREFIX: &str = "cvm-init:";

/// `cvm-init: fatal: <cause>`: PID1 hit an error it cannot recover from and powers off.
pub const INIT_FATAL: &str = "cvm-init: fatal: ";

/// `cvm-init: poweroff: ok (<reason>)`: an orderly shutdown completed.
pub const INIT_POWEROFF_OK: &str = "cvm-init: poweroff: ok";

/// `cvm-init: keys: released by <broker>`: attestation succeeded and the broker
/// released the keys.
pub const INIT_KEYS_RELEASED: &str = "cvm-init: keys: released by ";

/// `cvm-init: state: created|unlocked (boot N of this volume)`.
pub const INIT_STATE: &str = "cvm-init: state: ";

/// `cvm-agent: ready <listen address>`: the agent accepts requests.
pub const AGENT_READY: &str = "cvm-agent: ready ";

/// What the host learnt from one console line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsoleEvent {
    /// The agent is ready and listens on the given guest address.
    AgentReady(String),
    /// PID1 failed with the given cause; the guest powers off.
    Fatal(String),
    /// PID1 completed an orderly shutdown.
    PoweroffOk,
}

/// Classify one console line (without its line ending). Terminal escape sequences are
/// ignored: the firmware clears the screen without a newline, so the first line PID1
/// prints can start with them.
pub fn parse_line(line: &str) -> Option<ConsoleEvent> {
    let clean = strip_escapes(line);
    let line = clean.trim_end_matches('\r');
    if let Some(rest) = line.strip_prefix(AGENT_READY) {
        return Some(ConsoleEvent::AgentReady(rest.trim().to_owned()));
    }
    if let Some(rest) = line.strip_prefix(INIT_FATAL) {
        return Some(ConsoleEvent::Fatal(rest.trim().to_owned()));
    }
    if line.starts_with(INIT_POWEROFF_OK) {
        return Some(ConsoleEvent::PoweroffOk);
    }
    None
}

/// Remove ANSI escape sequences (`ESC [ params final` and two-byte `ESC x`).
fn strip_escapes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next_if_eq(&'[').is_some() {
            // Parameter and intermediate bytes, then one final byte in @..~.
            for p in chars.by_ref() {
                if ('@'..='~').contains(&p) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_status_lines() {
        assert_eq!(
            parse_line("cvm-agent: ready 0.0.0.0:8080\r"),
            Some(ConsoleEvent::AgentReady("0.0.0.0:8080".into()))
        );
        assert_eq!(
            parse_line("cvm-init: fatal: measure agent binary /x failed"),
            Some(ConsoleEvent::Fatal("measure agent binary /x failed".into()))
        );
        assert_eq!(
            parse_line("cvm-init: poweroff: ok (power button)"),
            Some(ConsoleEvent::PoweroffOk)
        );
        assert_eq!(parse_line("[    1.0] cvm-init: fatal: x"), None);
        assert_eq!(parse_line("random kernel line"), None);
        // As seen on the serial console after OVMF: screen clears glued to the line.
        assert_eq!(
            parse_line(
                "\u{1b}[2J\u{1b}[01;01H\u{1b}[=3h\u{1b}[2J\u{1b}[01;01Hcvm-init: fatal: kernel parameter cvm.tpm=maybe"
            ),
            Some(ConsoleEvent::Fatal("kernel parameter cvm.tpm=maybe".into()))
        );
    }
}
