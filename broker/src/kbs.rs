//! The KBS protocol endpoints, free of HTTP: `/auth` opens a session and challenges,
//! `/attest` verifies evidence bound to that challenge and issues a token, `/resource`
//! evaluates the resource policy on the token's claims and returns the resource as a
//! JWE for the TEE key the evidence bound. Every refusal and every release is audited.

use cvm_attest::tpm::AkIdentity;
use cvm_attest::tpm::verifier::challenge_ak;
use cvm_kbs_client::KBS_PROTOCOL_VERSION;
use cvm_kbs_client::counter::{Counter, CounterUpdate};
use cvm_kbs_client::initdata::{FORMAT as INITDATA_FORMAT, InitData};
use cvm_kbs_client::jwe;
use cvm_kbs_client::report_data::runtime_data_digest;
use kbs_types::{Attestation, Challenge, Tee};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::AuditEvent;
use crate::error::KbsError;
use crate::resource_path::ResourcePath;
use crate::session::SessionError;
use crate::state::{Broker, now};
use crate::token::{self, Appraisal};
use crate::verify::{VerifyContext, verify};

/// Largest `/auth` body.
pub const MAX_AUTH_BODY: usize = 64 << 10;
/// Largest `/attest` body (an SNP report with its certificate chain, a TD quote with
/// its event log, and our runtime log fit well below this).
pub const MAX_ATTEST_BODY: usize = 4 << 20;

/// Largest counter update body.
pub const MAX_COUNTER_BODY: usize = 4 << 10;

