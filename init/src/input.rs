//! The ACPI power button, read from the kernel's evdev devices.
//!
//! The kernel turns the ACPI power-button event into a `KEY_POWER` press on an input
//! device; nothing else in the guest listens, so PID1 does.

use std::fs::{self, File};
use std::io::Read as _;
use std::os::unix::fs::OpenOptionsExt as _;

use nix::fcntl::OFlag;
use tracing::debug;

/// `struct input_event` on x86_64: timeval (16) + type (2) + code (2) + value (4).
const EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 0x01;
const KEY_POWER: u16 = 116;

/// Open every `/dev/input/event*` device, non-blocking. Missing devices are not an
/// error: a guest without ACPI buttons is shut down by signals only.
pub fn open_event_devices() -> Vec<File> {
    let Ok(entries) = fs::read_dir("/dev/input") else {
        return Vec::new();
    };
    let mut devices = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("event") {
            continue;
        }
        match fs::OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_NONBLOCK.bits() | OFlag::O_CLOEXEC.bits())
            .open(entry.path())
        {
            Ok(f) => devices.push(f),
            Err(e) => debug!(device = ?entry.path(), error = %e, "cannot open input device"),
        }
    }
    devices
}

/// Drain pending events; true when the power button was pressed.
pub fn power_pressed(device: &mut File) -> bool {
    let mut buf = [0u8; EVENT_SIZE * 16];
    let mut pressed = false;
    while let Ok(n) = device.read(&mut buf) {
        if n == 0 {
            break;
        }
        pressed |= buf[..n].chunks_exact(EVENT_SIZE).any(is_power_press);
    }
    pressed
}

fn is_power_press(event: &[u8]) -> bool {
    let kind = u16::from_ne_bytes([event[16], event[17]]);
    let code = u16::from_ne_bytes([event[18], event[19]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    kind == EV_KEY && code == KEY_POWER && value == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: u16, code: u16, value: i32) -> [u8; EVENT_SIZE] {
        let mut e = [0u8; EVENT_SIZE];
        e[16..18].copy_from_slice(&kind.to_ne_bytes());
        e[18..20].copy_from_slice(&code.to_ne_bytes());
        e[20..24].copy_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn only_a_power_key_press_counts() {
        assert!(is_power_press(&event(EV_KEY, KEY_POWER, 1)));
        assert!(!is_power_press(&event(EV_KEY, KEY_POWER, 0)));
        assert!(!is_power_press(&event(EV_KEY, 28, 1)));
        assert!(!is_power_press(&event(0, KEY_POWER, 1)));
    }
}
