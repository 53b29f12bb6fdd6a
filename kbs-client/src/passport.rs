//! The broker's attestation token (an EAR JWT, ES256) read as a passport: a statement
//! by the broker that the TEE holding a key passed appraisal at a given time. An agent
//! that attests with its TLS key as the TEE key gets a token naming that key; a peer
//! that reaches the agent over TLS (which proves possession of the key) and checks the
//! token with the broker's public key knows it talks to an appliance the broker
//! affirmed, without verifying TPM quotes or SNP reports itself. The broker verifies
//! its own session tokens with the same code.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Verifier as _;
use p256::ecdsa::{Signature, VerifyingKey};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// Largest token accepted.
pub const MAX_TOKEN: usize = 64 << 10;

/// DER of a P-256 SubjectPublicKeyInfo up to the uncompressed point (`04 ‖ x ‖ y`):
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A token that does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a JWT with JSON header and claims.
    #[error("attestation token is malformed: {0}")]
    Malformed(&'static str),
    /// Not ES256.
    #[error("attestation token algorithm {0:?} is not ES256")]
    Algorithm(String),
    /// Not signed by this broker.
    #[error("attestation token signature does not verify with this broker's key")]
    Signature,
    /// Expired.
    #[error("attestation token expired at {exp} (now {now})")]
    Expired {
        /// Expiry.
        exp: u64,
        /// Now.
        now: u64,
    },
    /// Issued later than `now` allows (a clock far off, or a token minted ahead).
    #[error(
        "attestation token was issued at {iat}, after {now} plus {MAX_CLOCK_SKEW} s of clock skew"
    )]
    NotYetValid {
        /// Issued at.
        iat: u64,
        /// Now.
        now: u64,
    },
    /// The claims lack the TEE public key.
    #[error("attestation token carries no tee-pubkey")]
    NoTeeKey,
}

/// How far ahead of the checker's clock a token's issue time may be.
pub const MAX_CLOCK_SKEW: u64 = 300;

/// Verify a token with the broker's `key` at `now`; return its claims.
pub fn verify_token(key: &VerifyingKey, token: &str, now: u64) -> Result<Value, TokenError> {
    if token.len() > MAX_TOKEN {
        return Err(TokenError::Malformed("too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed("not three dot-separated parts"));
    };
    let decode = |p: &str, what| {
        URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| TokenError::Malformed(what))
    };
    let header: Value = serde_json::from_slice(&decode(h, "header is not base64url")?)
        .map_err(|_| TokenError::Malformed("header is not JSON"))?;
    let alg = header["alg"].as_str().unwrap_or_default();
    if alg != "ES256" {
        return Err(TokenError::Algorithm(alg.to_owned()));
    }
    let sig = Signature::from_slice(&decode(s, "signature is not base64url")?)
        .map_err(|_| TokenError::Signature)?;
    key.verify(&token.as_bytes()[..h.len() + 1 + c.len()], &sig)
        .map_err(|_| TokenError::Signature)?;
    let claims: Value = serde_json::from_slice(&decode(c, "claims are not base64url")?)
        .map_err(|_| TokenError::Malformed("claims are not JSON"))?;
    let exp = claims["exp"]
        .as_u64()
        .ok_or(TokenError::Malformed("no exp claim"))?;
    if now >= exp {
        return Err(TokenError::Expired { exp, now });
    }
    if let Some(iat) = claims["iat"].as_u64()
        && iat > now.saturating_add(MAX_CLOCK_SKEW)
    {
        return Err(TokenError::NotYetValid { iat, now });
    }
    Ok(claims)
}

/// The broker's token key from its JWK (`{"kty":"EC","crv":"P-256","x","y"}`).
pub fn broker_key(jwk: &Value) -> Result<VerifyingKey, PassportError> {
    let point = ec_point(jwk).ok_or(PassportError::BrokerKey)?;
    VerifyingKey::from_sec1_bytes(&point).map_err(|_| PassportError::BrokerKey)
}

/// `04 ‖ x ‖ y` of a P-256 JWK.
fn ec_point(jwk: &Value) -> Option<Vec<u8>> {
    if jwk["kty"] != "EC" || jwk["crv"] != "P-256" {
        return None;
    }
    let coord = |name: &str| {
        URL_SAFE_NO_PAD
            .decode(jwk[name].as_str()?)
            .ok()
            .filter(|c| c.len() == 32)
    };
    let mut point = vec![0x04];
    point.extend(coord("x")?);
    point.extend(coord("y")?);
    Some(point)
}

/// SHA-256 of the DER SubjectPublicKeyInfo of a P-256 JWK: what the agent's TLS
/// identity and `cvm` pin.
pub fn jwk_spki_sha256(jwk: &Value) -> Option<[u8; 32]> {
    let point = ec_point(jwk)?;
    // Only points on the curve.
    p256::PublicKey::from_sec1_bytes(&point).ok()?;
    let mut h = Sha256::new();
    h.update(P256_SPKI_PREFIX);
    h.update(&point);
    Some(h.finalize().into())
}

/// Why a passport was not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PassportError {
    /// The token itself.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The broker's key is not a P-256 JWK.
    #[error("the broker's token key is not a P-256 JWK")]
    BrokerKey,
    /// The broker did not affirm the evidence.
    #[error("the broker's appraisal was {0:?}, not affirming")]
    NotAffirming(String),
    /// Evidence of the insecure `sample` TEE.
    #[error("the token is for the insecure sample TEE")]
    Sample,
    /// The token names another key than the peer's.
    #[error("the token was issued to key sha256 {found}, not the peer's {expected}")]
    OtherKey {
        /// The peer's key.
        expected: String,
        /// The token's.
        found: String,
    },
}

