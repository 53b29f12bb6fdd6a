//! The admin API, authenticated by an Ed25519-signed bearer token: resources (set as
//! Trustee does, with `POST /kbs/v0/resource/<path>`, plus read-back and removal), the
//! resource policy (`POST /kbs/v0/resource-policy` `{"policy": base64url(rego)}`) and
//! named reference values. Every change is validated before it is stored, stored
//! atomically before it takes effect, and audited.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use cvm_kbs_client::counter::Counter;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use zeroize::Zeroizing;

use crate::audit::AuditEvent;
use crate::error::KbsError;
use crate::policy::ResourcePolicy;
use crate::reference::{ReferenceDocument, ReferenceSet, check_name};
use crate::resource_path::ResourcePath;
use crate::state::{Broker, now};
use crate::store::Document;

/// `POST /kbs/v0/resource-policy`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    /// The Rego, base64url (padding tolerated, as Trustee's clients vary).
    pub policy: String,
}

/// `POST /kbs/v0/reference-values`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceBody {
    /// The reference's name.
    pub name: String,
    /// `cvm measure --json` output.
    pub values: Value,
}

fn bad_body(e: impl ToString) -> KbsError {
    KbsError::SerdeError(e.to_string())
}

impl Broker {
    fn admin<T>(
        &self,
        op: &str,
        target: Option<&str>,
        bearer: Option<&str>,
        peer: &str,
        f: impl FnOnce() -> Result<T, KbsError>,
    ) -> Result<T, KbsError> {
        let result = bearer
            .ok_or_else(|| KbsError::AdminAuthAccess("no bearer token".into()))
            .and_then(|t| {
                self.admin_key
                    .verify(t, now())
                    .map_err(|e| KbsError::AdminAuthAccess(e.to_string()))
            })
            .and_then(|()| f());
        let reason = match &result {
            Ok(_) => "done".to_owned(),
            Err(e) => e.to_string(),
        };
        self.audit.record(&AuditEvent {
            time: now(),
            endpoint: op,
            outcome: if result.is_ok() { "admin" } else { "refuse" },
            peer,
            tee: None,
            target,
            reason: &reason,
        });
        result
    }

    fn lock_admin(&self) -> std::sync::MutexGuard<'_, ()> {
        self.admin_write
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Store a resource.
    pub fn admin_put_resource(
        &self,
        bearer: Option<&str>,
        path: &str,
        bytes: &[u8],
        create_only: bool,
        peer: &str,
    ) -> Result<(), KbsError> {
        self.admin("set-resource", Some(path), bearer, peer, || {
            let p = ResourcePath::parse(path)
                .map_err(|e| KbsError::InvalidRequestPath(e.to_string()))?;
            // Under the admin lock, so a create-only write and another write of the
            // same path cannot interleave between the check and the write.
            let _held = self.lock_admin();
            if create_only && self.store.get_resource(&p)?.is_some() {
                return Err(KbsError::ResourceExists(p.to_string()));
            }
            Ok(self.store.put_resource(&p, bytes)?)
        })
    }

    /// Read a resource back.
    pub fn admin_get_resource(
        &self,
        bearer: Option<&str>,
        path: &str,
        peer: &str,
    ) -> Result<Zeroizing<Vec<u8>>, KbsError> {
        self.admin("get-resource", Some(path), bearer, peer, || {
            let p = ResourcePath::parse(path)
                .map_err(|e| KbsError::InvalidRequestPath(e.to_string()))?;
            self.store
                .get_resource(&p)?
                .map(Zeroizing::new)
                .ok_or_else(|| KbsError::PluginInternalError(format!("resource {p} not found")))
        })
    }

    /// A counter, as an attested TEE would read it.
    pub fn admin_get_counter(
        &self,
        bearer: Option<&str>,
        path: &str,
        peer: &str,
    ) -> Result<Counter, KbsError> {
        self.admin("get-counter", Some(path), bearer, peer, || {
            let p = ResourcePath::parse(path)
                .map_err(|e| KbsError::InvalidRequestPath(e.to_string()))?;
            Ok(self.store.get_counter(&p)?)
        })
    }

    /// Retire the counter at `path` (`{"expect": VALUE}`, the value the admin saw):
    /// the security team declares the state it counts lost. The counter moves one
    /// past its value to the holder `removed/NAME` (NAME: the workload its holder
    /// names), which is what a workload's own removal records: the next deploy
    /// starts with empty state, and a copy of the old state that turns up anywhere is
    /// wiped, never served.
    pub fn admin_retire_counter(
        &self,
        bearer: Option<&str>,
        path: &str,
        body: &[u8],
        peer: &str,
    ) -> Result<Counter, KbsError> {
        self.admin("retire-counter", Some(path), bearer, peer, || {
            let p = ResourcePath::parse(path)
                .map_err(|e| KbsError::InvalidRequestPath(e.to_string()))?;
            let req: Retire =
                serde_json::from_slice(body).map_err(|e| KbsError::SerdeError(e.to_string()))?;
            self.compare_and_set(&p, req.expect, |current| {
                let name = current
                    .holder
                    .rsplit_once('/')
                    .map(|(_, n)| n)
                    .filter(|n| !n.is_empty())
                    .ok_or_else(|| {
                        KbsError::BadCounterUpdate(format!(
                            "counter {p} has no holder naming a workload ({:?}): nothing to retire",
                            current.holder
                        ))
                    })?;
                Ok(Counter {
                    value: current.value.checked_add(1).ok_or_else(|| {
                        KbsError::BadCounterUpdate(format!("counter {p} is exhausted"))
                    })?,
                    holder: format!("removed/{name}"),
                })
            })
        })
    }

