//! Init-data: the TOML document a host hands a guest at launch (Trustee's format), whose
//! digest the platform binds (SNP HOST_DATA, TDX MRCONFIGID, TPM PCR 8), so the broker
//! knows which configuration the guest was started with.
//!
//! ```toml
//! version = "0.1.0"
//! algorithm = "sha384"   # sha256 | sha384 | sha512
//! [data]
//! "cvm.broker-url" = "https://10.0.2.2:8443"
//! ```
//!
//! The digest is the TOML's own `algorithm` over the exact bytes of the body: the body
//! travels verbatim, never re-encoded.

use std::collections::BTreeMap;

use serde::Deserialize;
use sha2::{Digest as _, Sha256, Sha384, Sha512};

/// Largest init-data body accepted.
pub const MAX_INITDATA: usize = 64 << 10;
/// The format name the KBS protocol carries (`init-data.format`).
pub const FORMAT: &str = "toml";
/// The PCR a TPM guest extends with the init-data digest.
pub const TPM_PCR: u32 = 8;

/// Init-data that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InitDataError {
    /// Larger than [`MAX_INITDATA`].
    #[error("init-data is larger than {MAX_INITDATA} bytes")]
    TooLarge,
    /// Not the TOML shape above.
    #[error("init-data is not valid: {0}")]
    Invalid(String),
    /// A digest algorithm other than sha256/384/512.
    #[error("init-data algorithm {0:?} is not sha256, sha384 or sha512")]
    Algorithm(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: String,
    algorithm: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// Parsed init-data and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitData {
    /// The document's `version`.
    pub version: String,
    /// The digest algorithm (`sha256`, `sha384`, `sha512`).
    pub algorithm: String,
    /// The `[data]` table.
    pub data: BTreeMap<String, String>,
    /// `algorithm` over the body bytes.
    pub digest: Vec<u8>,
}

/// Render init-data for `data` (key, value) pairs, deterministically: the same pairs
/// always give the same bytes, so a digest predicted on the host (`cvm measure
/// --initdata`) is the one the guest binds. Multi-line values (PEM) become TOML
/// multi-line literal strings.
pub fn render(algorithm: &str, data: &[(&str, &str)]) -> Result<String, InitDataError> {
    let mut out = format!("version = \"0.1.0\"\nalgorithm = \"{algorithm}\"\n\n[data]\n");
    for (key, value) in data {
        let key_ok = !key.is_empty()
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !key_ok {
            return Err(InitDataError::Invalid(format!("key {key:?}")));
        }
        let bad = |what: &str| InitDataError::Invalid(format!("value of {key}: {what}"));
        if value.contains("'''") || value.contains('\r') {
            return Err(bad("contains ''' or a carriage return"));
        }
        if value.chars().any(|c| c.is_control() && c != '\n') {
            return Err(bad("contains a control character"));
        }
        if value.contains('\n') {
            // A newline right after the opening quotes is trimmed by TOML.
            out.push_str(&format!("\"{key}\" = '''\n{value}'''\n"));
        } else if value.contains('\'') {
            return Err(bad("single-line values cannot contain '"));
        } else {
            out.push_str(&format!("\"{key}\" = '{value}'\n"));
        }
    }
    let parsed = InitData::parse(&out)?;
    for (key, value) in data {
        if parsed.data.get(*key).map(String::as_str) != Some(*value) {
            return Err(InitDataError::Invalid(format!(
                "value of {key} does not round-trip"
            )));
        }
    }
    Ok(out)
}

impl InitData {
    /// Parse `body` and compute its digest.
    pub fn parse(body: &str) -> Result<Self, InitDataError> {
        if body.len() > MAX_INITDATA {
            return Err(InitDataError::TooLarge);
        }
        let doc: Document =
            toml::from_str(body).map_err(|e| InitDataError::Invalid(e.message().to_owned()))?;
        let digest = match doc.algorithm.as_str() {
            "sha256" => Sha256::digest(body.as_bytes()).to_vec(),
            "sha384" => Sha384::digest(body.as_bytes()).to_vec(),
            "sha512" => Sha512::digest(body.as_bytes()).to_vec(),
            other => return Err(InitDataError::Algorithm(other.to_owned())),
        };
        Ok(Self {
            version: doc.version,
            algorithm: doc.algorithm,
            data: doc.data,
            digest,
        })
    }

    /// The digest resized to `N` bytes (truncated or zero-padded), as a platform
    /// register of that width holds it.
    pub fn digest_as<const N: usize>(&self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = N.min(self.digest.len());
        out[..n].copy_from_slice(&self.digest[..n]);
        out
    }

    /// What PCR 8 holds after a guest extended the digest into it once from reset:
    /// `sha256(0^32 ‖ digest resized to 32 bytes)`.
    pub fn tpm_pcr8(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update(self.digest_as::<32>());
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"cvm.broker-url\" = \"https://10.0.2.2:8443\"\n";

    #[test]
    fn digest_is_over_the_exact_body() {
        let d = InitData::parse(BODY).unwrap();
        assert_eq!(d.digest, Sha384::digest(BODY.as_bytes()).to_vec());
        assert_eq!(d.data["cvm.broker-url"], "https://10.0.2.2:8443");
        // A semantically equal body with other bytes has another digest.
        let spaced = BODY.replace("version = ", "version=");
        assert_ne!(InitData::parse(&spaced).unwrap().digest, d.digest);
        assert_eq!(d.digest_as::<32>(), d.digest[..32]);
        let wide = d.digest_as::<64>();
        assert_eq!(&wide[..48], &d.digest[..]);
        assert_eq!(wide[48..], [0u8; 16]);
    }

    #[test]
    fn render_round_trips_and_is_deterministic() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let pairs = [
            ("cvm.broker-url", "https://10.0.2.2:8443"),
            ("cvm.broker-ca", pem),
        ];
        let a = render("sha384", &pairs).unwrap();
        assert_eq!(a, render("sha384", &pairs).unwrap());
        let d = InitData::parse(&a).unwrap();
        assert_eq!(d.data["cvm.broker-ca"], pem);
        assert!(render("sha384", &[("k", "a'''b\n")]).is_err());
        assert!(render("sha384", &[("bad key", "v")]).is_err());
        assert!(render("md5", &[("k", "v")]).is_err());
    }

    #[test]
    fn bad_documents_are_named() {
        assert!(matches!(
            InitData::parse("version = \"0.1.0\"\nalgorithm = \"md5\"\n"),
            Err(InitDataError::Algorithm(a)) if a == "md5"
        ));
        assert!(matches!(
            InitData::parse("algorithm = \"sha256\"\n"),
            Err(InitDataError::Invalid(_))
        ));
        assert!(matches!(
            InitData::parse("version = \"0.1.0\"\nalgorithm = \"sha256\"\nextra = 1\n"),
            Err(InitDataError::Invalid(_))
        ));
        assert_eq!(
            InitData::parse(&"#".repeat(MAX_INITDATA + 1)),
            Err(InitDataError::TooLarge)
        );
    }
}