/// What a verified passport says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passport {
    /// The TEE the broker appraised (`tpm`, `snp`, …).
    pub tee: String,
    /// SHA-256 of the key's SubjectPublicKeyInfo.
    pub key_sha256: [u8; 32],
    /// When the broker issued it.
    pub issued_at: u64,
    /// When it expires.
    pub expires_at: u64,
    /// The init-data digest the evidence bound, if any (hex).
    pub init_data: Option<String>,
}

/// Check `token` as a passport for the key `key_sha256`: signed by the broker's `key`,
/// unexpired at `now`, affirming, not `sample`, issued to that key.
pub fn check(
    key: &VerifyingKey,
    token: &str,
    now: u64,
    key_sha256: &[u8; 32],
) -> Result<Passport, PassportError> {
    let claims = verify_token(key, token, now)?;
    let cpu0 = &claims["submods"]["cpu0"];
    let status = cpu0["ear.status"].as_str().unwrap_or_default();
    if status != "affirming" {
        return Err(PassportError::NotAffirming(status.to_owned()));
    }
    let annotated = cpu0["ear.veraison.annotated-evidence"]
        .as_object()
        .ok_or(TokenError::Malformed("no annotated evidence"))?;
    let tee = annotated
        .keys()
        .find(|k| {
            !matches!(
                k.as_str(),
                "runtime_data_claims" | "init_data" | "init_data_claims"
            )
        })
        .cloned()
        .unwrap_or_default();
    if tee == "sample" {
        return Err(PassportError::Sample);
    }
    let tee_key = claims
        .pointer("/submods/cpu0/ear.veraison.annotated-evidence/runtime_data_claims/tee-pubkey")
        .ok_or(TokenError::NoTeeKey)?;
    let found = jwk_spki_sha256(tee_key).ok_or(TokenError::NoTeeKey)?;
    if &found != key_sha256 {
        return Err(PassportError::OtherKey {
            expected: hex_of(key_sha256),
            found: hex_of(&found),
        });
    }
    Ok(Passport {
        tee,
        key_sha256: found,
        issued_at: claims["iat"].as_u64().unwrap_or_default(),
        expires_at: claims["exp"].as_u64().unwrap_or_default(),
        init_data: annotated
            .get("init_data")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::pkcs8::EncodePublicKey as _;

    #[test]
    fn the_spki_of_a_jwk_is_the_der_encoders() {
        let key = p256::SecretKey::random(&mut rand_core::OsRng);
        let public = key.public_key();
        let point = public.to_sec1_bytes();
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..]),
        });
        let der = public.to_public_key_der().unwrap();
        let want: [u8; 32] = Sha256::digest(der.as_bytes()).into();
        assert_eq!(jwk_spki_sha256(&jwk), Some(want));
        // Not a point on the curve, or not P-256: no key.
        let mut off = jwk.clone();
        off["x"] = serde_json::json!(URL_SAFE_NO_PAD.encode([1u8; 32]));
        assert_eq!(jwk_spki_sha256(&off), None);
        let mut other = jwk;
        other["crv"] = serde_json::json!("P-384");
        assert_eq!(jwk_spki_sha256(&other), None);
    }
}
