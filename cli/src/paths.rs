//! Where `cvm` keeps things on the host.

use std::path::PathBuf;

/// The cache root: `$CVM_CACHE`, else `$XDG_CACHE_HOME/cvm`, else `~/.cache/cvm`.
/// Kernel builds and the swtpm local CA live here, outside any source tree.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CVM_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("cvm");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/tmp"), PathBuf::from);
    home.join(".cache/cvm")
}

/// The default image folder, relative to the working directory.
pub const DEFAULT_IMAGE_DIR: &str = "build/image";

/// A guest binary (`cvm-init`, `cvm-agent`, `cvm-wasm`): in `$CVM_GUEST_BIN`, else in the `guest`
/// profile folder beside the running `cvm`'s own (`target/guest/` next to
/// `target/release/`), where `cargo build --profile guest` puts them.
pub fn guest_binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os("CVM_GUEST_BIN") {
        return PathBuf::from(dir).join(name);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|d| d.join("guest").join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The example workload (`./scripts/build-workloads`): in the `wasm32-wasip2` folder
/// beside the running `cvm`'s profile folder (`target/wasm32-wasip2/release/hello.wasm`).
pub fn example_workload() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.parent()?
                .parent()
                .map(|d| d.join("wasm32-wasip2/release/hello.wasm"))
        })
        .unwrap_or_else(|| PathBuf::from("hello.wasm"))
}

/// The swtpm local CA folder: its certificate signs every vTPM's EK certificate.
pub fn swtpm_ca_dir() -> PathBuf {
    cache_dir().join("swtpm-localca")
}
