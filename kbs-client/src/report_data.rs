//! How runtime data becomes report data (what Trustee's KBS really does, not what its
//! protocol document says): the RFC 8785 (JCS) canonical JSON of
//! `{"additional-evidence": <string>, "nonce": <challenge nonce>, "tee-pubkey": <JWK>}`
//! — all three keys — hashed with SHA-384. SNP and TDX carry it zero-padded to 64 bytes,
//! a TPM quote truncated to 32.

use kbs_types::TeePubKey;
use sha2::{Digest as _, Sha384};

/// The digest could not be computed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportDataError {
    /// The runtime data does not serialise (never for well-formed keys).
    #[error("canonicalise runtime data: {0}")]
    Canonical(String),
}

/// The canonical JSON the digest is taken over.
pub fn canonical_runtime_data(
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> Result<String, ReportDataError> {
    let value = serde_json::json!({
        "additional-evidence": additional_evidence,
        "nonce": nonce,
        "tee-pubkey": tee_pubkey,
    });
    serde_json_canonicalizer::to_string(&value)
        .map_err(|e| ReportDataError::Canonical(e.to_string()))
}

/// SHA-384 of the canonical runtime data.
pub fn runtime_data_digest(
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> Result<[u8; 48], ReportDataError> {
    let canonical = canonical_runtime_data(nonce, tee_pubkey, additional_evidence)?;
    Ok(Sha384::digest(canonical.as_bytes()).into())
}

/// The digest as an SNP or TDX report-data field: zero-padded to 64 bytes.
pub fn report_data_64(digest: &[u8; 48]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..48].copy_from_slice(digest);
    out
}

/// The digest as a TPM quote's qualifying data: truncated to 32 bytes.
pub fn tpm_nonce(digest: &[u8; 48]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest[..32]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TeePubKey {
        TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "xx".into(),
            y: "yy".into(),
        }
    }

    #[test]
    fn all_three_keys_sorted_no_whitespace() {
        let c = canonical_runtime_data("n0nce", &key(), "").unwrap();
        assert_eq!(
            c,
            r#"{"additional-evidence":"","nonce":"n0nce","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"xx","y":"yy"}}"#
        );
        let d = runtime_data_digest("n0nce", &key(), "").unwrap();
        assert_ne!(d, runtime_data_digest("n0nce", &key(), "x").unwrap());
        assert_eq!(&report_data_64(&d)[..48], &d[..]);
        assert_eq!(&tpm_nonce(&d)[..], &d[..32]);
    }
}
