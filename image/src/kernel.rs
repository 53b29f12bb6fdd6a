//! The guest kernel: Debian's Linux 6.12 source, `make tinyconfig`, our fragment,
//! `make olddefconfig`, a check that every required option survived, then `bzImage`.
//!
//! Builds are cached outside the source tree by (source package version, fragment,
//! required list, build recipe): a second build with the same inputs is a file copy.

use std::collections::BTreeMap;
use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use sha2::{Digest as _, Sha256};
use tracing::info;

/// The kernel configuration fragment, applied on top of `tinyconfig`.
pub const FRAGMENT: &str = include_str!("../../kernel-config/cvm.config");
/// Options that must be present after `olddefconfig`.
pub const REQUIRED: &str = include_str!("../../kernel-config/required.txt");
/// The source package version the kernel is pinned to.
pub const PINNED_SOURCE_VERSION: &str = include_str!("../../kernel-config/source-version");
/// The Debian package holding the source tarball.
pub const SOURCE_PACKAGE: &str = "linux-source-6.12";
/// The source tarball that package installs.
pub const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
/// Bump when the build recipe below changes, so stale cache entries are not reused.
const RECIPE_VERSION: &str = "cvm-kernel-recipe-4";

/// A kernel build or check failed.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The source package is not installed.
    #[error(
        "kernel source {SOURCE_TARBALL} is missing (install {SOURCE_PACKAGE}: run ./scripts/setup)"
    )]
    NoSource,
    /// A required option did not survive `olddefconfig`.
    #[error(
        "kernel option {option} did not survive olddefconfig (found: {found}); a dependency of it is missing from kernel-config/cvm.config"
    )]
    OptionDropped {
        /// The option line as required.
        option: String,
        /// What the final config has instead.
        found: String,
    },
    /// A line of the required list is not `CONFIG_X=value`.
    #[error("kernel-config/required.txt line {0:?} is not CONFIG_NAME=value")]
    BadRequiredLine(String),
    /// A build step failed.
    #[error("kernel build step `{step}` failed (log: {log})")]
    Step {
        /// The command.
        step: String,
        /// The build log.
        log: PathBuf,
    },
    /// A prebuilt kernel is not a bzImage.
    #[error("kernel {path} is not a bzImage: {reason}")]
    NotBzImage {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// File system error.
    #[error("{op} {path} failed")]
    Io {
        /// What was attempted.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KernelError {
    let path = path.to_owned();
    move |source| KernelError::Io { op, path, source }
}

/// A kernel ready to go into an image.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The bzImage.
    pub bzimage: PathBuf,
    /// Where it came from: `linux-source-6.12 <version>` or `prebuilt`.
    pub source: String,
    /// SHA-256 of the final `.config`, when we built it.
    pub config_sha256: Option<String>,
}

/// Check that `path` is an x86 bzImage with an EFI stub (OVMF boots it as a PE image).
pub fn check_bzimage(path: &Path) -> Result<(), KernelError> {
    let bytes = fs::read(path).map_err(io("read kernel", path))?;
    check_bzimage_bytes(path, &bytes)
}

/// [`check_bzimage`] on bytes already read from `path`.
pub fn check_bzimage_bytes(path: &Path, bytes: &[u8]) -> Result<(), KernelError> {
    let not = |reason| KernelError::NotBzImage {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() < 0x1000 {
        return Err(not("file is too small"));
    }
    if &bytes[0x202..0x206] != b"HdrS" {
        return Err(not("no 'HdrS' setup header at offset 0x202"));
    }
    if &bytes[..2] != b"MZ" {
        return Err(not(
            "no EFI stub (PE 'MZ' header); build with CONFIG_EFI_STUB",
        ));
    }
    Ok(())
}

/// Use a prebuilt bzImage as it is.
pub fn prebuilt(path: &Path) -> Result<Kernel, KernelError> {
    check_bzimage(path)?;
    Ok(Kernel {
        bzimage: path.to_owned(),
        source: "prebuilt".to_owned(),
        config_sha256: None,
    })
}

/// The installed version of the source package.
pub fn source_version() -> Result<String, KernelError> {
    if !Path::new(SOURCE_TARBALL).exists() {
        return Err(KernelError::NoSource);
    }
    let out = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", SOURCE_PACKAGE])
        .output()
        .map_err(io("run dpkg-query for", Path::new(SOURCE_PACKAGE)))?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || version.is_empty() {
        return Err(KernelError::NoSource);
    }
    Ok(version)
}

/// The cache key of a build: every input that changes the bzImage.
pub fn cache_key(source_version: &str) -> String {
    let mut h = Sha256::new();
    for part in [RECIPE_VERSION, source_version, FRAGMENT, REQUIRED] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..12])
}

