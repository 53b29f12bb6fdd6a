//! The sealed bundle: a round trip for each owner algorithm, and every tamper case
//! refused by name, in the order the appliance checks.
#![allow(clippy::unwrap_used)]

use cvm_runtime::bundle::owner::{OwnerAlg, OwnerKey, OwnerKeys, OwnerPublic};
use cvm_runtime::bundle::{BundleError, SealRequest, parse, seal, seal_manifest};
use cvm_runtime::policy::WorkloadPolicy;

const WASM: &[u8] = b"\0asm\x01\0\0\0 a tiny module";
const KEY: [u8; 32] = [9u8; 32];

fn request(wasm: &[u8]) -> SealRequest<'_> {
    SealRequest {
        name: "hello",
        version: "1.0.0",
        wasm,
        policy: WorkloadPolicy::from_yaml("http: {port: 8080}\nlimits: {memory_mib: 16}").unwrap(),
        key_resource: "default/hello/key",
        state_key_resource: None,
    }
}

fn trusting(k: &OwnerKey) -> OwnerKeys {
    OwnerKeys::new(vec![k.public()])
}

#[test]
fn round_trip_for_both_owner_algorithms() {
    for alg in [OwnerAlg::EdDsa, OwnerAlg::Es256] {
        let owner = OwnerKey::generate(alg);
        let bytes = seal(&request(WASM), &owner, &KEY).unwrap();
        let verified = parse(&bytes).unwrap().verify(&trusting(&owner)).unwrap();
        assert_eq!(verified.manifest().name, "hello");
        assert_eq!(verified.manifest().wasm_size, WASM.len() as u64);
        assert_eq!(verified.owner_kid(), owner.public().kid());
        assert_eq!(&verified.open(&KEY).unwrap()[..], WASM);
        // Keys survive PEM.
        let again = OwnerKey::from_pem(&owner.to_pem().unwrap()).unwrap();
        assert_eq!(again.public(), owner.public());
        let public = OwnerPublic::from_pem(&owner.public().to_pem().unwrap()).unwrap();
        assert_eq!(public, owner.public());
    }
}

#[test]
fn the_manifest_digest_is_what_was_signed() {
    let owner = OwnerKey::generate(OwnerAlg::EdDsa);
    let a = parse(&seal(&request(WASM), &owner, &KEY).unwrap())
        .unwrap()
        .verify(&trusting(&owner))
        .unwrap();
    let mut other = request(WASM);
    other.version = "1.0.1";
    let b = parse(&seal(&other, &owner, &KEY).unwrap())
        .unwrap()
        .verify(&trusting(&owner))
        .unwrap();
    assert_ne!(a.manifest_digest(), b.manifest_digest());
}

/// Flip one byte of the COSE object `which` (1 = Sign1, 2 = Encrypt0) at `from_end`
/// bytes before its end.
fn tamper(bundle: &[u8], which: usize, from_end: usize) -> Vec<u8> {
    let mut outer: ciborium::Value = ciborium::from_reader(bundle).unwrap();
    let items = outer.as_array_mut().unwrap();
    let mut bytes = items[which].as_bytes().unwrap().clone();
    let at = bytes.len() - from_end;
    bytes[at] ^= 1;
    items[which] = ciborium::Value::Bytes(bytes);
    let mut out = Vec::new();
    ciborium::into_writer(&outer, &mut out).unwrap();
    out
}

