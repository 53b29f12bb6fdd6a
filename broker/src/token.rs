//! The attestation token the broker issues after a successful `/attest`: a JWT signed
//! ES256 by the broker's token key, shaped as an EAR (EAT Attestation Result) the way
//! Trustee's built-in attestation service shapes it, so policies written for Trustee
//! read the same claims: `submods.cpu0["ear.status"]`,
//! `submods.cpu0["ear.veraison.annotated-evidence"]` with the verifier's claims under the
//! TEE's name and `runtime_data_claims.tee-pubkey` (the key resources are encrypted to).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::OsRng;
use serde_json::{Value, json};

/// The EAT profile Trustee's tokens carry.
pub const EAT_PROFILE: &str = "tag:github.com,2024:confidential-containers/Trustee";
/// Our issuer name.
pub const ISSUER: &str = "cvm-broker";
pub use cvm_kbs_client::passport::{MAX_TOKEN, TokenError};

/// The broker's token key.
pub struct TokenKey(SigningKey);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

/// What an appraisal contributes to a token.
#[derive(Debug, Clone)]
pub struct Appraisal {
    /// The TEE (`tpm`, `snp`, …).
    pub tee: String,
    /// The verifier's claims (measurements, TCB, …).
    pub claims: Value,
    /// The runtime data the report bound: nonce, tee-pubkey, additional-evidence.
    pub runtime_data: Value,
    /// The init-data digest, if any, hex.
    pub init_data: Option<String>,
    /// The init-data's `[data]` table, if any.
    pub init_data_claims: Option<Value>,
    /// `affirming`, `warning`, `contraindicated` (AR4SI).
    pub status: &'static str,
}

impl TokenKey {
    /// A fresh key.
    pub fn generate() -> Self {
        Self(SigningKey::random(&mut OsRng))
    }

    /// The key stored at `path` (the 32-byte scalar, hex), made and stored (mode 0600,
    /// temporary file, fsync, rename) if there is none: peers check passports, and
    /// `cvm migrate --verify` checks certificates, against this key, so it outlives a
    /// restart of the broker.
    pub fn load_or_generate(path: &std::path::Path) -> std::io::Result<Self> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let bad = |what: &str| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} {what}", path.display()),
            )
        };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = zeroize::Zeroizing::new(
                    hex::decode(text.trim()).map_err(|_| bad("is not hex"))?,
                );
                SigningKey::from_slice(&bytes)
                    .map(Self)
                    .map_err(|_| bad("is not a P-256 private key"))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                let tmp = path.with_extension("tmp");
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(zeroize::Zeroizing::new(hex::encode(key.0.to_bytes())).as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, path)?;
                Ok(key)
            }
            Err(e) => Err(e),
        }
    }

    /// The public key as a JWK (also in every token's header).
    pub fn public_jwk(&self) -> Value {
        let point = self.0.verifying_key().to_encoded_point(false);
        let enc =
            |c: Option<&p256::FieldBytes>| c.map(|b| URL_SAFE_NO_PAD.encode(b)).unwrap_or_default();
        json!({"kty": "EC", "crv": "P-256", "x": enc(point.x()), "y": enc(point.y())})
    }

    /// Issue a token for `appraisal` at `now`, valid for `lifetime` seconds.
    pub fn issue(&self, appraisal: &Appraisal, now: u64, lifetime: u64) -> String {
        let header = json!({"alg": "ES256", "typ": "JWT", "jwk": self.public_jwk()});
        let mut annotated = serde_json::Map::new();
        annotated.insert(appraisal.tee.clone(), appraisal.claims.clone());
        annotated.insert("runtime_data_claims".into(), appraisal.runtime_data.clone());
        if let Some(d) = &appraisal.init_data {
            annotated.insert("init_data".into(), json!(d));
        }
        if let Some(c) = &appraisal.init_data_claims {
            annotated.insert("init_data_claims".into(), c.clone());
        }
        let claims = json!({
            "eat_profile": EAT_PROFILE,
            "iss": ISSUER,
            "iat": now,
            "exp": now + lifetime,
            "ear.verifier-id": {"developer": "cvm", "build": env!("CARGO_PKG_VERSION")},
            "submods": {"cpu0": {
                "ear.status": appraisal.status,
                "ear.appraisal-policy-id": "cvm-broker",
                "ear.veraison.annotated-evidence": annotated,
            }},
        });
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig: Signature = self.0.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.to_bytes()))
    }

    /// Verify a token this broker issued; return its claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<Value, TokenError> {
        verify_with(self.0.verifying_key(), token, now)
    }
}

/// Verify a token with `key`; return its claims.
pub fn verify_with(key: &VerifyingKey, token: &str, now: u64) -> Result<Value, TokenError> {
    cvm_kbs_client::passport::verify_token(key, token, now)
}

/// The TEE public key a token's resources are to be encrypted to.
pub fn tee_pubkey(claims: &Value) -> Result<kbs_types::TeePubKey, TokenError> {
    let v = claims
        .pointer("/submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey")
        .ok_or(TokenError::NoTeeKey)?;
    serde_json::from_value(v.clone()).map_err(|_| TokenError::NoTeeKey)
}
