//! The sealed bundle: what an owner ships to an appliance.
//!
//! ```text
//! bundle = CBOR array [ "cvm-bundle/1",
//!                       bstr COSE_Sign1 (tag 18)    -- the owner's signature over the manifest (JSON)
//!                       bstr COSE_Encrypt0 (tag 16) -- the Wasm, AES-256-GCM ]
//! ```
//!
//! The manifest names the workload, its version, the SHA-256 and size of the Wasm, the
//! workload policy and the broker resource holding the content key. The Encrypt0's
//! external AAD is the SHA-256 of the signed manifest bytes, so a ciphertext cannot be
//! moved into another bundle.
//!
//! The appliance opens a bundle in a fixed order, enforced by the types: [`parse`] →
//! [`ParsedBundle::verify`] against the trusted owner keys → (the agent measures
//! [`VerifiedBundle::manifest_digest`] and fetches the content key from the broker) →
//! [`VerifiedBundle::open`], which decrypts and checks the Wasm's hash.

pub mod owner;

use coset::{
    CoseEncrypt0, CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable as _, iana,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::policy::{PolicyError, WorkloadPolicy};
use owner::{OwnerAlg, OwnerKey, OwnerKeys};

/// The bundle's format tag.
pub const FORMAT: &str = "cvm-bundle/1";
/// Largest bundle accepted.
pub const MAX_BUNDLE: usize = 64 << 20;
/// Largest Wasm sealed.
pub const MAX_WASM: usize = 48 << 20;
/// The content key length (AES-256).
pub const KEY_LEN: usize = 32;
/// The manifest's content type.
const MANIFEST_TYPE: &str = "application/vnd.cvm.manifest+json";

/// A bundle that cannot be made, parsed, verified or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BundleError {
    /// Larger than its limit.
    #[error("{what} is larger than {limit} bytes")]
    TooLarge {
        /// What.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
    /// Not the bundle's CBOR/COSE shape.
    #[error("bundle is malformed: {0}")]
    Malformed(String),
    /// A key that cannot be used.
    #[error("owner key: {0}")]
    Key(String),
    /// Signed by a key the appliance does not trust.
    #[error("bundle is signed by owner key {0}, which this appliance does not trust")]
    UnknownOwner(String),
    /// The signature does not verify.
    #[error("bundle signature does not verify with the owner key")]
    Signature,
    /// An algorithm other than EdDSA/ES256 (signature) or A256GCM (encryption).
    #[error("bundle uses algorithm {0}, expected EdDSA or ES256 and A256GCM")]
    Algorithm(String),
    /// The manifest is not valid.
    #[error("bundle manifest is invalid: {0}")]
    Manifest(String),
    /// The policy is not valid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The content key is not 32 bytes.
    #[error("content key must be {KEY_LEN} bytes, got {0}")]
    KeyLength(usize),
    /// The ciphertext does not decrypt (wrong key, tampered, or from another bundle).
    #[error("bundle content does not decrypt: wrong key, tampered, or not this manifest's")]
    Decrypt,
    /// The decrypted Wasm is not the one the manifest names.
    #[error("Wasm sha256 {actual} is not the manifest's {expected}")]
    WasmHash {
        /// The manifest's.
        expected: String,
        /// The decrypted Wasm's.
        actual: String,
    },
}

fn malformed(e: impl std::fmt::Display) -> BundleError {
    BundleError::Malformed(e.to_string())
}

/// What the owner signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always 1.
    pub format: u32,
    /// The workload's name (`[a-z0-9-]`, 1-63 characters).
    pub name: String,
    /// Its version.
    pub version: String,
    /// SHA-256 of the Wasm, hex.
    pub wasm_sha256: String,
    /// The Wasm's size.
    pub wasm_size: u64,
    /// The workload policy.
    pub policy: WorkloadPolicy,
    /// Broker resource path (`repo/type/tag`) of the content key.
    pub key_resource: String,
    /// Broker resource path of the key that encrypts the workload's state (and of the
    /// counter that versions it); required when the policy has preopens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_key_resource: Option<String>,
}