/// TEEs this broker verifies.
const SUPPORTED: [Tee; 6] = [
    Tee::Tpm,
    Tee::Snp,
    Tee::Tdx,
    Tee::AzSnpVtpm,
    Tee::AzTdxVtpm,
    Tee::Sample,
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthRequest {
    version: String,
    tee: String,
    #[serde(rename = "extra-params", default)]
    extra_params: Value,
}

/// A parsed `/auth` request.
#[derive(Debug, Clone)]
pub struct Auth {
    /// The TEE.
    pub tee: Tee,
    /// `extra-params` (our `tpm` clients send their AK identity here).
    pub extra_params: Value,
}

fn attestation_error(detail: impl ToString) -> KbsError {
    KbsError::AttestationError(detail.to_string())
}

/// Parse and check a `/auth` body: JSON, protocol version, known TEE.
pub fn parse_auth(body: &[u8]) -> Result<Auth, KbsError> {
    if body.len() > MAX_AUTH_BODY {
        return Err(KbsError::PayloadTooLarge(MAX_AUTH_BODY));
    }
    let req: AuthRequest =
        serde_json::from_slice(body).map_err(|e| KbsError::SerdeError(e.to_string()))?;
    if req.version != KBS_PROTOCOL_VERSION {
        return Err(attestation_error(format!(
            "Protocol Version Mismatch: expect {KBS_PROTOCOL_VERSION} while the request is {}",
            req.version.chars().take(32).collect::<String>()
        )));
    }
    let tee: Tee = serde_json::from_value(json!(req.tee)).map_err(|_| {
        attestation_error(format!(
            "unknown TEE {:?}",
            req.tee.chars().take(32).collect::<String>()
        ))
    })?;
    Ok(Auth {
        tee,
        extra_params: req.extra_params,
    })
}

/// Parse a `/attest` body.
pub fn parse_attest(body: &[u8]) -> Result<Attestation, KbsError> {
    if body.len() > MAX_ATTEST_BODY {
        return Err(KbsError::PayloadTooLarge(MAX_ATTEST_BODY));
    }
    serde_json::from_slice(body).map_err(|e| KbsError::SerdeError(e.to_string()))
}

fn session_error(e: SessionError) -> KbsError {
    attestation_error(e)
}

impl Broker {
    fn refuse(
        &self,
        endpoint: &str,
        peer: &str,
        tee: Option<&str>,
        target: Option<&str>,
        e: &KbsError,
    ) {
        self.audit.record(&AuditEvent {
            time: now(),
            endpoint,
            outcome: "refuse",
            peer,
            tee,
            target,
            reason: &e.to_string(),
        });
    }

    /// `POST /kbs/v0/auth`: the session id (the `kbs-session-id` cookie) and challenge.
    pub fn auth(&self, body: &[u8], peer: &str) -> Result<(String, Challenge), KbsError> {
        let result = self.auth_inner(body);
        if let Err(e) = &result {
            self.refuse("auth", peer, None, None, e);
        }
        result
    }

    fn auth_inner(&self, body: &[u8]) -> Result<(String, Challenge), KbsError> {
        let req = parse_auth(body)?;
        if !SUPPORTED.contains(&req.tee) {
            return Err(attestation_error(format!(
                "TEE {} is not supported by this broker",
                req.tee
            )));
        }
        if req.tee == Tee::Sample && !self.config.allow_sample {
            return Err(attestation_error(crate::verify::VerifyError::SampleRefused));
        }
        let mut extra = Value::String(String::new());
        let mut ak_challenge = None;
        if req.tee == Tee::Tpm && req.extra_params.is_object() {
            let identity: AkIdentity = serde_json::from_value(req.extra_params).map_err(|e| {
                attestation_error(format!("tpm extra-params are not an AK identity: {e}"))
            })?;
            let trust = self.ek_trust.as_ref().ok_or_else(|| {
                attestation_error("this broker has no EK CA (--ek-ca) to endorse an AK with")
            })?;
            let challenge = challenge_ak(&identity, trust, std::time::SystemTime::now())
                .map_err(|e| attestation_error(format!("AK identity refused: {e}")))?;
            extra = serde_json::to_value(&challenge.request)
                .map_err(|e| KbsError::SerdeError(e.to_string()))?;
            ak_challenge = Some(challenge);
        }
        let tee = req.tee.to_string();
        let (id, nonce) = self
            .sessions
            .open(&tee, ak_challenge, now())
            .map_err(session_error)?;
        Ok((
            id,
            Challenge {
                nonce,
                extra_params: extra,
            },
        ))
    }

    /// `POST /kbs/v0/attest` for the session `session`: the token.
    pub fn attest(
        &self,
        session: Option<&str>,
        body: &[u8],
        peer: &str,
    ) -> Result<String, KbsError> {
        let mut tee = None;
        let result = self.attest_inner(session, body, &mut tee);
        match &result {
            Ok((_, reason)) => self.audit.record(&AuditEvent {
                time: now(),
                endpoint: "attest",
                outcome: "attested",
                peer,
                tee: tee.as_deref(),
                target: None,
                reason,
            }),
            Err(e) => self.refuse("attest", peer, tee.as_deref(), None, e),
        }
        result.map(|(token, _)| token)
    }

    fn attest_inner(
        &self,
        session: Option<&str>,
        body: &[u8],
        tee_out: &mut Option<String>,
    ) -> Result<(String, String), KbsError> {
        let id = session.ok_or_else(|| {
            attestation_error("no kbs-session-id cookie: call /kbs/v0/auth first")
        })?;
        let attestation = parse_attest(body)?;
        let now = now();
        let s = self
            .sessions
            .challenge(id, &attestation.runtime_data.nonce, now)
            .map_err(session_error)?;
        *tee_out = Some(s.tee.clone());
        let tee: Tee = serde_json::from_value(json!(s.tee))
            .map_err(|_| attestation_error("session TEE is unknown"))?;
        let init_data = match &attestation.init_data {
            None => None,
            Some(d) if d.format != INITDATA_FORMAT => {
                return Err(attestation_error(format!(
                    "Unsupported initdata format: {}",
                    d.format.chars().take(32).collect::<String>()
                )));
            }
            Some(d) => Some(InitData::parse(&d.body).map_err(attestation_error)?),
        };
        let runtime = &attestation.runtime_data;
        let additional = &attestation.tee_evidence.additional_evidence;
        let digest = runtime_data_digest(&runtime.nonce, &runtime.tee_pubkey, additional)
            .map_err(attestation_error)?;
        // Held for the verification only; admin writes (rare) wait for it.
        let references = self
            .references
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let ctx = VerifyContext {
            references: &references,
            ak_challenge: s.ak_challenge.as_deref(),
            trusted_aks: &self.trusted_aks,
            tdx_collateral: self.tdx_collateral.as_ref(),
            allow_sample: self.config.allow_sample,
            now,
        };
        let verified = verify(
            tee,
            &attestation.tee_evidence.primary_evidence,
            &digest,
            init_data.as_ref(),
            &ctx,
        )
        .map_err(attestation_error)?;
        let mut claims = verified.claims.clone();
        if let Some(obj) = claims.as_object_mut() {
            obj.insert("reference".into(), json!(verified.reference));
        }
        let appraisal = Appraisal {
            tee: s.tee.clone(),
            claims,
            runtime_data: json!({
                "nonce": runtime.nonce,
                "tee-pubkey": runtime.tee_pubkey,
                "additional-evidence": additional,
            }),
            init_data: init_data.as_ref().map(|d| hex::encode(&d.digest)),
            init_data_claims: init_data.as_ref().map(|d| json!(d.data)),
            status: verified.status(),
        };
        let token = self
            .token_key
            .issue(&appraisal, now, self.config.session_lifetime);
        self.sessions
            .attested(id, token.clone(), now)
            .map_err(session_error)?;
        let reason = match &verified.reference {
            Some(r) => format!("status affirming: matches reference {r}"),
            None => "status warning: no reference values registered for this platform".into(),
        };
        Ok((token, reason))
    }

    /// `GET /kbs/v0/resource/<path>` with the session cookie or a bearer token: the
    /// resource as a JWE (flattened JSON) for the token's TEE key.
    pub fn resource(
        &self,
        session: Option<&str>,
        bearer: Option<&str>,
        path: &str,
        peer: &str,
    ) -> Result<String, KbsError> {
        let mut tee = None;
        let result = self.resource_inner(session, bearer, path, &mut tee);
        match &result {
            Ok(_) => self.audit.record(&AuditEvent {
                time: now(),
                endpoint: "resource",
                outcome: "release",
                peer,
                tee: tee.as_deref(),
                target: Some(path),
                reason: "allowed by the resource policy",
            }),
            Err(e) => self.refuse("resource", peer, tee.as_deref(), Some(path), e),
        }
        result
    }

    /// The token (bearer, or the session's) verified and the resource policy asked
    /// about `path`: the path and the token's claims when it allows.
    fn authorize(
        &self,
        session: Option<&str>,
        bearer: Option<&str>,
        path: &str,
        tee_out: &mut Option<String>,
    ) -> Result<(ResourcePath, Value), KbsError> {
        let rpath =
            ResourcePath::parse(path).map_err(|e| KbsError::InvalidRequestPath(e.to_string()))?;
        let now = now();
        let token = match (bearer, session) {
            (Some(t), _) => t.to_owned(),
            (None, Some(id)) => self.sessions.token(id, now).map_err(|e| match e {
                SessionError::NotAttested => KbsError::TokenNotFound,
                e => KbsError::TokenVerifierError(e.to_string()),
            })?,
            (None, None) => return Err(KbsError::TokenNotFound),
        };
        let claims = self
            .token_key
            .verify(&token, now)
            .map_err(|e| KbsError::TokenVerifierError(e.to_string()))?;
        *tee_out = claims
            .pointer("/submods/cpu0/ear.veraison.annotated-evidence")
            .and_then(Value::as_object)
            .and_then(|m| {
                m.keys()
                    .find(|k| {
                        !matches!(
                            k.as_str(),
                            "runtime_data_claims" | "init_data" | "init_data_claims"
                        )
                    })
                    .cloned()
            });
        let allowed = self
            .policy
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .allows(&claims, &rpath)
            .map_err(|e| KbsError::PluginInternalError(e.to_string()))?;
        if !allowed {
            return Err(KbsError::PolicyDeny);
        }
        Ok((rpath, claims))
    }

    fn resource_inner(
        &self,
        session: Option<&str>,
        bearer: Option<&str>,
        path: &str,
        tee_out: &mut Option<String>,
    ) -> Result<String, KbsError> {
        let (rpath, claims) = self.authorize(session, bearer, path, tee_out)?;
        let bytes =
            zeroize::Zeroizing::new(self.store.get_resource(&rpath)?.ok_or_else(|| {
                KbsError::PluginInternalError(format!("resource {rpath} not found"))
            })?);
        let key = token::tee_pubkey(&claims).map_err(|e| KbsError::JweError(e.to_string()))?;
        jwe::encrypt(&key, &bytes).map_err(|e| KbsError::JweError(e.to_string()))
    }

    /// `GET /kbs/v0/counter/<path>`: the counter, to a token the resource policy
    /// allows the resource at `path`.
    pub fn counter(
        &self,
        session: Option<&str>,
        bearer: Option<&str>,
        path: &str,
        peer: &str,
    ) -> Result<Counter, KbsError> {
        let mut tee = None;
        let result = self
            .authorize(session, bearer, path, &mut tee)
            .and_then(|(rpath, _)| Ok(self.store.get_counter(&rpath)?));
        if let Err(e) = &result {
            self.refuse("counter", peer, tee.as_deref(), Some(path), e);
        }
        result
    }

    /// `POST /kbs/v0/counter/<path>`: compare-and-set under one lock; every advance and
    /// every refusal is audited.
    pub fn advance_counter(
        &self,
        session: Option<&str>,
        bearer: Option<&str>,
        path: &str,
        body: &[u8],
        peer: &str,
    ) -> Result<Counter, KbsError> {
        let mut tee = None;
        let result = self.advance_inner(session, bearer, path, body, &mut tee);
        match &result {
            Ok(c) => self.audit.record(&AuditEvent {
                time: now(),
                endpoint: "counter",
                outcome: "advance",
                peer,
                tee: tee.as_deref(),
                target: Some(path),
                reason: &format!("now {} (holder {:?})", c.value, c.holder),
            }),
            Err(e) => self.refuse("counter", peer, tee.as_deref(), Some(path), e),
        }
        result
    }

    fn advance_inner(
        &self,
        session: Option<&str>,
        bearer: Option<&str>,
        path: &str,
        body: &[u8],
        tee_out: &mut Option<String>,
    ) -> Result<Counter, KbsError> {
        let (rpath, _) = self.authorize(session, bearer, path, tee_out)?;
        let update: CounterUpdate =
            serde_json::from_slice(body).map_err(|e| KbsError::SerdeError(e.to_string()))?;
        update.check().map_err(KbsError::BadCounterUpdate)?;
        self.compare_and_set(&rpath, update.expect, |_| Ok(update.counter()))
    }

    /// Move the counter at `path` from `expect` to what `next` makes of it, under the
    /// counter lock (every counter write, the TEEs' and the admin's, goes through here).
    pub(crate) fn compare_and_set(
        &self,
        path: &ResourcePath,
        expect: u64,
        next: impl FnOnce(&Counter) -> Result<Counter, KbsError>,
    ) -> Result<Counter, KbsError> {
        let _held = self
            .counter_write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.store.get_counter(path)?;
        if current.value != expect {
            return Err(KbsError::CounterConflict {
                path: path.to_string(),
                current: current.value,
                expected: expect,
            });
        }
        let next = next(&current)?;
        self.store.put_counter(path, &next)?;
        Ok(next)
    }
}
