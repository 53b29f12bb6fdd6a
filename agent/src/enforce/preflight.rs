//! What the kernel offers, checked before anything relies on it, so a missing layer
//! is named instead of silently absent.

use std::path::Path;

/// The active LSMs, in call order (`/sys/kernel/security/lsm`).
pub fn active_lsms() -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string("/sys/kernel/security/lsm")
        .map_err(|e| format!("read /sys/kernel/security/lsm: {e}"))?;
    Ok(text
        .trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

/// `Ok` when `lsm` is active, else the reason naming the list.
pub fn require_lsm(lsm: &str) -> Result<(), String> {
    let active = active_lsms()?;
    if active.iter().any(|l| l == lsm) {
        Ok(())
    } else {
        Err(format!(
            "not active in this kernel (lsm={})",
            active.join(",")
        ))
    }
}

/// The kernel's BTF, which CO-RE relocation needs.
pub fn require_btf() -> Result<(), String> {
    let p = Path::new("/sys/kernel/btf/vmlinux");
    if p.exists() {
        Ok(())
    } else {
        Err(format!(
            "{} is missing (kernel without CONFIG_DEBUG_INFO_BTF)",
            p.display()
        ))
    }
}

/// The Landlock ABI version the kernel offers (0: none).
pub fn landlock_abi() -> u32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: landlock_create_ruleset(NULL, 0, VERSION) only returns the ABI version
    // (or -1 with errno); it reads no memory, since the attribute pointer is NULL.
    #[allow(unsafe_code)]
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    u32::try_from(v).unwrap_or(0)
}

/// `Ok` when Landlock is active with at least ABI `abi`.
pub fn require_landlock(abi: u8) -> Result<(), String> {
    require_lsm("landlock")?;
    let have = landlock_abi();
    if have >= u32::from(abi) {
        Ok(())
    } else {
        Err(format!(
            "the kernel offers ABI {have}, the confinement needs {abi}"
        ))
    }
}