/// Hold the cache entry `dir` (created if missing) until the returned file is dropped.
/// One build per entry at a time: a second `cvm build` (another script, or a test
/// while check-reproducible builds) would otherwise delete the first one's build
/// folder under it; it waits here, then finds the kernel cached. The lock goes with
/// the file handle, so a killed build never leaves it held.
fn lock_entry(dir: &Path) -> Result<fs::File, KernelError> {
    fs::create_dir_all(dir).map_err(io("create", dir))?;
    let path = dir.join("lock");
    let lock = fs::File::create(&path).map_err(io("create", &path))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "kernel: another build of this kernel is running; waiting for it ({})",
            path.display()
        );
        lock.lock().map_err(io("lock", &path))?;
    }
    Ok(lock)
}

/// Build (or fetch from `cache_dir`) the kernel. `jobs` is make's `-j`.
pub fn build(cache_dir: &Path, jobs: usize) -> Result<Kernel, KernelError> {
    let version = source_version()?;
    let pinned = PINNED_SOURCE_VERSION.trim();
    if version != pinned {
        eprintln!(
            "kernel: warning: building from {SOURCE_PACKAGE} {version}, not the pinned {pinned} \
             (kernel-config/source-version); its measurements differ from a pinned build"
        );
    }
    let dir = cache_dir.join("kernel").join(cache_key(&version));
    let _entry = lock_entry(&dir)?;
    let bzimage = dir.join("bzImage");
    let config = dir.join("config");
    let source = format!("{SOURCE_PACKAGE} {version}");
    if bzimage.exists() && config.exists() {
        info!(cache = %dir.display(), "kernel: cached");
        let config_sha256 = sha256_file(&config)?;
        return Ok(Kernel {
            bzimage,
            source,
            config_sha256: Some(config_sha256),
        });
    }
    let build = dir.join("build");
    if build.exists() {
        fs::remove_dir_all(&build).map_err(io("remove stale build dir", &build))?;
    }
    fs::create_dir_all(&build).map_err(io("create", &build))?;
    let log = dir.join("build.log");
    let started = Instant::now();
    eprintln!("kernel: building {source} (log: {})", log.display());

    step(
        &log,
        &build,
        "extract source",
        Command::new("tar").args(["xf", SOURCE_TARBALL, "--strip-components=1"]),
    )?;
    let env = build_env(&build);
    step(
        &log,
        &build,
        "make tinyconfig",
        make(&build, &env).arg("tinyconfig"),
    )?;
    let dot_config = build.join(".config");
    let mut text = fs::read_to_string(&dot_config).map_err(io("read", &dot_config))?;
    text.push_str(&fragment_as_config(FRAGMENT));
    fs::write(&dot_config, text).map_err(io("write", &dot_config))?;
    step(
        &log,
        &build,
        "make olddefconfig",
        make(&build, &env).arg("olddefconfig"),
    )?;
    let final_config = fs::read_to_string(&dot_config).map_err(io("read", &dot_config))?;
    check_required(&final_config, REQUIRED)?;
    eprintln!(
        "kernel: configuration checked ({} required options present); compiling with -j{jobs}",
        required_count()
    );
    step(
        &log,
        &build,
        "make bzImage",
        make(&build, &env).arg(format!("-j{jobs}")).arg("bzImage"),
    )?;

    let built = build.join("arch/x86/boot/bzImage");
    check_bzimage(&built)?;
    // Copy into place last: a half-finished build never looks cached.
    fs::copy(&dot_config, &config).map_err(io("copy", &config))?;
    let tmp = dir.join("bzImage.tmp");
    fs::copy(&built, &tmp).map_err(io("copy", &tmp))?;
    fs::rename(&tmp, &bzimage).map_err(io("rename", &bzimage))?;
    fs::remove_dir_all(&build).map_err(io("remove build dir", &build))?;
    eprintln!("kernel: built in {:.0?}", started.elapsed());
    Ok(Kernel {
        bzimage,
        source,
        config_sha256: Some(sha256_file(&config)?),
    })
}

