//! `cvm-escape`: the test image's runtime in place of `cvm-wasm` (`cvm build --runtime`),
//! playing a runtime process that a workload has taken over. It speaks the launch
//! contract (status socket, `confined`, `ready`, `exited`), confines itself exactly as
//! `cvm-wasm` does (`cvm_runtime::confine`), and runs the actions listed in its
//! policy's `args`, in order, printing one line per action:
//!
//! `ATTEMPT <phase> <action> -> ok|<ERRNO>`
//!
//! where phase is `control` before the `confine` action and `confined` after it.
//! Actions: `pid`, `confine`, `sleep:S`, `open-read:P`, `open-write:P`, `exec:P`,
//! `exec-dropped:DIR`, `open-bench:P:N`, `connect:A`, `bind:A`, `ptrace-parent`, `ptrace-child`,
//! `kill:PID[:SIG]`, `kill-parent[:SIG]`, `kill-child`, `fork-orphan`, `mount:DIR`, `bpf`, `module`,
//! `cgroup-escape`.
//!
//! Never part of a product image: its image's measurements differ from the real one's.
#![allow(unsafe_code)] // the raw syscalls an attacker would make

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

use cvm_runtime::confinement::Confinement;
use cvm_runtime::launch::{LaunchSpec, StatusEvent};
use cvm_runtime::policy::WorkloadPolicy;

fn main() -> ExitCode {
    let Ok(spec) = LaunchSpec::parse(std::env::args().skip(1)) else {
        eprintln!("cvm-escape: bad arguments");
        return ExitCode::from(2);
    };
    let mut status = spec
        .status
        .as_ref()
        .and_then(|p| UnixStream::connect(p).ok());
    let mut send = |ev: &StatusEvent| {
        if let Some(s) = status.as_mut() {
            let mut line = serde_json::to_string(ev).unwrap_or_default();
            line.push('\n');
            let _ = s.write_all(line.as_bytes());
        }
    };
    let policy = match std::fs::read_to_string(&spec.policy)
        .map_err(|e| e.to_string())
        .and_then(|t| WorkloadPolicy::from_yaml(&t).map_err(|e| e.to_string()))
    {
        Ok(p) => p,
        Err(e) => {
            send(&StatusEvent::Failed { reason: e });
            return ExitCode::FAILURE;
        }
    };
    for p in &policy.preopens {
        let _ = std::fs::create_dir_all(spec.state.join(&p.dir));
    }
    let mut phase = "control";
    let mut child: Option<libc::pid_t> = None;
    for action in &policy.args {
        if action == "confine" {
            // A child forked before would stay outside the workload's cgroup.
            kill_child(&mut child);
            let c = Confinement::derive(&spec.name, &policy, &spec.state);
            match cvm_runtime::confine::apply(&c) {
                Ok(done) => {
                    send(&StatusEvent::Confined {
                        cgroup: done.cgroup,
                        landlock: done.landlock,
                    });
                    send(&StatusEvent::Ready { listen: None });
                }
                Err(e) => {
                    send(&StatusEvent::Failed {
                        reason: format!("confinement {e}"),
                    });
                    return ExitCode::FAILURE;
                }
            }
            phase = "confined";
            println!("CONFINED");
            continue;
        }
        let result = attempt(action, &mut child);
        println!("ATTEMPT {phase} {action} -> {}", describe(result));
    }
    kill_child(&mut child);
    send(&StatusEvent::Exited { code: 0 });
    ExitCode::SUCCESS
}

fn describe(r: std::io::Result<()>) -> String {
    match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => match e.raw_os_error() {
            Some(n) => errno_name(n),
            None => format!("error ({e})"),
        },
    }
}

fn errno_name(n: i32) -> String {
    let name = match n {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EINVAL => "EINVAL",
        libc::ENOSYS => "ENOSYS",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        _ => return format!("errno {n}"),
    };
    name.to_owned()
}

