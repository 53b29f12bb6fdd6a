//! `cvm`'s exit codes: stable, so scripts can tell failures apart.

/// The guest failed (PID1 fatal error, or it stopped without a status line).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GuestFailed(pub String);

/// A verification check failed; the report says which.
#[derive(Debug, thiserror::Error)]
#[error("verification failed (see the checks above)")]
pub struct VerificationFailed;

/// Exit codes, documented in `cvm --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Success.
    Ok = 0,
    /// A host-side error: bad arguments, missing files, tools that failed.
    Error = 1,
    /// Bad command-line usage (clap's own code).
    Usage = 2,
    /// The guest failed or stopped without reporting an orderly power-off.
    GuestFailed = 3,
    /// A verification check failed.
    VerificationFailed = 4,
}

/// Help text listing the codes.
pub const HELP: &str = "Exit codes: 0 success, 1 host-side error, 2 usage error, 3 guest failed, 4 verification failed.";

impl ExitCode {
    /// The code for a top-level error.
    pub fn of(err: &anyhow::Error) -> ExitCode {
        if err.downcast_ref::<GuestFailed>().is_some() {
            ExitCode::GuestFailed
        } else if err.downcast_ref::<VerificationFailed>().is_some() {
            ExitCode::VerificationFailed
        } else {
            ExitCode::Error
        }
    }
}
