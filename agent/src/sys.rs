//! Syscalls without a safe wrapper: taking ownership of the descriptor PID1 passed by
//! number, killing a runtime process, and syncing a whole file system.
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd as _, OwnedFd};

/// Own the inherited descriptor `fd` (closed when the result drops).
pub fn take_fd(fd: i32) -> anyhow::Result<OwnedFd> {
    // SAFETY: fcntl(F_GETFD) takes any integer; on a number that is not open it fails
    // with EBADF and has no other effect.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        anyhow::bail!(
            "--secrets-fd {fd} is not an open descriptor: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: `fd` is open (checked above) and PID1 passed it to this process for it
    // alone; `take_fd` runs once at start, before anything else could close or reuse the
    // number, so the returned OwnedFd is its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// SIGKILL process `pid` (a workload runtime the agent started).
pub fn kill(pid: u32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; a pid that
    // has exited makes it fail with ESRCH, which is ignored.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

/// Write everything cached for the file system holding `path` to disk (syncfs(2)): one
/// call instead of an fsync per file when thousands were just written.
pub fn syncfs(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(path)?;
    // SAFETY: syncfs(2) takes a descriptor, open for the call's duration (`f` lives
    // until the end of the function), and touches no memory of ours.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
