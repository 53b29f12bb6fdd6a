//! PID1's boot-time runtime measurements, computed offline from the image: the same
//! five events `cvm-init` extends into the runtime PCR (15), from the same bytes it
//! reads: `/init`, `/etc/cvm/init.json`, the `cvm.*` kernel parameters, the agent
//! binary the configuration names, and the enforcement baseline (whose exec allowlist
//! is the initramfs's binaries).

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

use super::qemu::PredictedEvent;

/// The runtime PCR PID1 extends (as `cvm_attest::register::RUNTIME_PCR`).
pub const RUNTIME_PCR: u32 = 15;
/// Where PID1 reads its configuration.
pub const CONFIG_PATH: &str = "/etc/cvm/init.json";

/// The image cannot be measured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuntimeError {
    /// A file PID1 measures is not in the initramfs.
    #[error("initramfs has no {0}")]
    Missing(String),
    /// The configuration does not name an agent.
    #[error("{CONFIG_PATH} is not JSON with a string agent.path")]
    Config,
}

/// The `cvm.*` parameters as PID1 measures them: in command-line order, space-joined.
pub fn kernel_params(cmdline: &str) -> String {
    cmdline
        .split_ascii_whitespace()
        .filter(|p| p.starts_with("cvm."))
        .collect::<Vec<_>>()
        .join(" ")
}

/// PID1's five boot events for an initramfs (its regular files by path) and a command
/// line, in the order PID1 takes them.
pub fn boot_events(
    files: &BTreeMap<String, Vec<u8>>,
    cmdline: &str,
) -> Result<Vec<PredictedEvent>, RuntimeError> {
    let file = |path: &str| {
        files
            .get(path)
            .ok_or_else(|| RuntimeError::Missing(path.to_owned()))
    };
    let init = file("/init")?;
    let config = file(CONFIG_PATH)?;
    let params = kernel_params(cmdline);
    // `cvm.agent=` overrides the file's agent.path, as in PID1.
    let agent_path = match params.split(' ').find_map(|p| p.strip_prefix("cvm.agent=")) {
        Some(p) => p.to_owned(),
        None => serde_json::from_slice::<serde_json::Value>(config)
            .ok()
            .and_then(|v| v["agent"]["path"].as_str().map(str::to_owned))
            .ok_or(RuntimeError::Config)?,
    };
    let agent = file(&agent_path)?;
    let event = |description: String, bytes: &[u8]| PredictedEvent {
        pcr: RUNTIME_PCR,
        description,
        sha256: hex::encode(Sha256::digest(bytes)),
    };
    Ok(vec![
        event("InitBinary /init".into(), init),
        event(format!("InitConfig {CONFIG_PATH}"), config),
        event(format!("KernelParams {params:?}"), params.as_bytes()),
        event(format!("AgentBinary {agent_path}"), agent),
        event(
            "EnforcementBaseline".into(),
            baseline_document(files).as_bytes(),
        ),
    ])
}

/// The baseline document `cvm-agent baseline` reports for this initramfs.
pub fn baseline_document(files: &BTreeMap<String, Vec<u8>>) -> String {
    let exec: Vec<String> = files
        .keys()
        .filter(|p| cvm_attest::baseline::is_exec_path(p))
        .cloned()
        .collect();
    cvm_attest::baseline::document(&exec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> BTreeMap<String, Vec<u8>> {
        let mut f = BTreeMap::new();
        f.insert("/init".into(), b"pid1".to_vec());
        f.insert(CONFIG_PATH.into(), br#"{"agent":{"path":"/a"}}"#.to_vec());
        f.insert("/a".into(), b"agent".to_vec());
        f.insert("/b".into(), b"other agent".to_vec());
        f
    }

    #[test]
    fn params_and_agent_override() {
        assert_eq!(
            kernel_params("quiet cvm.tpm=optional x=1 cvm.log=debug"),
            "cvm.tpm=optional cvm.log=debug"
        );
        let plain = boot_events(&files(), "quiet").unwrap();
        let overridden = boot_events(&files(), "quiet cvm.agent=/b").unwrap();
        assert_eq!(plain.len(), 5);
        assert_ne!(plain[3].sha256, overridden[3].sha256);
        // The baseline's allowlist is /init alone here (no /usr/bin in this archive).
        assert_eq!(
            plain[4].sha256,
            hex::encode(Sha256::digest(cvm_attest::baseline::document(&[
                "/init".into()
            ])))
        );
        assert_eq!(plain[2].sha256, hex::encode(Sha256::digest(b"")));
    }

    #[test]
    fn missing_files_are_named() {
        let mut f = files();
        f.remove("/a");
        assert_eq!(boot_events(&f, ""), Err(RuntimeError::Missing("/a".into())));
        assert_eq!(
            boot_events(&f, "cvm.agent=/nope"),
            Err(RuntimeError::Missing("/nope".into()))
        );
    }
}
