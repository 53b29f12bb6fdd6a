//! Who is calling: every request but `GET /healthz` carries `authorization: Bearer
//! TOKEN`, a JWS (compact, EdDSA) signed by the caller key the owner named in the
//! policy's env (`CALLER_KEY`, signed into the bundle), whose claims give the caller's
//! role and id (`{"aud": "badge-request", "role", "sub", "exp"}`). Whoever signs
//! tokens with that key (the owner's identity provider) decides who is a manager or
//! security; the service checks the signature, the audience and the expiry, and then
//! what the role may do. Without a `CALLER_KEY` nothing but `/healthz` is served.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signature, VerifyingKey};
use serde::Deserialize;
use serde_json::Value;

use crate::model::{self, Role};

/// The `aud` a token for this service carries.
pub const AUDIENCE: &str = "badge-request";
/// Longest token accepted.
pub const MAX_TOKEN: usize = 4096;
/// DER of an Ed25519 SubjectPublicKeyInfo (RFC 8410) before its 32 key bytes: the body
/// of a `cvm keygen` public key file is accepted as well as the raw key.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The key callers' tokens are signed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerKey(VerifyingKey);

impl CallerKey {
    /// From `CALLER_KEY`: base64 of the 32-byte Ed25519 public key, or of its
    /// SubjectPublicKeyInfo (a PEM public key's body, with or without its armour).
    pub fn parse(env: Option<&str>) -> Result<Self, String> {
        let text = env.map(str::trim).filter(|s| !s.is_empty()).ok_or(
            "CALLER_KEY is not set in the policy's env (the Ed25519 public key that signs callers' tokens)",
        )?;
        let b64: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let bytes = STANDARD
            .decode(&b64)
            .or_else(|_| URL_SAFE_NO_PAD.decode(&b64))
            .map_err(|_| "CALLER_KEY is not base64".to_owned())?;
        let raw = match bytes.len() {
            32 => bytes.as_slice(),
            44 if bytes[..12] == SPKI_PREFIX => &bytes[12..],
            n => {
                return Err(format!(
                    "CALLER_KEY is {n} bytes, not an Ed25519 public key (32 bytes, or its 44-byte SubjectPublicKeyInfo)"
                ));
            }
        };
        let raw: [u8; 32] = raw
            .try_into()
            .map_err(|_| "CALLER_KEY has the wrong length".to_owned())?;
        VerifyingKey::from_bytes(&raw)
            .map(CallerKey)
            .map_err(|_| "CALLER_KEY is not an Ed25519 public key".to_owned())
    }

    /// The key itself.
    pub fn key(&self) -> &VerifyingKey {
        &self.0
    }
}

/// A caller whose token verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// What they may do.
    pub role: Role,
    /// Who they are (the token's `sub`, recorded in the audit trail).
    pub actor: String,
}

#[derive(Deserialize)]
struct Claims {
    aud: String,
    role: String,
    sub: String,
    exp: u64,
}

/// Check the `authorization` header at `now` (seconds since the epoch); the caller, or
/// why not (a 401).
pub fn verify(key: &CallerKey, authorization: Option<&str>, now: u64) -> Result<Caller, String> {
    let header = authorization
        .ok_or("missing authorization header (a Bearer token signed with the caller key)")?;
    let token = header
        .strip_prefix("Bearer ")
        .ok_or("the authorization header is not a Bearer token")?
        .trim();
    if token.len() > MAX_TOKEN {
        return Err(format!("the token is longer than {MAX_TOKEN} bytes"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the token is not a compact JWS (three dot-separated parts)".into());
    };
    let decode = |part: &str, what: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| format!("the token's {what} is not base64url"))
    };
    let header: Value = serde_json::from_slice(&decode(h, "header")?)
        .map_err(|_| "the token's header is not JSON".to_owned())?;
    if header["alg"] != "EdDSA" {
        return Err(format!(
            "the token's algorithm is {}, not EdDSA",
            header["alg"]
        ));
    }
    let signature = Signature::from_slice(&decode(s, "signature")?)
        .map_err(|_| "the token's signature is not an Ed25519 signature".to_owned())?;
    key.0
        .verify_strict(&token.as_bytes()[..h.len() + 1 + c.len()], &signature)
        .map_err(|_| "the token's signature does not verify with CALLER_KEY".to_owned())?;
    let claims: Claims = serde_json::from_slice(&decode(c, "claims")?)
        .map_err(|e| format!("the token's claims: {e}"))?;
    if claims.aud != AUDIENCE {
        return Err(format!("the token is for {:?}, not {AUDIENCE}", claims.aud));
    }
    if now >= claims.exp {
        return Err(format!("the token expired at {} (now {now})", claims.exp));
    }
    let role = Role::parse(&claims.role).ok_or_else(|| {
        format!(
            "the token's role {:?} is not employee, manager or security",
            claims.role
        )
    })?;
    model::validate_actor(&claims.sub)?;
    Ok(Caller {
        role,
        actor: claims.sub,
    })
}