/// Fixed build identity, so the same inputs give the same kernel. The timestamp is a
/// constant rather than `SOURCE_DATE_EPOCH`: the kernel is a function of the cache key
/// alone, so a cached kernel and a fresh build of the same inputs are identical. The
/// build folder is mapped to `.` in the debug information (DW_AT_comp_dir is absolute
/// even in a tree built in place), which the linker's build id covers.
fn build_env(build: &Path) -> Vec<(&'static str, String)> {
    let prefix_map = format!("-fdebug-prefix-map={}=.", build.display());
    vec![
        ("KCFLAGS", prefix_map.clone()),
        ("KAFLAGS", prefix_map),
        ("KBUILD_BUILD_TIMESTAMP", "@0".to_owned()),
        ("KBUILD_BUILD_USER", "cvm".to_owned()),
        ("KBUILD_BUILD_HOST", "cvm".to_owned()),
        ("KBUILD_BUILD_VERSION", "1".to_owned()),
        ("LC_ALL", "C".to_owned()),
    ]
}

fn make(dir: &Path, env: &[(&'static str, String)]) -> Command {
    let mut c = Command::new("make");
    c.current_dir(dir);
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// Run one build step with its output appended to `log`; long steps print progress.
fn step(log: &Path, dir: &Path, name: &str, cmd: &mut Command) -> Result<(), KernelError> {
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io("open", log))?;
    use std::io::Write as _;
    let _ = writeln!(file, "=== {name}");
    let mut child = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io("start", Path::new(name)))?;
    let stderr = child.stderr.take();
    let err_log = log.to_owned();
    let err_thread = std::thread::spawn(move || {
        if let (Some(s), Ok(mut f)) = (stderr, fs::OpenOptions::new().append(true).open(&err_log)) {
            for line in BufReader::new(s).lines().map_while(Result::ok) {
                let _ = writeln!(f, "{line}");
            }
        }
    });
    let started = Instant::now();
    let mut last = Instant::now();
    let mut units = 0usize;
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
            if line.trim_start().starts_with("CC") {
                units += 1;
            }
            if last.elapsed().as_secs() >= 15 {
                eprintln!(
                    "kernel: {name}: {units} units compiled, {:.0?} elapsed",
                    started.elapsed()
                );
                last = Instant::now();
            }
        }
    }
    let status = child.wait().map_err(io("wait for", Path::new(name)))?;
    let _ = err_thread.join();
    if !status.success() {
        return Err(KernelError::Step {
            step: name.to_owned(),
            log: log.to_owned(),
        });
    }
    Ok(())
}

/// Turn the fragment into `.config` syntax (`CONFIG_X=n` → `# CONFIG_X is not set`).
pub fn fragment_as_config(fragment: &str) -> String {
    let mut out = String::from("\n# --- cvm fragment ---\n");
    for line in fragment
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CONFIG_"))
    {
        match line.strip_suffix("=n") {
            Some(name) => out.push_str(&format!("# {name} is not set\n")),
            None => out.push_str(&format!("{line}\n")),
        }
    }
    out
}

fn required_count() -> usize {
    REQUIRED
        .lines()
        .filter(|l| l.starts_with("CONFIG_"))
        .count()
}

