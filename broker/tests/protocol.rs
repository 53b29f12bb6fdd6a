//! Our client against our broker over HTTPS on loopback: the full RCAR handshake and
//! resource release for `sample` (dev flag) and `tpm` (a real swtpm on the host, its
//! AK endorsed by a credential challenge), and every bad input refused in Trustee's
//! error shape with a specific detail while the broker stays up and its store intact.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "../../attest/tests/common/mod.rs"]
mod swtpm;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{ALLOW_ALL, Options, TestBroker, start};
use cvm_kbs_client::attester::tpm::TpmRcarAttester;
use cvm_kbs_client::attester::{Attester, SampleAttester};
use cvm_kbs_client::client::{ClientError, KbsClient};
use cvm_kbs_client::initdata::InitData;
use kbs_types::Tee;
use serde_json::{Value, json};

const KEY: &[u8] = b"0123456789abcdef0123456789abcdef";

fn refused(e: ClientError) -> (u16, String, String) {
    match e {
        ClientError::Refused {
            status,
            kind,
            detail,
        } => (status, kind, detail),
        other => panic!("expected a refusal, got {other}"),
    }
}

fn raw(
    b: &TestBroker,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    body: &[u8],
) -> (u16, Value) {
    let r = b
        .transport()
        .call(method, path, cookie, None, Some(("application/json", body)))
        .unwrap();
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

fn error_of(v: &Value) -> (&str, &str) {
    let t = v["type"].as_str().unwrap();
    assert!(
        t.starts_with("https://github.com/confidential-containers/kbs/errors/"),
        "{t}"
    );
    (t.rsplit('/').next().unwrap(), v["detail"].as_str().unwrap())
}

#[test]
fn sample_is_refused_without_the_dev_flag() {
    let b = start(Options::default());
    let mut c = KbsClient::new(b.client_config()).unwrap();
    let (status, kind, detail) = refused(c.attest(&mut SampleAttester).unwrap_err());
    assert_eq!((status, kind.as_str()), (401, "AttestationError"));
    assert!(detail.contains("--insecure-allow-sample"), "{detail}");
    assert!(b.audit_log().contains("\"outcome\":\"refuse\""));
}

#[test]
fn sample_with_dev_flag_releases_only_under_a_permissive_policy() {
    let b = start(Options {
        allow_sample: true,
        ..Options::default()
    });
    b.put_resource("cvm/state/key", KEY);
    let mut c = KbsClient::new(b.client_config()).unwrap();
    c.attest(&mut SampleAttester).unwrap();
    // The default policy never releases to sample evidence.
    let (status, kind, _) = refused(c.resource("cvm/state/key").unwrap_err());
    assert_eq!((status, kind.as_str()), (403, "PolicyDeny"));
    b.set_policy(ALLOW_ALL);
    assert_eq!(&c.resource("cvm/state/key").unwrap()[..], KEY);
    // A resource that does not exist: Trustee's 401 PluginInternalError.
    let (status, kind, detail) = refused(c.resource("cvm/state/nope").unwrap_err());
    assert_eq!((status, kind.as_str()), (401, "PluginInternalError"));
    assert!(detail.contains("cvm/state/nope not found"), "{detail}");
    let audit = b.audit_log();
    assert!(audit.contains("\"outcome\":\"release\""), "{audit}");
    assert!(audit.contains("Access denied by policy"), "{audit}");
    // The key never reaches the audit log.
    assert!(!audit.contains(std::str::from_utf8(KEY).unwrap()));
}

#[test]
fn tpm_with_endorsed_ak_is_affirmed_against_reference_values() {
    let ca = tempfile::tempdir().unwrap();
    let tpm = swtpm::swtpm_with_ek_cert(ca.path());
    let bundle = ca.path().join("bundle.pem");
    std::fs::write(&bundle, swtpm::ca_bundle(ca.path())).unwrap();
    let b = start(Options {
        ek_ca: Some(bundle),
        ..Options::default()
    });
    b.put_resource("cvm/state/key", KEY);
    let mut attester = TpmRcarAttester::new(&swtpm::tcti(&tpm), None, None).unwrap();

    // No reference registered: genuine but only `warning`, and the default policy
    // (affirming only) releases nothing.
    let mut c = KbsClient::new(b.client_config()).unwrap();
    c.attest(&mut attester).unwrap();
    let (status, kind, _) = refused(c.resource("cvm/state/key").unwrap_err());
    assert_eq!((status, kind.as_str()), (403, "PolicyDeny"));

    // A reference that does not match: /attest names the PCR.
    let zero = "00".repeat(32);
    let wrong = json!({"name": "other-build", "values": {
        "platform": "qemu", "pcrs": {"9": "11".repeat(32)}, "events": [], "runtime_events": [],
        "inputs": {"kernel_sha256": zero, "initrd_sha256": null, "cmdline": "", "memory_mib": 1024}}});
    let r = b.admin(
        "POST",
        "/kbs/v0/reference-values",
        wrong.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let (status, kind, detail) = refused(c.attest(&mut attester).unwrap_err());
    assert_eq!((status, kind.as_str()), (401, "AttestationError"));
    assert!(
        detail.contains("other-build: PCR 9 = reference: PCR 9 mismatch"),
        "{detail}"
    );

    // The right one (a fresh TPM: PCR 4, 9, 15 untouched) is affirmed and released to.
    let right = json!({"name": "this-build", "values": {
        "platform": "qemu", "pcrs": {"4": zero, "9": zero, "15": zero}, "events": [], "runtime_events": [],
        "inputs": {"kernel_sha256": zero, "initrd_sha256": null, "cmdline": "", "memory_mib": 1024}}});
    let r = b.admin(
        "POST",
        "/kbs/v0/reference-values",
        right.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200);
    c.attest(&mut attester).unwrap();
    assert_eq!(&c.resource("cvm/state/key").unwrap()[..], KEY);
    assert!(b.audit_log().contains("matches reference this-build"));

    // Init-data presented but never extended into PCR 8: refused.
    let body = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"cvm.broker-url\" = \"x\"\n";
    let mut config = b.client_config();
    config.init_data = Some(body.into());
    let mut ci = KbsClient::new(config).unwrap();
    let (_, _, detail) = refused(ci.attest(&mut attester).unwrap_err());
    assert!(
        detail.contains("init-data does not match: PCR 8"),
        "{detail}"
    );
    // Extended once, as PID1 does: accepted, and the token carries its claims.
    let init = InitData::parse(body).unwrap();
    use cvm_attest::MeasurementRegister as _;
    let mut pcr8 = cvm_attest::register::TpmPcr::open(&swtpm::tcti(&tpm), 8).unwrap();
    pcr8.extend(&cvm_attest::Digests {
        sha256: init.digest_as::<32>(),
        sha384: init.digest_as::<48>(),
    })
    .unwrap();
    let token = ci.attest(&mut attester).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    let annotated = &claims["submods"]["cpu0"]["ear.veraison.annotated-evidence"];
    assert_eq!(annotated["init_data"], hex::encode(&init.digest));
    assert_eq!(annotated["init_data_claims"]["cvm.broker-url"], "x");
    assert_eq!(claims["submods"]["cpu0"]["ear.status"], "affirming");
    // Without the init-data now, PCR 8 betrays it.
    let (_, _, detail) = refused(c.attest(&mut attester).unwrap_err());
    assert!(detail.contains("no init-data was presented"), "{detail}");
}

/// An attester that produces another TPM's activation answer: the AK it claims is not
/// the one the TPM holds.
struct WrongSecret(TpmRcarAttester);

impl Attester for WrongSecret {
    fn tee(&self) -> Tee {
        Tee::Tpm
    }
    fn auth_extra_params(&mut self) -> Result<Value, String> {
        self.0.auth_extra_params()
    }
    fn evidence(&mut self, rd: &[u8; 48], extra: &Value) -> Result<Value, String> {
        let mut ev = self.0.evidence(rd, extra)?;
        ev["ak_activation"]["secret"] = json!(STANDARD.encode([7u8; 32]));
        Ok(ev)
    }
}

#[test]
fn tpm_twins_are_refused() {
    let ca = tempfile::tempdir().unwrap();
    let tpm = swtpm::swtpm_with_ek_cert(ca.path());
    let bundle = ca.path().join("bundle.pem");
    std::fs::write(&bundle, swtpm::ca_bundle(ca.path())).unwrap();
    let b = start(Options {
        ek_ca: Some(bundle),
        ..Options::default()
    });
    let inner = TpmRcarAttester::new(&swtpm::tcti(&tpm), None, None).unwrap();
    let mut c = KbsClient::new(b.client_config()).unwrap();
    let (_, _, detail) = refused(c.attest(&mut WrongSecret(inner)).unwrap_err());
    assert!(detail.contains("activation"), "{detail}");

    // A TPM whose EK certificate comes from another CA.
    let other_ca = tempfile::tempdir().unwrap();
    let foreign = swtpm::swtpm_with_ek_cert(other_ca.path());
    let mut a = TpmRcarAttester::new(&swtpm::tcti(&foreign), None, None).unwrap();
    let (_, kind, detail) = refused(c.attest(&mut a).unwrap_err());
    assert_eq!(kind, "AttestationError");
    assert!(detail.contains("AK identity refused"), "{detail}");

    // A broker with no EK CA cannot endorse an AK, and says so.
    let plain = start(Options::default());
    let mut c = KbsClient::new(plain.client_config()).unwrap();
    let mut a = TpmRcarAttester::new(&swtpm::tcti(&tpm), None, None).unwrap();
    let (_, _, detail) = refused(c.attest(&mut a).unwrap_err());
    assert!(detail.contains("no EK CA"), "{detail}");
}

/// Evidence for another nonce: a sample report over a digest of something else.
struct OtherNonce;

impl Attester for OtherNonce {
    fn tee(&self) -> Tee {
        Tee::Sample
    }
    fn evidence(&mut self, _: &[u8; 48], _: &Value) -> Result<Value, String> {
        Ok(json!({"svn": "1", "report_data": STANDARD.encode([1u8; 48])}))
    }
}

#[test]
fn bad_protocol_input_is_refused_in_trustees_shape() {
    let b = start(Options {
        allow_sample: true,
        session_lifetime: 2,
        ..Options::default()
    });
    b.put_resource("cvm/state/key", KEY);
    b.set_policy(ALLOW_ALL);
    let auth = |body: &str| raw(&b, "POST", "/kbs/v0/auth", None, body.as_bytes());

    let (s, v) = auth("{not json");
    assert_eq!((s, error_of(&v).0), (401, "SerdeError"));
    let (s, v) = auth(r#"{"version":"0.3.0","tee":"sample","extra-params":""}"#);
    let (kind, detail) = error_of(&v);
    assert_eq!((s, kind), (401, "AttestationError"));
    assert!(
        detail.contains("Protocol Version Mismatch: expect 0.4.0 while the request is 0.3.0"),
        "{detail}"
    );
    let (_, v) = auth(r#"{"version":"0.4.0","tee":"quantum","extra-params":""}"#);
    assert!(error_of(&v).1.contains("unknown TEE \"quantum\""), "{v}");
    let (_, v) = auth(r#"{"version":"0.4.0","tee":"sgx","extra-params":""}"#);
    assert!(error_of(&v).1.contains("TEE sgx is not supported"), "{v}");
    let (_, v) = auth(r#"{"version":"0.4.0","tee":"sample","extra-params":"","extra":1}"#);
    assert_eq!(error_of(&v).0, "SerdeError");

    // Oversized bodies.
    let big = vec![b' '; (4 << 20) + 1];
    let (s, v) = raw(&b, "POST", "/kbs/v0/attest", None, &big);
    assert_eq!((s, error_of(&v).0), (413, "PayloadTooLarge"));

    // /attest without a session, with a stale nonce, twice with the same nonce.
    let (_, v) = raw(&b, "POST", "/kbs/v0/attest", None, b"{}");
    assert!(error_of(&v).1.contains("no kbs-session-id cookie"), "{v}");
    let r = b
        .transport()
        .call(
            "POST",
            "/kbs/v0/auth",
            None,
            None,
            Some((
                "application/json",
                br#"{"version":"0.4.0","tee":"sample","extra-params":""}"#,
            )),
        )
        .unwrap();
    let cookie = r.session_cookie.unwrap();
    let challenge: Value = serde_json::from_slice(&r.body).unwrap();
    let nonce = challenge["nonce"].as_str().unwrap();
    assert_eq!(STANDARD.decode(nonce).unwrap().len(), 32);
    let key = cvm_kbs_client::tee_key::TeeKey::generate_p256().public();
    let attest_body = |nonce: &str, rd: &[u8]| {
        json!({"runtime-data": {"nonce": nonce, "tee-pubkey": key},
               "tee-evidence": {"primary_evidence": {"svn": "1", "report_data": STANDARD.encode(rd)},
                                "additional_evidence": ""}})
        .to_string()
    };
    let digest = cvm_kbs_client::report_data::runtime_data_digest(nonce, &key, "").unwrap();
    let stale = STANDARD.encode([9u8; 32]);
    let (_, v) = raw(
        &b,
        "POST",
        "/kbs/v0/attest",
        Some(&cookie),
        attest_body(&stale, &digest).as_bytes(),
    );
    assert!(error_of(&v).1.contains("nonce mismatch"), "{v}");
    let (s, v) = raw(
        &b,
        "POST",
        "/kbs/v0/attest",
        Some(&cookie),
        attest_body(nonce, &digest).as_bytes(),
    );
    assert_eq!(s, 200, "{v}");
    let (_, v) = raw(
        &b,
        "POST",
        "/kbs/v0/attest",
        Some(&cookie),
        attest_body(nonce, &digest).as_bytes(),
    );
    assert!(error_of(&v).1.contains("already used"), "{v}");

    // Init-data in another format, and init-data that is not Trustee's TOML.
    let mut c = KbsClient::new(b.client_config()).unwrap();
    let mut cfg = b.client_config();
    cfg.init_data = Some("version = 1".into());
    let mut ci = KbsClient::new(cfg).unwrap();
    let (_, _, detail) = refused(ci.attest(&mut SampleAttester).unwrap_err());
    assert!(detail.contains("init-data is not valid"), "{detail}");

    // Evidence for another nonce.
    let (_, _, detail) = refused(c.attest(&mut OtherNonce).unwrap_err());
    assert!(
        detail.contains("report_data is not this session's runtime-data digest"),
        "{detail}"
    );

    // Resource paths that leave the store or carry odd characters.
    c.attest(&mut SampleAttester).unwrap();
    for bad in [
        "cvm/../key",
        "cvm/state/..",
        "cvm/state",
        "cvm/st%20ate/key",
        "a/b/c/d",
    ] {
        let (status, kind, _) = refused(c.resource(bad).unwrap_err());
        assert_eq!(
            (status, kind.as_str()),
            (404, "InvalidRequestPath"),
            "{bad}"
        );
    }
    // No session at all.
    let (s, v) = raw(&b, "GET", "/kbs/v0/resource/cvm/state/key", None, b"");
    assert_eq!((s, error_of(&v).0), (401, "TokenNotFound"));

    // A tampered JWE does not decrypt with the TEE key.
    let token = c.token().unwrap().to_owned();
    let r = b
        .transport()
        .call(
            "GET",
            "/kbs/v0/resource/cvm/state/key",
            None,
            Some(&token),
            None,
        )
        .unwrap();
    assert_eq!(r.status, 200);
    let mut jwe: Value = serde_json::from_slice(&r.body).unwrap();
    let ct = jwe["ciphertext"].as_str().unwrap().to_owned();
    let mut flipped = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&ct)
        .unwrap();
    flipped[0] ^= 1;
    jwe["ciphertext"] = json!(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(flipped));
    let other_key = cvm_kbs_client::tee_key::TeeKey::generate_p256();
    assert!(other_key.decrypt(jwe.to_string().as_bytes()).is_err());

    // Sessions expire.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (_, kind, detail) = refused(c.resource("cvm/state/key").unwrap_err());
    assert_eq!(kind, "TokenVerifierError");
    assert!(detail.contains("session expired"), "{detail}");

    // Admin without a token, and with a token of another key.
    let (s, v) = raw(
        &b,
        "POST",
        "/kbs/v0/resource/cvm/state/key",
        None,
        b"overwrite",
    );
    assert_eq!((s, error_of(&v).0), (401, "AdminAuthAccess"));
    let stranger = cvm_broker::admin_token::AdminSigner::generate();
    let r = b
        .transport()
        .call(
            "POST",
            "/kbs/v0/resource/cvm/state/key",
            None,
            Some(&stranger.token(cvm_broker::state::now(), 60)),
            Some(("text/plain", b"overwrite")),
        )
        .unwrap();
    assert_eq!(r.status, 401);
    // A policy that does not parse is refused and the old one stays.
    let r = b.admin(
        "POST",
        "/kbs/v0/resource-policy",
        br#"{"policy":"cGFja2FnZQ"}"#,
    );
    assert_eq!(r.status, 401);
    assert!(String::from_utf8_lossy(&r.body).contains("ParsePolicyError"));

    // Through all of it the broker stayed up and its store is intact.
    let r = b.admin("GET", "/kbs/v0/admin/resource/cvm/state/key", b"");
    assert_eq!((r.status, &r.body[..]), (200, KEY));
    let mut c = KbsClient::new(b.client_config()).unwrap();
    c.attest(&mut SampleAttester).unwrap();
    assert_eq!(&c.resource("cvm/state/key").unwrap()[..], KEY);
}

#[test]
fn the_store_survives_a_restart() {
    let b = start(Options {
        allow_sample: true,
        ..Options::default()
    });
    b.put_resource("cvm/state/key", KEY);
    b.set_policy(ALLOW_ALL);
    let dir = b.stop();
    let b = start(Options {
        allow_sample: true,
        dir: Some(dir),
        ..Options::default()
    });
    let mut c = KbsClient::new(b.client_config()).unwrap();
    c.attest(&mut SampleAttester).unwrap();
    assert_eq!(&c.resource("cvm/state/key").unwrap()[..], KEY);
    // Removing it is durable too.
    let r = b.admin("DELETE", "/kbs/v0/resource/cvm/state/key", b"");
    assert_eq!(r.status, 200);
    let (_, kind, _) = refused(c.resource("cvm/state/key").unwrap_err());
    assert_eq!(kind, "PluginInternalError");
}

#[test]
fn a_foreign_ca_or_an_unreachable_broker_fail_clearly() {
    let b = start(Options::default());
    // Pinning another CA: TLS fails, and is not retried.
    let other = tempfile::tempdir().unwrap();
    let files = cvm_broker::tls::TlsFiles::in_dir(other.path());
    cvm_broker::tls::ensure_generated(&files, &[]).unwrap();
    let mut config = b.client_config();
    config.tls = cvm_kbs_client::http::BrokerTls::Pinned(std::fs::read(&files.ca).unwrap());
    let mut c = KbsClient::new(config).unwrap();
    let e = c.attest(&mut SampleAttester).unwrap_err();
    assert!(matches!(e, ClientError::Tls(_)), "{e}");

    // Plain HTTP is refused unless configured.
    let mut config = b.client_config();
    config.url = config.url.replace("https://", "http://");
    assert!(matches!(
        KbsClient::new(config),
        Err(ClientError::Config(_))
    ));

    // Nobody listening: bounded retries, then the count and the cause.
    let port = swtpm::free_port();
    let mut config = b.client_config();
    config.url = format!("https://127.0.0.1:{port}");
    config.retries = 2;
    config.backoff = std::time::Duration::from_millis(10);
    let mut c = KbsClient::new(config).unwrap();
    match c.attest(&mut SampleAttester).unwrap_err() {
        ClientError::Unreachable { attempts, .. } => assert_eq!(attempts, 3),
        other => panic!("{other}"),
    }
}
