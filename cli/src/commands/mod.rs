//! One module per `cvm` subcommand.

pub mod attest;
pub mod broker;
pub mod build;
pub mod demo;
pub mod eventlog;
pub mod export;
pub mod firmware;
pub mod initdata;
pub mod measure;
pub mod migrate;
pub mod run;
pub mod seal;
pub mod status;
pub mod workload;

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

/// Print `value` as the one JSON document on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Check that the image's artifacts are present and are the ones its manifest lists.
pub fn verify_image(image: &Path, manifest: &cvm_image::Manifest) -> anyhow::Result<()> {
    for a in [&manifest.kernel, &manifest.initramfs] {
        let path = image.join(&a.file);
        let bytes = std::fs::read(&path)
            .with_context(|| format!("image file {} is missing", path.display()))?;
        let actual = cvm_image::sha256_hex(&bytes);
        if actual != a.sha256 {
            anyhow::bail!(
                "image file {} is corrupt: sha256 {actual} does not match the manifest's {}",
                path.display(),
                a.sha256
            );
        }
    }
    Ok(())
}

/// Write `bytes` to a new file (never an existing one) readable by its owner only,
/// durably: for keys.
pub fn write_new_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {} (it must not exist)", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("write {}", path.display()))
}

/// Read an image folder's manifest.
pub fn read_manifest(image: &Path) -> anyhow::Result<cvm_image::Manifest> {
    let path = image.join(cvm_image::files::MANIFEST);
    let bytes = std::fs::read(&path).with_context(|| {
        format!(
            "read image manifest {} (run `cvm build` first)",
            path.display()
        )
    })?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("image manifest {} is malformed", path.display()))
}