/// A token for `role` and `sub` until `exp`, signed with `key` (the owner's side: the
/// host tests and `badge-token`).
#[cfg(not(target_arch = "wasm32"))]
pub fn mint(key: &ed25519_dalek::SigningKey, role: &str, sub: &str, exp: u64) -> String {
    use ed25519_dalek::Signer as _;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA","typ":"JWT"}"#);
    let claims = serde_json::json!({"aud": AUDIENCE, "role": role, "sub": sub, "exp": exp});
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{claims}");
    let signature = key.sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ed25519_dalek::SigningKey {
        ed25519_dalek::SigningKey::from_bytes(&[7; 32])
    }

    fn public() -> CallerKey {
        CallerKey(key().verifying_key())
    }

    #[test]
    fn the_caller_key_is_read_raw_or_as_a_public_key_file() {
        let raw = STANDARD.encode(key().verifying_key().as_bytes());
        assert_eq!(CallerKey::parse(Some(&raw)).unwrap(), public());
        let mut spki = SPKI_PREFIX.to_vec();
        spki.extend_from_slice(key().verifying_key().as_bytes());
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            STANDARD.encode(&spki)
        );
        assert_eq!(CallerKey::parse(Some(&pem)).unwrap(), public());
        for (bad, needle) in [
            (None, "not set"),
            (Some(""), "not set"),
            (Some("***"), "not base64"),
            (Some("AAAA"), "3 bytes"),
        ] {
            let e = CallerKey::parse(bad).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn a_token_verifies_only_as_signed_and_in_time() {
        let t = mint(&key(), "manager", "E000001", 100);
        let bearer = format!("Bearer {t}");
        let c = verify(&public(), Some(&bearer), 99).unwrap();
        assert_eq!((c.role, c.actor.as_str()), (Role::Manager, "E000001"));
        let other = CallerKey(ed25519_dalek::SigningKey::from_bytes(&[8; 32]).verifying_key());
        // Each tampered twin is refused, naming why.
        let (h, rest) = t.split_once('.').unwrap();
        let (_, sig) = rest.split_once('.').unwrap();
        let promoted = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"aud": AUDIENCE, "role": "security", "sub": "E000001", "exp": 100})
                .to_string(),
        );
        let cases = [
            (verify(&public(), None, 99), "missing"),
            (verify(&public(), Some(&t), 99), "not a Bearer"),
            (verify(&public(), Some(&bearer), 100), "expired"),
            (verify(&other, Some(&bearer), 99), "does not verify"),
            (
                verify(&public(), Some(&format!("Bearer {h}.{promoted}.{sig}")), 99),
                "does not verify",
            ),
            (
                verify(&public(), Some("Bearer a.b"), 99),
                "three dot-separated",
            ),
            (
                verify(
                    &public(),
                    Some(&format!("Bearer {}", mint(&key(), "root", "E000001", 100))),
                    99,
                ),
                "\"root\"",
            ),
            (
                verify(
                    &public(),
                    Some(&format!("Bearer {}", mint(&key(), "manager", "", 100))),
                    99,
                ),
                "sub",
            ),
        ];
        for (result, needle) in cases {
            let e = result.unwrap_err();
            assert!(e.contains(needle), "{e} lacks {needle}");
        }
        // Another service's token (same key, another audience) is refused.
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"EdDSA"}"#);
        let claims = URL_SAFE_NO_PAD.encode(
            serde_json::json!({"aud": "payroll", "role": "manager", "sub": "E000001", "exp": 100})
                .to_string(),
        );
        use ed25519_dalek::Signer as _;
        let sig = key().sign(format!("{header}.{claims}").as_bytes());
        let foreign = format!(
            "Bearer {header}.{claims}.{}",
            URL_SAFE_NO_PAD.encode(sig.to_bytes())
        );
        assert!(
            verify(&public(), Some(&foreign), 99)
                .unwrap_err()
                .contains("payroll")
        );
    }
}