    /// Remove a resource.
    pub fn admin_remove_resource(
        &self,
        bearer: Option<&str>,
        path: &str,
        peer: &str,
    ) -> Result<(), KbsError> {
        self.admin("remove-resource", Some(path), bearer, peer, || {
            let p = ResourcePath::parse(path)
                .map_err(|e| KbsError::InvalidRequestPath(e.to_string()))?;
            if self.store.remove_resource(&p)? {
                Ok(())
            } else {
                Err(KbsError::PluginInternalError(format!(
                    "resource {p} not found"
                )))
            }
        })
    }

    /// Replace the resource policy (`{"policy": base64url(rego)}`).
    pub fn admin_set_policy(
        &self,
        bearer: Option<&str>,
        body: &[u8],
        peer: &str,
    ) -> Result<(), KbsError> {
        self.admin("set-resource-policy", None, bearer, peer, || {
            let req: PolicyBody = serde_json::from_slice(body).map_err(bad_body)?;
            let rego = URL_SAFE_NO_PAD
                .decode(req.policy.trim_end_matches('='))
                .or_else(|_| STANDARD.decode(&req.policy))
                .map_err(|_| KbsError::ParsePolicyError("policy is not base64url".into()))?;
            let rego = String::from_utf8(rego)
                .map_err(|_| KbsError::ParsePolicyError("policy is not UTF-8".into()))?;
            let policy = ResourcePolicy::new(&rego)
                .map_err(|e| KbsError::ParsePolicyError(e.to_string()))?;
            let _w = self.lock_admin();
            self.store
                .put_document(Document::ResourcePolicy, rego.as_bytes())?;
            *self
                .policy
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = policy;
            Ok(())
        })
    }

    /// The resource policy's Rego.
    pub fn admin_get_policy(&self, bearer: Option<&str>, peer: &str) -> Result<String, KbsError> {
        self.admin("get-resource-policy", None, bearer, peer, || {
            Ok(match self.store.get_document(Document::ResourcePolicy)? {
                Some(b) => String::from_utf8_lossy(&b).into_owned(),
                None => crate::policy::DEFAULT_POLICY.to_owned(),
            })
        })
    }

    fn reference_document(&self) -> Result<ReferenceDocument, KbsError> {
        match self.store.get_document(Document::ReferenceValues)? {
            Some(b) => serde_json::from_slice(&b).map_err(|e| KbsError::Storage(e.to_string())),
            None => Ok(ReferenceDocument::default()),
        }
    }

    fn replace_references(&self, doc: &ReferenceDocument) -> Result<(), KbsError> {
        let set = ReferenceSet::load(doc).map_err(|e| KbsError::SerdeError(e.to_string()))?;
        let bytes = serde_json::to_vec_pretty(doc).map_err(|e| KbsError::Storage(e.to_string()))?;
        self.store.put_document(Document::ReferenceValues, &bytes)?;
        *self
            .references
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = set;
        Ok(())
    }

    /// Add or replace the reference named in `body`.
    pub fn admin_set_reference(
        &self,
        bearer: Option<&str>,
        body: &[u8],
        peer: &str,
    ) -> Result<String, KbsError> {
        let name = serde_json::from_slice::<ReferenceBody>(body)
            .map(|r| r.name)
            .unwrap_or_default();
        self.admin("set-reference", Some(&name), bearer, peer, || {
            let req: ReferenceBody = serde_json::from_slice(body).map_err(bad_body)?;
            check_name(&req.name).map_err(bad_body)?;
            crate::reference::Reference::from_json(&req.name, &req.values).map_err(bad_body)?;
            let _w = self.lock_admin();
            let mut doc = self.reference_document()?;
            doc.references.insert(req.name.clone(), req.values);
            self.replace_references(&doc)?;
            Ok(req.name)
        })
    }

    /// Remove the reference `name`.
    pub fn admin_remove_reference(
        &self,
        bearer: Option<&str>,
        name: &str,
        peer: &str,
    ) -> Result<(), KbsError> {
        self.admin("remove-reference", Some(name), bearer, peer, || {
            let _w = self.lock_admin();
            let mut doc = self.reference_document()?;
            if doc.references.remove(name).is_none() {
                return Err(KbsError::InvalidRequestPath(format!(
                    "no reference named {name:?}"
                )));
            }
            self.replace_references(&doc)
        })
    }

    /// Every reference.
    pub fn admin_list_references(
        &self,
        bearer: Option<&str>,
        peer: &str,
    ) -> Result<ReferenceDocument, KbsError> {
        self.admin("list-references", None, bearer, peer, || {
            self.reference_document()
        })
    }
}

/// The body of a counter's retirement.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Retire {
    /// The value the admin saw (a compare-and-set, like every counter write).
    expect: u64,
}
