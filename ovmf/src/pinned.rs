//! The SEV-SNP and TDX firmware, pinned by package version and sha256.
//!
//! Debian's `ovmf` has no SEV or TDX build; `ovmf-amdsev` and `ovmf-inteltdx` exist only
//! in sid, which drops old versions. So [`fetch`] looks in the cache first, then at local
//! copies of the `.deb` (such as `../shared/firmware`), then asks Debian for the exact
//! pinned version (a private apt configuration; the system's apt state is not touched).
//! Every `.deb` and every extracted image must match its pinned sha256, or it is refused,
//! so the order only decides speed and whether the network is needed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest as _, Sha256};

/// A firmware image inside a pinned Debian package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedFirmware {
    /// Package name.
    pub package: &'static str,
    /// Exact package version.
    pub version: &'static str,
    /// sha256 of the `.deb`.
    pub deb_sha256: &'static str,
    /// Path of the image inside the package.
    pub path: &'static str,
    /// sha256 of the image.
    pub sha256: &'static str,
}

/// `OVMF.amdsev.fd`: SEV, SEV-ES and SEV-SNP, with the kernel hashes table.
pub const AMDSEV: PinnedFirmware = PinnedFirmware {
    package: "ovmf-amdsev",
    version: "2026.08+ds-2",
    deb_sha256: "92c9b6d15e4eeb371938c3f99080c1a8fc057dfd6bc0509d37f8b615e9edebfb",
    path: "usr/share/ovmf/OVMF.amdsev.fd",
    sha256: "3e4fd0b3fe3b2dbe481c3d9e99418a034174f26cbe1f55aa212b0f18c12d2d6f",
};

/// `OVMF.inteltdx.ms.fd`: TDX, varstore built in, Secure Boot on with Microsoft keys.
pub const INTELTDX: PinnedFirmware = PinnedFirmware {
    package: "ovmf-inteltdx",
    version: "2026.08+ds-2",
    deb_sha256: "87123a9bf4dc1af7bbc48257a9b3db5933ff695167476d4fa48b705da1011fb1",
    path: "usr/share/ovmf/OVMF.inteltdx.ms.fd",
    sha256: "a265075b4147a096109e501e76196df1ec8a18659c26f7401492c597ec88f312",
};

/// Where [`fetch`] may look.
#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Ask Debian (sid) for the pinned version.
    pub download: bool,
    /// Folders that may hold `<package>_<version>_all.deb`.
    pub local_dirs: Vec<PathBuf>,
}

/// No acceptable copy of a pinned firmware was found.
#[derive(Debug, thiserror::Error)]
#[error("no copy of {package} {version} with the pinned sha256 was found: {}", tried.join("; "))]
pub struct FetchError {
    /// The package.
    pub package: &'static str,
    /// Its pinned version.
    pub version: &'static str,
    /// What was tried and why each was refused.
    pub tried: Vec<String>,
}

impl PinnedFirmware {
    /// File name of the image.
    pub fn file_name(&self) -> &'static str {
        self.path.rsplit('/').next().unwrap_or(self.path)
    }

    fn deb_name(&self) -> String {
        format!("{}_{}_all.deb", self.package, self.version)
    }
}

