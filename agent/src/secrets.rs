//! The secrets PID1 released from the broker, received through the inherited memfd
//! named by `--secrets-fd`: read once at start, kept in memory only, never logged.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use cvm_proto::agent::Secrets;
use zeroize::Zeroizing;

/// Largest secrets document accepted.
const MAX_SECRETS: u64 = 16 << 20;

/// The released resources, by path.
#[derive(Default)]
pub struct SecretStore {
    resources: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.resources.keys()).finish()
    }
}

impl SecretStore {
    /// Read and close the memfd `fd`.
    pub fn from_fd(fd: i32) -> anyhow::Result<Self> {
        let file = std::fs::File::from(crate::sys::take_fd(fd)?);
        // The descriptor's offset is shared with PID1's copy (and with any earlier run
        // of this agent), so read at absolute offsets, never from the current one.
        let len = file.metadata()?.len();
        anyhow::ensure!(
            len <= MAX_SECRETS,
            "secrets larger than {MAX_SECRETS} bytes"
        );
        let mut json = Zeroizing::new(vec![0u8; len as usize]);
        file.read_exact_at(&mut json, 0)?;
        let secrets: Secrets = serde_json::from_slice(&json)?;
        let mut resources = BTreeMap::new();
        for (path, b64) in secrets.resources {
            let bytes = STANDARD
                .decode(b64.as_bytes())
                .map_err(|_| anyhow::anyhow!("secret {path} is not base64"))?;
            resources.insert(path, Zeroizing::new(bytes));
        }
        Ok(Self { resources })
    }

    /// The resource paths held.
    pub fn names(&self) -> Vec<String> {
        self.resources.keys().cloned().collect()
    }

    /// One resource.
    pub fn get(&self, path: &str) -> Option<&[u8]> {
        self.resources.get(path).map(|v| v.as_slice())
    }
}