/// Fail with the first required option that the final `.config` lacks.
pub fn check_required(config: &str, required: &str) -> Result<(), KernelError> {
    let mut have = BTreeMap::new();
    for line in config.lines() {
        if let Some((k, v)) = line.split_once('=') {
            have.insert(k.trim(), v.trim());
        }
    }
    for line in required.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .filter(|(k, _)| k.starts_with("CONFIG_"))
            .ok_or_else(|| KernelError::BadRequiredLine(line.to_owned()))?;
        match have.get(name) {
            Some(v) if *v == value => {}
            Some(v) => {
                return Err(KernelError::OptionDropped {
                    option: line.to_owned(),
                    found: format!("{name}={v}"),
                });
            }
            None => {
                return Err(KernelError::OptionDropped {
                    option: line.to_owned(),
                    found: "not set".to_owned(),
                });
            }
        }
    }
    Ok(())
}

fn sha256_file(path: &Path) -> Result<String, KernelError> {
    let bytes = fs::read(path).map_err(io("read", path))?;
    Ok(hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_build_of_an_entry_waits_for_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_entry(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let path = dir.path().to_owned();
        let second = std::thread::spawn(move || {
            let held = lock_entry(&path).unwrap();
            tx.send(()).unwrap();
            drop(held);
        });
        // Held: the second waits (however long; it is released only below).
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err()
        );
        drop(first);
        rx.recv().unwrap();
        second.join().unwrap();
    }

    #[test]
    fn fragment_n_becomes_not_set() {
        let c = fragment_as_config("# c\nCONFIG_A=y\nCONFIG_B=n\nCONFIG_C=\"x\"\n");
        assert!(c.contains("CONFIG_A=y\n"));
        assert!(c.contains("# CONFIG_B is not set\n"));
        assert!(c.contains("CONFIG_C=\"x\"\n"));
        assert!(!c.contains("# c\n"));
    }

    #[test]
    fn dropped_option_fails_with_its_name() {
        let config = "CONFIG_BPF=y\n# CONFIG_BPF_LSM is not set\nCONFIG_LSM=\"yama\"\n";
        let err = check_required(config, "CONFIG_BPF=y\nCONFIG_BPF_LSM=y\n").unwrap_err();
        assert!(err.to_string().contains("CONFIG_BPF_LSM=y"), "{err}");
        assert!(err.to_string().contains("not set"), "{err}");
        let err = check_required(config, "CONFIG_LSM=\"landlock,bpf\"").unwrap_err();
        assert!(err.to_string().contains("CONFIG_LSM=\"yama\""), "{err}");
        check_required(config, "# comment\nCONFIG_BPF=y\n").unwrap();
        assert!(matches!(
            check_required(config, "BPF=y"),
            Err(KernelError::BadRequiredLine(_))
        ));
    }

    #[test]
    fn every_required_option_is_in_the_fragment_or_implied() {
        // The required list may name options selected by others (TSM_REPORTS), but a
        // typo in either file should not pass unnoticed: every required option's name
        // must appear in the fragment or be a known selected symbol.
        let selected = [
            "CONFIG_TSM_REPORTS",
            "CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS",
            // Selected by EXT4_FS when FS_ENCRYPTION is on.
            "CONFIG_FS_ENCRYPTION_ALGS",
        ];
        for line in REQUIRED.lines().filter(|l| l.starts_with("CONFIG_")) {
            let name = line.split('=').next().unwrap();
            assert!(
                FRAGMENT.contains(&format!("{name}=")) || selected.contains(&name),
                "{name} is required but not in the fragment"
            );
        }
    }

    #[test]
    fn prebuilt_garbage_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        fs::write(&p, vec![0u8; 8192]).unwrap();
        assert!(matches!(prebuilt(&p), Err(KernelError::NotBzImage { .. })));
        assert!(matches!(
            prebuilt(&dir.path().join("missing")),
            Err(KernelError::Io { .. })
        ));
    }
}