fn check(rc: libc::c_long) -> std::io::Result<()> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn attempt(action: &str, child: &mut Option<libc::pid_t>) -> std::io::Result<()> {
    let (verb, arg) = action.split_once(':').unwrap_or((action, ""));
    let addr = || -> std::io::Result<SocketAddr> {
        arg.parse()
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    };
    let signal = |s: &str| s.parse::<i32>().unwrap_or(0);
    match verb {
        "pid" => {
            println!("PID {}", std::process::id());
            Ok(())
        }
        "open-bench" => {
            // `open-bench:PATH:N`: open and close PATH N times (the enforcement benchmark).
            let (path, n) = arg.rsplit_once(':').unwrap_or((arg, "10000"));
            let n: u32 = n.parse().unwrap_or(10_000);
            let start = std::time::Instant::now();
            for _ in 0..n {
                drop(std::fs::File::open(path)?);
            }
            let secs = start.elapsed().as_secs_f64();
            println!(
                "BENCH opens_per_s={:.0} n={n} path={path}",
                f64::from(n) / secs
            );
            Ok(())
        }
        "sleep" => {
            std::thread::sleep(Duration::from_secs(arg.parse().unwrap_or(1)));
            Ok(())
        }
        "open-read" => std::fs::File::open(arg).map(drop),
        "open-write" => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(arg)
            .map(drop),
        "exec" => std::process::Command::new(arg)
            .arg("--version")
            .output()
            .map(drop),
        "exec-dropped" => {
            let dropped = std::path::Path::new(arg).join("dropped");
            std::fs::copy("/proc/self/exe", &dropped)?;
            std::fs::set_permissions(&dropped, std::fs::Permissions::from_mode(0o755))?;
            std::process::Command::new(&dropped).output().map(drop)
        }
        "connect" => TcpStream::connect_timeout(&addr()?, Duration::from_secs(3)).map(drop),
        "bind" => TcpListener::bind(addr()?).map(drop),
        "ptrace-parent" => ptrace(std::os::unix::process::parent_id() as libc::pid_t),
        "ptrace-child" => {
            let pid = fork_sleeper(child)?;
            ptrace(pid)
        }
        "kill" => {
            let (pid, sig) = arg.split_once(':').unwrap_or((arg, "0"));
            let pid: libc::pid_t = pid.parse().unwrap_or(0);
            // SAFETY: kill(2) takes plain integers.
            check(unsafe { libc::kill(pid, signal(sig)) }.into())
        }
        "kill-parent" => {
            let pid = std::os::unix::process::parent_id() as libc::pid_t;
            // SAFETY: kill(2) takes plain integers.
            check(unsafe { libc::kill(pid, signal(arg)) }.into())
        }
        "fork-orphan" => {
            // A child left behind on purpose: it must not outlive this workload.
            let pid = fork_sleeper(&mut None)?;
            println!("CHILD {pid}");
            Ok(())
        }
        "kill-child" => {
            let pid = fork_sleeper(child)?;
            // SAFETY: kill(2) takes plain integers (signal 0: existence only).
            check(unsafe { libc::kill(pid, 0) }.into())
        }
        "mount" => {
            let dir = std::ffi::CString::new(arg)?;
            // SAFETY: NUL-terminated strings that outlive the call; no data argument.
            let rc = unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    dir.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            check(rc.into())?;
            // SAFETY: as above.
            unsafe { libc::umount(dir.as_ptr()) };
            Ok(())
        }
        "bpf" => {
            // BPF_MAP_CREATE of a 1-entry array: key 4 bytes, value 4 bytes.
            let mut attr = [0u32; 32];
            attr[0] = 2; // BPF_MAP_TYPE_ARRAY
            attr[1] = 4;
            attr[2] = 4;
            attr[3] = 1;
            // SAFETY: `attr` is a zeroed bpf_attr-sized buffer that outlives the call.
            let fd = unsafe {
                libc::syscall(
                    libc::SYS_bpf,
                    0,
                    attr.as_mut_ptr(),
                    std::mem::size_of_val(&attr),
                )
            };
            check(fd)?;
            // SAFETY: the descriptor the call returned, ours to close.
            unsafe { libc::close(fd as i32) };
            Ok(())
        }
        "module" => {
            // SAFETY: init_module with no image; the kernel reads nothing through the
            // NULL pointer when it refuses.
            check(unsafe {
                libc::syscall(
                    libc::SYS_init_module,
                    std::ptr::null::<u8>(),
                    0usize,
                    c"".as_ptr(),
                )
            })
        }
        "cgroup-escape" => std::fs::write("/sys/fs/cgroup/cvm-agent/cgroup.procs", "0"),
        _ => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

/// SIGKILL the current child, if any.
fn kill_child(child: &mut Option<libc::pid_t>) {
    if let Some(pid) = child.take() {
        // SAFETY: kill(2) on our own child; plain integers.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// A new child that only sleeps (the previous one is killed: a child forked before
/// `confine` stays outside the workload's cgroup).
fn fork_sleeper(child: &mut Option<libc::pid_t>) -> std::io::Result<libc::pid_t> {
    kill_child(child);
    // SAFETY: this process is single-threaded; the child only calls async-signal-safe
    // functions (pause, _exit).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if pid == 0 {
        loop {
            // SAFETY: pause(2) takes nothing.
            unsafe { libc::pause() };
        }
    }
    *child = Some(pid);
    Ok(pid)
}

fn ptrace(pid: libc::pid_t) -> std::io::Result<()> {
    // SAFETY: PTRACE_ATTACH/DETACH take a pid and null pointers.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_ATTACH,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    check(rc)?;
    let mut st = 0;
    // SAFETY: waiting for the stop the attach caused; `st` outlives the call.
    unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
    // SAFETY: as above.
    unsafe {
        libc::ptrace(
            libc::PTRACE_DETACH,
            pid,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
        )
    };
    Ok(())
}