#[test]
fn every_tamper_case_is_refused_by_name() {
    let owner = OwnerKey::generate(OwnerAlg::EdDsa);
    let trusted = trusting(&owner);
    let good = seal(&request(WASM), &owner, &KEY).unwrap();

    // A signature byte (the Sign1 ends with its signature).
    let e = parse(&tamper(&good, 1, 3))
        .unwrap()
        .verify(&trusted)
        .unwrap_err();
    assert_eq!(e, BundleError::Signature);
    // An unknown owner.
    let stranger = OwnerKey::generate(OwnerAlg::EdDsa);
    let e = parse(&good)
        .unwrap()
        .verify(&trusting(&stranger))
        .unwrap_err();
    assert!(matches!(e, BundleError::UnknownOwner(_)), "{e}");
    // A ciphertext byte (the Encrypt0 ends with the ciphertext and tag).
    let v = parse(&tamper(&good, 2, 5))
        .unwrap()
        .verify(&trusted)
        .unwrap();
    assert_eq!(v.open(&KEY).unwrap_err(), BundleError::Decrypt);
    // The wrong content key.
    let v = parse(&good).unwrap().verify(&trusted).unwrap();
    assert_eq!(v.open(&[8u8; 32]).unwrap_err(), BundleError::Decrypt);
    assert_eq!(v.open(&[8u8; 16]).unwrap_err(), BundleError::KeyLength(16));
    // A ciphertext moved in from another bundle of the same owner and key.
    let other = seal(&request(b"\0asm\x01\0\0\0 another"), &owner, &KEY).unwrap();
    let mut outer: ciborium::Value = ciborium::from_reader(&good[..]).unwrap();
    let theirs: ciborium::Value = ciborium::from_reader(&other[..]).unwrap();
    outer.as_array_mut().unwrap()[2] = theirs.as_array().unwrap()[2].clone();
    let mut swapped = Vec::new();
    ciborium::into_writer(&outer, &mut swapped).unwrap();
    let v = parse(&swapped).unwrap().verify(&trusted).unwrap();
    assert_eq!(v.open(&KEY).unwrap_err(), BundleError::Decrypt);
    // Not a bundle at all, and an oversized one.
    assert!(matches!(
        parse(b"\x83\x01\x02\x03"),
        Err(BundleError::Malformed(_))
    ));
    assert!(matches!(parse(b"not cbor"), Err(BundleError::Malformed(_))));
    assert!(matches!(
        parse(&vec![0u8; (64 << 20) + 1]),
        Err(BundleError::TooLarge { .. })
    ));
}

#[test]
fn a_signed_manifest_naming_other_wasm_fails_the_hash_check() {
    // An owner (or a mistake) signs a manifest whose hash is not the encrypted Wasm's:
    // the appliance decrypts and refuses at the hash check.
    let owner = OwnerKey::generate(OwnerAlg::Es256);
    let honest = parse(&seal(&request(WASM), &owner, &KEY).unwrap())
        .unwrap()
        .verify(&trusting(&owner))
        .unwrap();
    let mut manifest = honest.manifest().clone();
    manifest.wasm_sha256 = "00".repeat(32);
    let bytes = seal_manifest(&manifest, WASM, &owner, &KEY).unwrap();
    let v = parse(&bytes).unwrap().verify(&trusting(&owner)).unwrap();
    assert!(matches!(
        v.open(&KEY).unwrap_err(),
        BundleError::WasmHash { .. }
    ));
}

#[test]
fn invalid_manifests_are_refused_at_seal_time() {
    let owner = OwnerKey::generate(OwnerAlg::EdDsa);
    let mut r = request(WASM);
    r.name = "Hello World";
    assert!(matches!(
        seal(&r, &owner, &KEY),
        Err(BundleError::Manifest(_))
    ));
    let mut r = request(WASM);
    r.key_resource = "a/../b";
    assert!(matches!(
        seal(&r, &owner, &KEY),
        Err(BundleError::Manifest(_))
    ));
    // State needs its own key, and a key needs state.
    let mut r = request(WASM);
    r.policy = WorkloadPolicy::from_yaml("preopens: [{dir: d, guest: /d, access: rw}]").unwrap();
    let refused = |r: &SealRequest<'_>| match seal(r, &owner, &KEY) {
        Err(BundleError::Manifest(m)) => m,
        other => panic!("sealed: {other:?}"),
    };
    assert!(refused(&r).contains("preopens need state_key_resource"));
    r.state_key_resource = Some("default/hello/key");
    assert!(refused(&r).contains("must differ"));
    r.state_key_resource = Some("default/../state");
    assert!(refused(&r).contains("repository/type/tag"));
    r.state_key_resource = Some("default/hello/state-key");
    let bytes = seal(&r, &owner, &KEY).unwrap();
    let verified = parse(&bytes).unwrap().verify(&trusting(&owner)).unwrap();
    assert_eq!(
        verified.manifest().state_key_resource.as_deref(),
        Some("default/hello/state-key")
    );
    let mut r = request(WASM);
    r.state_key_resource = Some("default/hello/state-key");
    assert!(refused(&r).contains("without preopens"));
    assert_eq!(
        seal(&request(WASM), &owner, &[0u8; 31]).unwrap_err(),
        BundleError::KeyLength(31)
    );
}