impl Manifest {
    fn validate(&self) -> Result<(), BundleError> {
        let bad = |m: &str| BundleError::Manifest(m.to_owned());
        if self.format != 1 {
            return Err(bad("format must be 1"));
        }
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.name.starts_with('-');
        if !name_ok {
            return Err(bad("name must be 1-63 characters of [a-z0-9-]"));
        }
        if self.version.is_empty()
            || self.version.len() > 64
            || self.version.chars().any(char::is_control)
        {
            return Err(bad("version must be 1-64 printable characters"));
        }
        if self.wasm_sha256.len() != 64 || hex::decode(&self.wasm_sha256).is_err() {
            return Err(bad("wasm_sha256 must be 64 hex digits"));
        }
        let is_path = |p: &str| cvm_kbs_client::resource_path::ResourcePath::parse(p).is_ok();
        if !is_path(&self.key_resource) {
            return Err(bad("key_resource must be repository/type/tag"));
        }
        match &self.state_key_resource {
            Some(r) if !is_path(r) => {
                return Err(bad("state_key_resource must be repository/type/tag"));
            }
            Some(r) if r == &self.key_resource => {
                return Err(bad("state_key_resource must differ from key_resource"));
            }
            Some(_) if self.policy.preopens.is_empty() => {
                return Err(bad(
                    "state_key_resource without preopens: there is no state",
                ));
            }
            None if !self.policy.preopens.is_empty() => {
                return Err(bad(
                    "preopens need state_key_resource (the key that encrypts the workload's state)",
                ));
            }
            _ => {}
        }
        self.policy.validate()?;
        Ok(())
    }
}

/// What to seal.
#[derive(Debug, Clone)]
pub struct SealRequest<'a> {
    /// The workload's name.
    pub name: &'a str,
    /// Its version.
    pub version: &'a str,
    /// The Wasm (module or component).
    pub wasm: &'a [u8],
    /// Its policy.
    pub policy: WorkloadPolicy,
    /// Where the content key lives in the broker.
    pub key_resource: &'a str,
    /// Where the state key lives (required with preopens).
    pub state_key_resource: Option<&'a str>,
}

fn aes(key: &[u8]) -> Result<aes_gcm::Aes256Gcm, BundleError> {
    use aes_gcm::KeyInit as _;
    if key.len() != KEY_LEN {
        return Err(BundleError::KeyLength(key.len()));
    }
    aes_gcm::Aes256Gcm::new_from_slice(key).map_err(|_| BundleError::KeyLength(key.len()))
}

/// Seal `req` with `owner`'s signature and `content_key` (32 bytes).
pub fn seal(
    req: &SealRequest<'_>,
    owner: &OwnerKey,
    content_key: &[u8],
) -> Result<Vec<u8>, BundleError> {
    if req.wasm.len() > MAX_WASM {
        return Err(BundleError::TooLarge {
            what: "Wasm",
            limit: MAX_WASM,
        });
    }
    let manifest = Manifest {
        format: 1,
        name: req.name.to_owned(),
        version: req.version.to_owned(),
        wasm_sha256: hex::encode(Sha256::digest(req.wasm)),
        wasm_size: req.wasm.len() as u64,
        policy: req.policy.clone(),
        key_resource: req.key_resource.to_owned(),
        state_key_resource: req.state_key_resource.map(str::to_owned),
    };
    seal_manifest(&manifest, req.wasm, owner, content_key)
}

/// Seal `wasm` under an explicit `manifest`. [`seal`] computes the manifest from the
/// Wasm; this lower step does not check that they agree (the appliance does, after
/// decryption), so it also makes the inconsistent twins the tests need.
pub fn seal_manifest(
    manifest: &Manifest,
    wasm: &[u8],
    owner: &OwnerKey,
    content_key: &[u8],
) -> Result<Vec<u8>, BundleError> {
    manifest.validate()?;
    let payload =
        serde_json::to_vec(&manifest).map_err(|e| BundleError::Manifest(e.to_string()))?;
    let alg = match owner.alg() {
        OwnerAlg::EdDsa => iana::Algorithm::EdDSA,
        OwnerAlg::Es256 => iana::Algorithm::ES256,
    };
    let protected = HeaderBuilder::new()
        .algorithm(alg)
        .key_id(owner.public().kid())
        .content_type(MANIFEST_TYPE.to_owned())
        .build();
    let sign1 = CoseSign1Builder::new()
        .protected(protected)
        .payload(payload.clone())
        .create_signature(b"", |tbs| owner.sign(tbs))
        .build();

    let cipher = aes(content_key)?;
    let aad = Sha256::digest(&payload);
    let encrypt0 = crate::cose::seal(&cipher, wasm, &aad).ok_or(BundleError::Decrypt)?;

    let sign1 = sign1.to_tagged_vec().map_err(malformed)?;
    let encrypt0 = encrypt0.to_tagged_vec().map_err(malformed)?;
    let outer = ciborium::Value::Array(vec![
        ciborium::Value::Text(FORMAT.to_owned()),
        ciborium::Value::Bytes(sign1),
        ciborium::Value::Bytes(encrypt0),
    ]);
    let mut out = Vec::new();
    ciborium::into_writer(&outer, &mut out).map_err(malformed)?;
    Ok(out)
}

