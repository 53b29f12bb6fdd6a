//! The agent's TLS identity: a key pair made in the guest at start, held only in the
//! agent's memory, behind a self-signed certificate. Nothing vouches for the
//! certificate; the attestation does: `GET /v1/attestation` binds the SHA-256 of the
//! key's SubjectPublicKeyInfo into the evidence (`cvm_attest::binding::tls_key_nonce`),
//! and clients pin that key once they have appraised the evidence. A restarted agent has
//! a new key, so a client must attest again.

use std::sync::Arc;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest as _, Sha256};

/// The TLS identity could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Key or certificate generation failed.
    #[error("generate the agent's TLS key and certificate")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("configure TLS")]
    Config(#[from] rustls::Error),
}

/// A fresh TLS identity.
#[derive(Debug)]
pub struct AgentTls {
    /// The server configuration (TLS 1.3, ALPN h2 and http/1.1).
    pub config: Arc<rustls::ServerConfig>,
    /// SHA-256 of the public key's SubjectPublicKeyInfo (DER).
    pub key_sha256: [u8; 32],
    /// The private key (PKCS#8 DER), for the broker to name in a passport.
    pub key_pkcs8: Arc<zeroize::Zeroizing<Vec<u8>>>,
}

impl AgentTls {
    /// Make a P-256 key (from the kernel's RNG through ring) and its certificate.
    pub fn generate() -> Result<Self, TlsError> {
        let key = rcgen::KeyPair::generate()?;
        let key_sha256: [u8; 32] =
            Sha256::digest(rcgen::PublicKeyData::subject_public_key_info(&key)).into();
        let mut params = rcgen::CertificateParams::new(vec!["cvm-agent".to_owned()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "cvm agent (attested)");
        let cert = params.self_signed(&key)?;
        let key_pkcs8 = Arc::new(zeroize::Zeroizing::new(key.serialize_der()));
        let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], private)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            key_sha256,
            key_pkcs8,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_key_each_start() {
        let a = AgentTls::generate().unwrap();
        let b = AgentTls::generate().unwrap();
        assert_ne!(a.key_sha256, b.key_sha256);
        assert_eq!(a.config.alpn_protocols[0], b"h2");
    }
}
