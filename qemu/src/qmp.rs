//! A minimal QMP client: enough to ask the guest to power down (ACPI power button).

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

/// A QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Socket I/O failed.
    #[error("QMP socket {0}")]
    Io(#[from] std::io::Error),
    /// QEMU answered with an error or something unexpected.
    #[error("QMP command {command} failed: {reply}")]
    Command {
        /// The command.
        command: String,
        /// QEMU's reply.
        reply: String,
    },
}

/// Connect, negotiate capabilities, run `command`, return its `return` value.
pub fn execute(socket: &Path, command: &str) -> Result<Value, QmpError> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader, "greeting")?;
    for cmd in ["qmp_capabilities", command] {
        writeln!(writer, "{}", json!({ "execute": cmd }))?;
        let reply = read_reply(&mut reader, cmd)?;
        if cmd == command {
            return Ok(reply.get("return").cloned().unwrap_or(Value::Null));
        }
    }
    Ok(Value::Null)
}

/// Read lines until one that is not an asynchronous event.
fn read_reply(reader: &mut BufReader<UnixStream>, command: &str) -> Result<Value, QmpError> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(QmpError::Command {
                command: command.to_owned(),
                reply: "connection closed".into(),
            });
        }
        let v: Value = serde_json::from_str(&line).map_err(|_| QmpError::Command {
            command: command.to_owned(),
            reply: line.clone(),
        })?;
        if v.get("event").is_some() {
            continue;
        }
        if v.get("error").is_some() {
            return Err(QmpError::Command {
                command: command.to_owned(),
                reply: line,
            });
        }
        return Ok(v);
    }
}
