//! Init-data: the host's launch-time configuration (Trustee's TOML) that tells PID1
//! where its key broker is, which CA to pin and which keys to fetch. It arrives through
//! fw_cfg (`opt/cvm/initdata`) and is bound before it is used: on a TPM platform PID1
//! extends its digest into PCR 8 first (Trustee's rule, which the broker checks); on
//! SEV-SNP and TDX the host binds it at launch (HOST_DATA, MRCONFIGID).
//!
//! Keys PID1 reads from `[data]` (others, such as Trustee's own, are ignored; an
//! unknown `cvm.` key is an error, so a typo cannot silently disable something):
//!
//! | key | meaning |
//! |---|---|
//! | `cvm.broker-url` | `https://host:port` of the broker (required) |
//! | `cvm.broker-ca` | PEM of the CA to pin (required unless plain HTTP is configured) |
//! | `cvm.broker-insecure-http` | `"true"` to allow an `http://` broker URL |
//! | `cvm.state-key` | resource path of the state volume key (default `cvm/state/key`) |
//! | `cvm.state-device` | the state disk: a `/dev/` path, `partlabel:NAME`, `none`, or `auto` (the default: the GPT partition named `cvm-state` when the boot disk has one, else `/dev/vda`) |
//! | `cvm.resources` | comma-separated resource paths handed to the agent |
//! | `cvm.owners` | PEM public keys of the owners whose sealed workloads the agent accepts |

use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};

use cvm_attest::{Digests, MeasurementRegister as _};
use cvm_kbs_client::initdata::{InitData, InitDataError, MAX_INITDATA, TPM_PCR};

/// Where QEMU's fw_cfg exposes the init-data.
pub const FW_CFG_INITDATA: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/cvm/initdata/raw";
/// Default resource path of the state volume key.
pub const DEFAULT_STATE_KEY: &str = "cvm/state/key";
/// The state disk of a direct boot (`cvm run --state-disk`), when no partition is
/// labelled [`STATE_PARTLABEL`].
pub const DEFAULT_STATE_DEVICE: &str = "/dev/vda";
/// The GPT name of the state partition on the disk `cvm build` writes.
pub const STATE_PARTLABEL: &str = "cvm-state";

/// Where the state volume lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateDevice {
    /// This device node.
    Path(PathBuf),
    /// The partition with this GPT name.
    Label(String),
    /// [`STATE_PARTLABEL`] when a partition has it, else [`DEFAULT_STATE_DEVICE`].
    Auto,
}

/// Init-data that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InitDataErrorKind {
    /// The fw_cfg file could not be read.
    #[error("read init-data {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not valid init-data.
    #[error("init-data is invalid")]
    Invalid(#[source] InitDataError),
    /// A `cvm.` key that is missing, unknown or malformed.
    #[error("init-data key {key}: {reason}")]
    Key {
        /// The key.
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The digest could not be extended into PCR 8.
    #[error("bind init-data into PCR {TPM_PCR}")]
    Bind(#[source] cvm_attest::RegisterError),
}

/// What PID1 does with the broker.
#[derive(Clone)]
pub struct KeyRelease {
    /// The raw init-data body, sent verbatim to the broker.
    pub body: String,
    /// Broker URL.
    pub broker_url: String,
    /// The CA to pin (PEM); `None` only with plain HTTP.
    pub broker_ca: Option<Vec<u8>>,
    /// The state volume key's resource path.
    pub state_key: String,
    /// The state disk, if any.
    pub state_device: Option<StateDevice>,
    /// Resources for the agent.
    pub resources: Vec<String>,
    /// The trusted owner keys (PEM), as given.
    pub owners: Option<String>,
}

impl std::fmt::Debug for KeyRelease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRelease")
            .field("broker_url", &self.broker_url)
            .field("state_key", &self.state_key)
            .field("state_device", &self.state_device)
            .field("resources", &self.resources)
            .finish_non_exhaustive()
    }
}

