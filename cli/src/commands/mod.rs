//! One module per `cvm` subcommand.

pub mod build;
pub mod demo;
pub mod eventlog;
pub mod run;
pub mod status;

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;

/// Print `value` as the one JSON document on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
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