/// Lower-case hex sha256 of a file, or why it could not be read.
fn sha256_file(path: &Path) -> Result<String, String> {
    fs::read(path)
        .map(|b| hex::encode(Sha256::digest(b)))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Return a verified copy of `fw` in `cache_dir`, obtaining it as [`FetchOptions`] allow.
pub fn fetch(
    fw: &PinnedFirmware,
    cache_dir: &Path,
    opts: &FetchOptions,
) -> Result<PathBuf, FetchError> {
    let dir = cache_dir
        .join("firmware")
        .join(format!("{}_{}", fw.package, fw.version));
    let target = dir.join(fw.file_name());
    let mut tried = Vec::new();
    match sha256_file(&target) {
        Ok(h) if h == fw.sha256 => return Ok(target),
        Ok(h) => tried.push(format!(
            "cached {} has sha256 {h}, discarded",
            target.display()
        )),
        Err(_) => {}
    }
    let local = opts.local_dirs.iter().map(|d| d.join(fw.deb_name()));
    let mut debs: Vec<PathBuf> = local.filter(|p| p.exists()).collect();
    if debs.is_empty() {
        tried.extend(
            opts.local_dirs
                .iter()
                .map(|d| format!("{}: no {}", d.display(), fw.deb_name())),
        );
        if opts.download {
            match download(fw, &dir) {
                Ok(deb) => debs.push(deb),
                Err(e) => tried.push(format!("download: {e}")),
            }
        }
    }
    for deb in debs {
        match sha256_file(&deb) {
            Ok(h) if h == fw.deb_sha256 => {}
            Ok(h) => {
                tried.push(format!(
                    "{} has sha256 {h}, not the pinned {}",
                    deb.display(),
                    fw.deb_sha256
                ));
                continue;
            }
            Err(e) => {
                tried.push(e);
                continue;
            }
        }
        match extract(fw, &deb, &dir, &target) {
            Ok(()) => return Ok(target),
            Err(e) => tried.push(e),
        }
    }
    Err(FetchError {
        package: fw.package,
        version: fw.version,
        tried,
    })
}

/// Unpack the image from a verified `.deb` and check its own hash before it is kept.
fn extract(fw: &PinnedFirmware, deb: &Path, dir: &Path, target: &Path) -> Result<(), String> {
    let unpack = dir.join("unpack");
    let _ = fs::remove_dir_all(&unpack);
    fs::create_dir_all(&unpack).map_err(|e| format!("{}: {e}", unpack.display()))?;
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&unpack)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("dpkg-deb: {e}"))?;
    if !status.success() {
        return Err(format!("dpkg-deb -x {} failed", deb.display()));
    }
    let image = unpack.join(fw.path);
    let h = sha256_file(&image)?;
    if h != fw.sha256 {
        return Err(format!(
            "{} in {} has sha256 {h}, not the pinned {}",
            fw.path,
            deb.display(),
            fw.sha256
        ));
    }
    let tmp = target.with_extension("tmp");
    fs::copy(&image, &tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    fs::rename(&tmp, target).map_err(|e| format!("{}: {e}", target.display()))?;
    let _ = fs::remove_dir_all(&unpack);
    Ok(())
}

/// `apt-get download` of the exact version from sid, with apt state kept under `dir`.
fn download(fw: &PinnedFirmware, dir: &Path) -> Result<PathBuf, String> {
    let apt = dir.join("apt");
    for d in ["lists/partial", "cache/archives/partial", "debs"] {
        fs::create_dir_all(apt.join(d)).map_err(|e| format!("{}: {e}", apt.join(d).display()))?;
    }
    let list = apt.join("sources.list");
    fs::write(
        &list,
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main\n",
    )
    .map_err(|e| format!("{}: {e}", list.display()))?;
    let opts = [
        format!("Dir::Etc::SourceList={}", list.display()),
        "Dir::Etc::SourceParts=/dev/null".to_owned(),
        format!("Dir::State::Lists={}", apt.join("lists").display()),
        format!("Dir::Cache={}", apt.join("cache").display()),
        "Debug::NoLocking=true".to_owned(),
    ];
    let apt_get = |args: &[&str], cwd: &Path| -> Result<(), String> {
        let mut c = Command::new("apt-get");
        c.current_dir(cwd).arg("-qq");
        for o in &opts {
            c.arg("-o").arg(o);
        }
        let out = c
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("apt-get: {e}"))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(format!(
                "apt-get {} failed: {}",
                args.join(" "),
                err.lines().last().unwrap_or("")
            ));
        }
        Ok(())
    };
    apt_get(&["update"], &apt)?;
    let debs = apt.join("debs");
    apt_get(
        &["download", &format!("{}={}", fw.package, fw.version)],
        &debs,
    )?;
    let found = fs::read_dir(&debs)
        .map_err(|e| format!("{}: {e}", debs.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{}_", fw.package)))
        })
        .ok_or_else(|| "apt-get download produced no .deb".to_owned())?;
    // Kept under its canonical name in one folder for both packages, so that folder can
    // serve later as a local copy (CVM_FIRMWARE_DEBS).
    let shared = dir.parent().unwrap_or(dir).join("debs");
    fs::create_dir_all(&shared).map_err(|e| format!("{}: {e}", shared.display()))?;
    let kept = shared.join(fw.deb_name());
    fs::rename(&found, &kept).map_err(|e| format!("{}: {e}", kept.display()))?;
    Ok(kept)
}
