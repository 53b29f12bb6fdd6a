//! The Badge Request Tool, a sealed `wasi:http` service holding employees' personal
//! data: employees request building badges (name, employee id, site, access zones),
//! managers approve or reject them, security lists active badges, revokes them and
//! reads the audit trail. The records and the audit trail live in the preopened folder
//! `/data`, on the appliance's encrypted state volume, and every acknowledged change is
//! on disk before the response is sent (`store.rs`). The API is in `api.rs`.
//!
//! Configuration (the policy's env): `CALLER_KEY`, the Ed25519 public key callers'
//! tokens are signed with (`caller.rs`; required); `SITES`, comma-separated sites
//! badges are issued for (default: Zurich, Geneva, Lausanne, Bern).

pub mod api;
pub mod caller;
pub mod model;
pub mod store;

#[cfg(target_arch = "wasm32")]
mod component;

/// The sites from `SITES`, or the defaults.
pub fn sites(env: Option<&str>) -> Vec<String> {
    match env {
        Some(s) if !s.trim().is_empty() => s
            .split(',')
            .map(|x| x.trim().to_owned())
            .filter(|x| !x.is_empty())
            .collect(),
        _ => model::DEFAULT_SITES
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    }
}
