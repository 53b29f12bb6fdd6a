//! The broker's state: its configuration, store, sessions, keys, policy and reference
//! values, loaded once at start and shared by every connection.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cvm_attest::tdx::verifier::QuoteCollateralV3;
use cvm_attest::tpm::ekcert::EkCaBundle;
use cvm_attest::tpm::verifier::EkTrust;

use crate::admin_token::AdminKey;
use crate::audit::Audit;
use crate::policy::{DEFAULT_POLICY, ResourcePolicy};
use crate::reference::{ReferenceDocument, ReferenceSet};
use crate::session::{DEFAULT_LIFETIME, MAX_SESSIONS, Sessions};
use crate::store::{Document, Store};
use crate::token::TokenKey;

/// How a broker is started.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// The broker's folder: store, audit log, TLS identity.
    pub dir: PathBuf,
    /// The admin public key (Ed25519 SubjectPublicKeyInfo PEM).
    pub admin_public_key: PathBuf,
    /// CA bundles (PEM) that endorse TPM EK certificates; without any, `tpm` AKs must
    /// be pinned.
    pub ek_ca: Vec<PathBuf>,
    /// AKs trusted without a credential challenge (PEM or DER SubjectPublicKeyInfo).
    pub trusted_aks: Vec<PathBuf>,
    /// TDX collateral (dcap-qvl's JSON form) for offline quote verification.
    pub tdx_collateral: Option<PathBuf>,
    /// Accept the insecure `sample` TEE (development only).
    pub allow_sample: bool,
    /// Session and token lifetime, seconds.
    pub session_lifetime: u64,
}

impl BrokerConfig {
    /// Defaults for a broker in `dir` with the admin key `admin_public_key`.
    pub fn new(dir: &Path, admin_public_key: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            admin_public_key: admin_public_key.to_owned(),
            ek_ca: Vec::new(),
            trusted_aks: Vec::new(),
            tdx_collateral: None,
            allow_sample: false,
            session_lifetime: DEFAULT_LIFETIME,
        }
    }
}

/// A broker that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A file could not be read.
    #[error("read {what} {path}")]
    Read {
        /// What.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file's content is not usable.
    #[error("{what} {path} is not usable: {detail}")]
    Invalid {
        /// What.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, StartError> {
    std::fs::read(path).map_err(|source| StartError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn invalid(what: &'static str, path: &Path, detail: impl ToString) -> StartError {
    StartError::Invalid {
        what,
        path: path.to_owned(),
        detail: detail.to_string(),
    }
}

/// Everything a request may touch.
#[derive(Debug)]
pub struct Broker {
    pub(crate) config: BrokerConfig,
    pub(crate) store: Store,
    pub(crate) sessions: Sessions,
    pub(crate) token_key: TokenKey,
    pub(crate) admin_key: AdminKey,
    pub(crate) ek_trust: Option<EkTrust>,
    pub(crate) trusted_aks: Vec<Vec<u8>>,
    pub(crate) tdx_collateral: Option<QuoteCollateralV3>,
    pub(crate) policy: RwLock<ResourcePolicy>,
    pub(crate) references: RwLock<ReferenceSet>,
    /// Serialises admin writes, so the store and the loaded copy change together.
    pub(crate) admin_write: Mutex<()>,
    /// Serialises counter compare-and-sets.
    pub(crate) counter_write: Mutex<()>,
    pub(crate) audit: Audit,
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Broker {
    /// Load everything `config` names. Stored policy and reference values that no
    /// longer load stop the start (a broker never runs with a policy it cannot read).
    pub fn open(config: BrokerConfig) -> Result<Self, StartError> {
        let store = Store::open(&config.dir)?;
        let admin_pem = read("admin public key", &config.admin_public_key)?;
        let admin_key = AdminKey::from_pem(&String::from_utf8_lossy(&admin_pem))
            .map_err(|e| invalid("admin public key", &config.admin_public_key, e))?;
        let ek_trust = if config.ek_ca.is_empty() {
            None
        } else {
            let mut pem = Vec::new();
            for p in &config.ek_ca {
                pem.extend(read("EK CA bundle", p)?);
                pem.push(b'\n');
            }
            let first = &config.ek_ca[0];
            Some(EkTrust::CaBundle(
                EkCaBundle::from_pem(&pem).map_err(|e| invalid("EK CA bundle", first, e))?,
            ))
        };
        let mut trusted_aks = Vec::new();
        for p in &config.trusted_aks {
            trusted_aks.push(spki_der(&read("trusted AK", p)?).ok_or_else(|| {
                invalid("trusted AK", p, "not a PEM or DER SubjectPublicKeyInfo")
            })?);
        }
        let tdx_collateral = match &config.tdx_collateral {
            Some(p) => Some(
                serde_json::from_slice(&read("TDX collateral", p)?)
                    .map_err(|e| invalid("TDX collateral", p, e))?,
            ),
            None => None,
        };
        let policy_path = config.dir.join("resource-policy.rego");
        let policy = match store.get_document(Document::ResourcePolicy)? {
            Some(bytes) => ResourcePolicy::new(&String::from_utf8_lossy(&bytes))
                .map_err(|e| invalid("stored resource policy", &policy_path, e))?,
            None => ResourcePolicy::new(DEFAULT_POLICY)
                .map_err(|e| invalid("default resource policy", &policy_path, e))?,
        };
        let refs_path = config.dir.join("reference-values.json");
        let references = match store.get_document(Document::ReferenceValues)? {
            Some(bytes) => {
                let doc: ReferenceDocument = serde_json::from_slice(&bytes)
                    .map_err(|e| invalid("stored reference values", &refs_path, e))?;
                ReferenceSet::load(&doc)
                    .map_err(|e| invalid("stored reference values", &refs_path, e))?
            }
            None => ReferenceSet::default(),
        };
        let token_path = config.dir.join("token.key");
        let token_key =
            TokenKey::load_or_generate(&token_path).map_err(|source| StartError::Read {
                what: "token key",
                path: token_path,
                source,
            })?;
        let audit_path = config.dir.join("audit.log");
        let audit = Audit::open(&audit_path).map_err(|source| StartError::Read {
            what: "audit log",
            path: audit_path,
            source,
        })?;
        Ok(Self {
            sessions: Sessions::new(config.session_lifetime, MAX_SESSIONS),
            token_key,
            config,
            store,
            admin_key,
            ek_trust,
            trusted_aks,
            tdx_collateral,
            policy: RwLock::new(policy),
            references: RwLock::new(references),
            admin_write: Mutex::new(()),
            counter_write: Mutex::new(()),
            audit,
        })
    }

    /// The configuration it was started with.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }
}

/// DER SubjectPublicKeyInfo from PEM (`PUBLIC KEY`) or DER bytes.
fn spki_der(bytes: &[u8]) -> Option<Vec<u8>> {
    use rustls::pki_types::SubjectPublicKeyInfoDer;
    use rustls::pki_types::pem::PemObject as _;
    match SubjectPublicKeyInfoDer::from_pem_slice(bytes) {
        Ok(der) => Some(der.to_vec()),
        Err(_) if bytes.first() == Some(&0x30) => Some(bytes.to_vec()),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::spki_der;

    #[test]
    fn trusted_aks_are_read_from_pem_or_der() {
        let pem = crate::admin_token::AdminSigner::generate()
            .public_pem()
            .unwrap_or_default();
        let der = spki_der(pem.as_bytes()).unwrap_or_default();
        assert_eq!(der.first(), Some(&0x30));
        assert_eq!(spki_der(&der), Some(der.clone()));
        assert_eq!(spki_der(b"not a key"), None);
    }
}
