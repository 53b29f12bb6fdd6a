//! `probe ACTION [ARG...]`: one action per run, its outcome on stdout, failures on
//! stderr with exit code 1. The runtime tests drive it to check that each capability
//! is granted exactly as the policy says.

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let result: Result<String, String> = match arg(1).as_str() {
        "print" => Ok(arg(2)),
        "args" => Ok(args[1..].join(" ")),
        "env" => {
            let mut vars: Vec<String> = std::env::vars().map(|(k, v)| format!("{k}={v}")).collect();
            vars.sort();
            Ok(vars.join(","))
        }
        "read" => std::fs::read_to_string(arg(2)).map_err(|e| format!("read {}: {e}", arg(2))),
        "write" => std::fs::write(arg(2), arg(3))
            .map(|()| format!("wrote {}", arg(2)))
            .map_err(|e| format!("write {}: {e}", arg(2))),
        "ls" => std::fs::read_dir(arg(2))
            .map_err(|e| format!("ls {}: {e}", arg(2)))
            .map(|d| {
                let mut names: Vec<String> = d
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                names.join(",")
            }),
        "connect" => connect(&arg(2)),
        "loop" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "alloc" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hoard);
            }
        }
        "sleep" => {
            let ms: u64 = arg(2).parse().unwrap_or(0);
            std::thread::sleep(std::time::Duration::from_millis(ms));
            Ok(format!("slept {ms} ms"))
        }
        "exit" => return ExitCode::from(arg(2).parse::<u8>().unwrap_or(0)),
        other => Err(format!("unknown action {other:?}")),
    };
    match result {
        Ok(out) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn connect(addr: &str) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.write_all(b"ping\n")
        .map_err(|e| format!("send to {addr}: {e}"))?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)
        .map_err(|e| format!("receive from {addr}: {e}"))?;
    Ok(format!("connected {addr}: {}", reply.trim()))
}