/// A bundle whose structure parsed; nothing about it is trusted yet.
#[derive(Debug, Clone)]
pub struct ParsedBundle {
    sign1: CoseSign1,
    encrypt0: CoseEncrypt0,
}

/// Parse a bundle's structure (no cryptography yet).
pub fn parse(bytes: &[u8]) -> Result<ParsedBundle, BundleError> {
    if bytes.len() > MAX_BUNDLE {
        return Err(BundleError::TooLarge {
            what: "bundle",
            limit: MAX_BUNDLE,
        });
    }
    let outer: ciborium::Value = ciborium::from_reader(bytes).map_err(malformed)?;
    let ciborium::Value::Array(items) = outer else {
        return Err(malformed("not a CBOR array"));
    };
    let [format, sign1, encrypt0] = items.as_slice() else {
        return Err(malformed("not three elements"));
    };
    if format.as_text() != Some(FORMAT) {
        return Err(malformed(format!("format is not {FORMAT}")));
    }
    let (Some(sign1), Some(encrypt0)) = (sign1.as_bytes(), encrypt0.as_bytes()) else {
        return Err(malformed("COSE objects are not byte strings"));
    };
    Ok(ParsedBundle {
        sign1: CoseSign1::from_tagged_slice(sign1).map_err(malformed)?,
        encrypt0: CoseEncrypt0::from_tagged_slice(encrypt0).map_err(malformed)?,
    })
}

impl ParsedBundle {
    /// The kid of the key that claims to have signed it (hex), for error messages.
    pub fn owner_kid(&self) -> String {
        hex::encode(&self.sign1.protected.header.key_id)
    }

    /// Step 1: the signature, by a key in `trusted`; then the manifest's own validity.
    pub fn verify(self, trusted: &OwnerKeys) -> Result<VerifiedBundle, BundleError> {
        let header = &self.sign1.protected.header;
        let key = trusted
            .find(&header.key_id)
            .ok_or_else(|| BundleError::UnknownOwner(self.owner_kid()))?;
        let expected = match key.alg() {
            OwnerAlg::EdDsa => iana::Algorithm::EdDSA,
            OwnerAlg::Es256 => iana::Algorithm::ES256,
        };
        if header.alg != Some(coset::Algorithm::Assigned(expected)) {
            return Err(BundleError::Algorithm(format!("{:?}", header.alg)));
        }
        self.sign1
            .verify_signature(b"", |sig, data| key.verify(data, sig))?;
        let payload = self
            .sign1
            .payload
            .clone()
            .ok_or_else(|| BundleError::Manifest("no payload".into()))?;
        let manifest: Manifest =
            serde_json::from_slice(&payload).map_err(|e| BundleError::Manifest(e.to_string()))?;
        manifest.validate()?;
        Ok(VerifiedBundle {
            manifest,
            digest: Sha256::digest(&payload).into(),
            payload,
            owner: key.kid(),
            encrypt0: self.encrypt0,
        })
    }
}

/// A bundle whose manifest an owner the appliance trusts signed (read-only: what was
/// verified cannot be changed afterwards).
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    manifest: Manifest,
    digest: [u8; 32],
    payload: Vec<u8>,
    owner: Vec<u8>,
    encrypt0: CoseEncrypt0,
}

impl VerifiedBundle {
    /// The verified manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// SHA-256 of the signed manifest bytes: what the agent measures, and the workload's
    /// identity a broker policy can bind its key to.
    pub fn manifest_digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The signed manifest bytes (their SHA-256 is [`Self::manifest_digest`]).
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.payload
    }

    /// The signing owner key's kid.
    pub fn owner_kid(&self) -> &[u8] {
        &self.owner
    }

    /// Steps 4 and 5: decrypt with the content key, then check the Wasm's hash and size.
    pub fn open(&self, content_key: &[u8]) -> Result<Zeroizing<Vec<u8>>, BundleError> {
        let wasm = crate::cose::open(&self.encrypt0, content_key, &self.digest)
            .map_err(|e| match e {
                crate::cose::OpenError::Algorithm(a) => BundleError::Algorithm(a),
                crate::cose::OpenError::Iv => malformed("IV is not 12 bytes"),
                crate::cose::OpenError::KeyLength(n) => BundleError::KeyLength(n),
                crate::cose::OpenError::Decrypt => BundleError::Decrypt,
            })
            .map(Zeroizing::new)?;
        let actual = hex::encode(Sha256::digest(&wasm));
        if actual != self.manifest.wasm_sha256 || wasm.len() as u64 != self.manifest.wasm_size {
            return Err(BundleError::WasmHash {
                expected: self.manifest.wasm_sha256.clone(),
                actual,
            });
        }
        Ok(wasm)
    }
}