const KNOWN: [&str; 7] = [
    "cvm.owners",
    "cvm.broker-url",
    "cvm.broker-ca",
    "cvm.broker-insecure-http",
    "cvm.state-key",
    "cvm.state-device",
    "cvm.resources",
];

fn key_err(key: &str, reason: &'static str) -> InitDataErrorKind {
    InitDataErrorKind::Key {
        key: key.to_owned(),
        reason,
    }
}

fn resource_path(key: &str, p: &str) -> Result<String, InitDataErrorKind> {
    cvm_kbs_client::resource_path::ResourcePath::parse(p)
        .map(|r| r.to_string())
        .map_err(|_| key_err(key, "not a resource path repository/type/tag"))
}

/// Interpret parsed init-data.
pub fn settings(body: &str, data: &InitData) -> Result<KeyRelease, InitDataErrorKind> {
    for k in data.data.keys() {
        if k.starts_with("cvm.") && !KNOWN.contains(&k.as_str()) {
            return Err(key_err(k, "unknown cvm. key"));
        }
    }
    let get = |k: &str| data.data.get(k).map(String::as_str);
    let url = get("cvm.broker-url").ok_or_else(|| key_err("cvm.broker-url", "missing"))?;
    let insecure = match get("cvm.broker-insecure-http") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(key_err("cvm.broker-insecure-http", "must be true or false")),
    };
    let broker_ca = match (get("cvm.broker-ca"), insecure) {
        (Some(pem), _) => Some(pem.as_bytes().to_vec()),
        (None, true) => None,
        (None, false) => {
            return Err(key_err(
                "cvm.broker-ca",
                "missing (required unless cvm.broker-insecure-http = \"true\")",
            ));
        }
    };
    let scheme_ok = if broker_ca.is_some() {
        url.starts_with("https://")
    } else {
        url.starts_with("http://")
    };
    if !scheme_ok {
        return Err(key_err(
            "cvm.broker-url",
            "must be https:// with a CA, http:// only with cvm.broker-insecure-http",
        ));
    }
    let state_key = resource_path(
        "cvm.state-key",
        get("cvm.state-key").unwrap_or(DEFAULT_STATE_KEY),
    )?;
    let state_device = match get("cvm.state-device").unwrap_or("auto") {
        "none" => None,
        "auto" => Some(StateDevice::Auto),
        d if d.starts_with("/dev/") && !d.contains("..") => Some(StateDevice::Path(d.into())),
        d => match d.strip_prefix("partlabel:") {
            Some(l) if !l.is_empty() && l.len() <= 36 && !l.contains(['\n', '\0']) => {
                Some(StateDevice::Label(l.to_owned()))
            }
            _ => {
                return Err(key_err(
                    "cvm.state-device",
                    "must be a /dev/ path, partlabel:NAME, auto or none",
                ));
            }
        },
    };
    let resources = match get("cvm.resources") {
        None | Some("") => Vec::new(),
        Some(list) => list
            .split(',')
            .map(|p| resource_path("cvm.resources", p.trim()))
            .collect::<Result<_, _>>()?,
    };
    let owners = match get("cvm.owners") {
        None => None,
        Some(pem) => {
            let keys = cvm_runtime::bundle::owner::OwnerKeys::from_pem_bundle(pem)
                .map_err(|_| key_err("cvm.owners", "not PEM Ed25519 or P-256 public keys"))?;
            if keys.is_empty() {
                return Err(key_err("cvm.owners", "holds no PUBLIC KEY block"));
            }
            Some(pem.to_owned())
        }
    };
    Ok(KeyRelease {
        owners,
        body: body.to_owned(),
        broker_url: url.to_owned(),
        broker_ca,
        state_key,
        state_device,
        resources,
    })
}

