//! The shared libraries the guest binaries need, found with the host's `ldd`.
//!
//! The guest binaries are built for the host's glibc target (tss-esapi links libtss2,
//! which has no static build in Debian), so the libraries they load are copied into the
//! initramfs at the paths the dynamic loader searches. libtss2-tctildr opens its TCTI
//! modules with dlopen, which `ldd` cannot see: those are named explicitly.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Libraries loaded with dlopen, keyed by the library that loads them: libtss2-tctildr
/// opens its TCTI module by name at run time.
pub const DLOPENED: &[(&str, &str)] = &[("libtss2-tctildr.so.0", "libtss2-tcti-device.so.0")];

/// Directories searched for [`DLOPENED`] libraries (Debian multiarch layout).
const LIB_DIRS: &[&str] = &["/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu"];

/// A library could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum LibsError {
    /// `ldd` could not run.
    #[error("run ldd on {binary} failed")]
    Ldd {
        /// The binary.
        binary: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// `ldd` reported a missing library.
    #[error("{binary} needs {library}, which is not installed (run ./scripts/setup)")]
    NotFound {
        /// The binary.
        binary: PathBuf,
        /// The library name.
        library: String,
    },
}

/// All libraries (absolute host paths) that `binaries` need, with the [`DLOPENED`]
/// modules of the libraries among them, closed over their own dependencies, sorted.
pub fn resolve(binaries: &[&Path]) -> Result<BTreeSet<PathBuf>, LibsError> {
    let mut found = BTreeSet::new();
    let mut queue: Vec<PathBuf> = binaries.iter().map(|b| b.to_path_buf()).collect();
    while let Some(binary) = queue.pop() {
        for lib in ldd(&binary)? {
            if found.insert(lib.clone()) {
                queue.push(lib.clone());
            }
            for (loader, module) in DLOPENED {
                if lib.file_name().is_some_and(|n| n == *loader) {
                    let path = find_lib(loader, module)?;
                    if found.insert(path.clone()) {
                        queue.push(path);
                    }
                }
            }
        }
    }
    Ok(found)
}

fn find_lib(loader: &str, name: &str) -> Result<PathBuf, LibsError> {
    LIB_DIRS
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
        .ok_or_else(|| LibsError::NotFound {
            binary: PathBuf::from(format!("{loader} (dlopen)")),
            library: name.to_owned(),
        })
}

fn ldd(binary: &Path) -> Result<Vec<PathBuf>, LibsError> {
    let out = Command::new("ldd")
        .arg(binary)
        .env("LC_ALL", "C")
        .output()
        .map_err(|source| LibsError::Ldd {
            binary: binary.to_owned(),
            source,
        })?;
    // `ldd` on a static binary exits 1 with "not a dynamic executable": no libraries.
    let text = String::from_utf8_lossy(&out.stdout);
    parse_ldd(&text).map_err(|library| LibsError::NotFound {
        binary: binary.to_owned(),
        library,
    })
}

/// Parse `ldd` output into library paths; `Err(name)` for a library marked not found.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some((name, rest)) = line.split_once(" => ") {
            if rest.starts_with("not found") {
                return Err(name.trim().to_owned());
            }
            if let Some(path) = rest
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/'))
            {
                libs.push(PathBuf::from(path));
            }
        } else if let Some(path) = line
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            // The dynamic loader itself: "/lib64/ld-linux-x86-64.so.2 (0x...)".
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibtss2-esys.so.0 => /lib/x86_64-linux-gnu/libtss2-esys.so.0 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        let libs = parse_ldd(text).unwrap();
        assert_eq!(
            libs,
            [
                "/lib/x86_64-linux-gnu/libtss2-esys.so.0",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn missing_library_is_named() {
        let text = "\tlibfoo.so.1 => not found\n";
        assert_eq!(parse_ldd(text), Err("libfoo.so.1".to_owned()));
    }
}
