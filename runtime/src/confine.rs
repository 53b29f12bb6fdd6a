//! The runtime process confines itself, before it compiles or runs any workload code:
//! it joins its workload's cgroup (which puts it under the BPF LSM rules the agent
//! loaded for that cgroup), sets `no_new_privs`, and in enforce mode restricts itself
//! with Landlock as a `HardRequirement` (a kernel without the ABI the confinement
//! names is an error, never a partial sandbox). The order matters: the cgroup first,
//! so that nothing the runtime does afterwards escapes the BPF rules.

use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, AccessNet, CompatLevel, Compatible as _, NetPort, PathBeneath, PathFd,
    RestrictionStatus, Ruleset, RulesetAttr as _, RulesetCreatedAttr as _, RulesetStatus, Scope,
};

use crate::confinement::Confinement;
use crate::policy::Access as Perm;

/// A layer that could not be put in place; the runtime must not go on.
#[derive(Debug, thiserror::Error)]
pub enum ConfineError {
    /// Joining the cgroup failed.
    #[error("cgroup: join {path}: {source}")]
    Cgroup {
        /// The cgroup folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// `prctl(PR_SET_NO_NEW_PRIVS)` failed.
    #[error("no_new_privs: {0}")]
    NoNewPrivs(std::io::Error),
    /// Landlock refused the ruleset or is older than required.
    #[error("landlock: {0}")]
    Landlock(String),
}

/// What was put in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confined {
    /// The cgroup joined.
    pub cgroup: String,
    /// Landlock applied and fully enforced.
    pub landlock: bool,
}

/// Confine the calling process (single-threaded: Landlock restricts the calling thread
/// and what it spawns afterwards, so call this before any thread exists).
pub fn apply(c: &Confinement) -> Result<Confined, ConfineError> {
    let procs = Path::new(&c.cgroup).join("cgroup.procs");
    // "0" moves the writing process itself.
    std::fs::write(&procs, "0").map_err(|source| ConfineError::Cgroup {
        path: c.cgroup.clone(),
        source,
    })?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| ConfineError::NoNewPrivs(e.into()))?;
    if !c.landlock.applied {
        return Ok(Confined {
            cgroup: c.cgroup.clone(),
            landlock: false,
        });
    }
    let status = landlock(c).map_err(|e| ConfineError::Landlock(e.to_string()))?;
    if status.ruleset != RulesetStatus::FullyEnforced {
        return Err(ConfineError::Landlock(format!(
            "not fully enforced ({:?})",
            status.ruleset
        )));
    }
    Ok(Confined {
        cgroup: c.cgroup.clone(),
        landlock: true,
    })
}

fn landlock(c: &Confinement) -> Result<RestrictionStatus, Box<dyn std::error::Error>> {
    // The rights of ABI 6 (what MIN_LANDLOCK_ABI names); a higher `require` is checked
    // by the agent against the kernel before the runtime is started.
    let abi = ABI::V6;
    let all_fs = AccessFs::from_all(abi);
    let read = AccessFs::from_read(abi);
    let write = all_fs & !AccessFs::Execute;
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(all_fs)?
        .handle_access(AccessNet::from_all(abi))?
        .scope(Scope::from_all(abi))?
        .create()?;
    for p in &c.landlock.paths {
        let access = match p.access {
            Perm::Ro => read,
            Perm::Rw => write,
        };
        ruleset = ruleset.add_rule(PathBeneath::new(PathFd::new(&p.path)?, access))?;
    }
    for port in &c.landlock.connect_ports {
        ruleset = ruleset.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
    }
    for port in &c.landlock.bind_ports {
        ruleset = ruleset.add_rule(NetPort::new(*port, AccessNet::BindTcp))?;
    }
    Ok(ruleset.restrict_self()?)
}