/// Read the init-data from fw_cfg, if the host gave any.
pub fn read(path: &Path) -> Result<Option<(String, InitData)>, InitDataErrorKind> {
    let read_err = |source| InitDataErrorKind::Read {
        path: path.to_owned(),
        source,
    };
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read_err(e)),
    };
    let mut body = String::new();
    file.take(MAX_INITDATA as u64 + 1)
        .read_to_string(&mut body)
        .map_err(read_err)?;
    let parsed = InitData::parse(&body).map_err(InitDataErrorKind::Invalid)?;
    Ok(Some((body, parsed)))
}

/// Extend the digest into PCR 8 of the TPM at `tcti` (TPM platforms).
pub fn bind_tpm(tcti: &str, data: &InitData) -> Result<(), InitDataErrorKind> {
    let mut pcr =
        cvm_attest::register::TpmPcr::open(tcti, TPM_PCR).map_err(InitDataErrorKind::Bind)?;
    pcr.extend(&Digests {
        sha256: data.digest_as::<32>(),
        sha384: data.digest_as::<48>(),
    })
    .map_err(InitDataErrorKind::Bind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(data: &str) -> Result<KeyRelease, InitDataErrorKind> {
        let body = format!("version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n{data}");
        settings(&body, &InitData::parse(&body).unwrap())
    }

    #[test]
    fn defaults_and_lists() {
        let k = parse("\"cvm.broker-url\" = \"https://10.0.2.2:8443\"\n\"cvm.broker-ca\" = \"PEM\"\n\"cvm.resources\" = \"a/b/c, d/e/f\"\n").unwrap();
        assert_eq!(k.state_key, DEFAULT_STATE_KEY);
        assert_eq!(k.state_device, Some(StateDevice::Auto));
        assert_eq!(k.resources, ["a/b/c", "d/e/f"]);
        let k = parse("\"cvm.broker-url\" = \"https://x\"\n\"cvm.broker-ca\" = \"P\"\n\"cvm.state-device\" = \"partlabel:data\"\n").unwrap();
        assert_eq!(k.state_device, Some(StateDevice::Label("data".into())));
    }

    #[test]
    fn bad_settings_are_named() {
        for (data, needle) in [
            ("", "cvm.broker-url: missing"),
            (
                "\"cvm.broker-url\" = \"https://x\"\n",
                "cvm.broker-ca: missing",
            ),
            (
                "\"cvm.broker-url\" = \"http://x\"\n\"cvm.broker-ca\" = \"P\"\n",
                "must be https://",
            ),
            (
                "\"cvm.broker-url\" = \"https://x\"\n\"cvm.broker-insecure-http\" = \"true\"\n",
                "must be https:// with a CA",
            ),
            (
                "\"cvm.broker-url\" = \"https://x\"\n\"cvm.broker-ca\" = \"P\"\n\"cvm.state-key\" = \"a/../b\"\n",
                "cvm.state-key",
            ),
            (
                "\"cvm.broker-url\" = \"https://x\"\n\"cvm.broker-ca\" = \"P\"\n\"cvm.shell\" = \"1\"\n",
                "unknown cvm. key",
            ),
            (
                "\"cvm.broker-url\" = \"https://x\"\n\"cvm.broker-ca\" = \"P\"\n\"cvm.state-device\" = \"/etc/passwd\"\n",
                "cvm.state-device",
            ),
            (
                "\"cvm.broker-url\" = \"https://x\"\n\"cvm.broker-ca\" = \"P\"\n\"cvm.state-device\" = \"partlabel:\"\n",
                "cvm.state-device",
            ),
        ] {
            let e = parse(data).unwrap_err().to_string();
            assert!(e.contains(needle), "{data}: {e}");
        }
        // Plain HTTP when asked for, and other projects' keys are ignored.
        let k = parse("\"cvm.broker-url\" = \"http://x\"\n\"cvm.broker-insecure-http\" = \"true\"\n\"aa.toml\" = \"x\"\n\"cvm.state-device\" = \"none\"\n").unwrap();
        assert!(k.broker_ca.is_none() && k.state_device.is_none());
    }
}
