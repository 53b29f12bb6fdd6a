//! The broker's TLS identity: a certificate and key given by the operator, or, on first
//! start, a CA of the broker's own and a server certificate it signs, kept in the
//! broker's folder (`tls/ca.pem`, `tls/server.pem`, `tls/server.key`, mode 0600). The
//! CA is what guests pin through their measured init-data; its private key is dropped
//! once the server certificate is signed, so nothing else can ever be issued under it.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Names the generated server certificate covers besides `--tls-name`s: loopback and
/// the host as QEMU's user-mode network shows it to a guest.
pub const DEFAULT_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "10.0.2.2"];

/// A TLS identity that cannot be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("TLS {op} {path} failed")]
    Io {
        /// What.
        op: &'static str,
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not PEM of the expected kind.
    #[error("TLS file {path} is not a PEM {what}")]
    Pem {
        /// Which file.
        path: PathBuf,
        /// What it should hold.
        what: &'static str,
    },
    /// Certificate generation failed.
    #[error("generate the broker's TLS certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate and key.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TlsError {
    let path = path.to_owned();
    move |source| TlsError::Io { op, path, source }
}

/// Where the generated identity lives in the broker's folder.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The CA clients pin.
    pub ca: PathBuf,
    /// The server certificate.
    pub cert: PathBuf,
    /// The server key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files under `dir/tls`.
    pub fn in_dir(dir: &Path) -> Self {
        let tls = dir.join("tls");
        Self {
            ca: tls.join("ca.pem"),
            cert: tls.join("server.pem"),
            key: tls.join("server.key"),
        }
    }
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io("create", &tmp))?;
    f.write_all(bytes).map_err(io("write", &tmp))?;
    f.sync_all().map_err(io("fsync", &tmp))?;
    fs::rename(&tmp, path).map_err(io("rename", path))
}

/// Make the CA and server certificate in `files` unless they exist (the server key is
/// written last, so a crash midway leaves no usable half-identity: it is made again).
pub fn ensure_generated(files: &TlsFiles, extra_names: &[String]) -> Result<(), TlsError> {
    if files.key.exists() && files.cert.exists() && files.ca.exists() {
        return Ok(());
    }
    if let Some(dir) = files.key.parent() {
        fs::create_dir_all(dir).map_err(io("create", dir))?;
    }
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "cvm broker CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let mut names: Vec<String> = DEFAULT_NAMES.iter().map(|s| (*s).to_owned()).collect();
    names.extend(extra_names.iter().cloned());
    let key = rcgen::KeyPair::generate()?;
    let mut leaf = rcgen::CertificateParams::new(names)?;
    leaf.distinguished_name
        .push(rcgen::DnType::CommonName, "cvm broker");
    leaf.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = leaf.signed_by(&key, &issuer)?;

    write_new(&files.ca, ca_cert.pem().as_bytes(), 0o644)?;
    write_new(&files.cert, cert.pem().as_bytes(), 0o644)?;
    write_new(&files.key, key.serialize_pem().as_bytes(), 0o600)
}

/// Certificates from a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = fs::read(path).map_err(io("read", path))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|_| TlsError::Pem {
            path: path.to_owned(),
            what: "certificate list",
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "certificate list",
        });
    }
    Ok(certs)
}

/// The rustls server configuration for `cert` and `key` (PEM files).
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key_bytes = zeroize::Zeroizing::new(fs::read(key).map_err(io("read", key))?);
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|_| TlsError::Pem {
        path: key.to_owned(),
        what: "private key",
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
