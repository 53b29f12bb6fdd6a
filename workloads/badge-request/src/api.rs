//! The HTTP API, independent of how requests arrive (the component in `component.rs`,
//! or the host tests).
//!
//! Every request but `GET /healthz` carries the caller's token (`authorization: Bearer
//! …`, see `caller.rs`), signed with the owner's caller key and naming the role
//! (`employee`, `manager` or `security`) and the caller's id (recorded in the audit
//! trail); the service enforces what each role may do.
//!
//! | request | role | does |
//! |---|---|---|
//! | `POST /badges` `{employee_id,name,site,zones}` | employee (for themselves), security | request a badge → 201, pending |
//! | `GET /badges/ID` | any (employees: their own) | one badge |
//! | `GET /badges?status=S&after=ID&limit=N` | manager, security | list, in id order |
//! | `POST /badges/ID/approve` | manager (not for their own badge) | pending → approved |
//! | `POST /badges/ID/reject` `{reason}` | manager | pending → rejected |
//! | `POST /badges/ID/revoke` `{reason}` | security | approved → revoked |
//! | `POST /import` `[{employee_id,…},…]` | security | active badges in bulk, all or none |
//! | `GET /audit?after=SEQ&limit=N` | security | the audit trail |
//! | `GET /state` | security | version, counts, digest of records and audit trail |
//!
//! Errors are JSON `{"error": "…"}` naming what was wrong: 400 malformed or invalid,
//! 401 no valid token, 403 not allowed for the role, 404 unknown, 405 wrong method, 409 not in a state that
//! allows it, 413 body too large, 500 the records could not be read or written, 503 no
//! caller key configured.

use std::path::Path;

use serde::Serialize;
use serde_json::{Value, json};

use crate::caller::{self, CallerKey};
use crate::model::{self, Badge, NewBadge, Reason, Role, Status};
use crate::store::{Action, Entry, Store};

/// Largest request body.
pub const MAX_BODY: usize = 4 << 20;
/// Most badges in one import: 3,000 take about 4 s in an emulated (TCG) guest, so
/// 5,000, and finishing one a crash left pending, fit well within the policy's
/// two-minute wall limit per request. Larger sets are imported in parts.
pub const MAX_IMPORT: usize = 5_000;
/// Default and largest page of a listing.
pub const PAGE: usize = 1000;

/// A request, as the transport delivered it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `GET` or `POST`.
    pub method: &'a str,
    /// Path with query.
    pub path: &'a str,
    /// The `authorization` header.
    pub authorization: Option<&'a str>,
    /// The body.
    pub body: &'a [u8],
}

/// What the service answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// JSON body.
    pub body: Value,
}

/// What the service is configured with and the time of the request.
#[derive(Debug, Clone)]
pub struct Context {
    /// Sites badges are issued for.
    pub sites: Vec<String>,
    /// Now, seconds since the epoch.
    pub now: u64,
    /// The key callers' tokens are signed with (`CALLER_KEY`), or why there is none.
    pub caller_key: std::result::Result<CallerKey, String>,
}

fn err(status: u16, msg: impl Into<String>) -> Response {
    Response {
        status,
        body: json!({ "error": msg.into() }),
    }
}

fn ok<T: Serialize>(status: u16, v: &T) -> Response {
    match serde_json::to_value(v) {
        Ok(body) => Response { status, body },
        Err(e) => err(500, e.to_string()),
    }
}

/// Handle one request against the records under `root`.
pub fn handle(root: &Path, ctx: &Context, req: &Request<'_>) -> Response {
    let (path, query) = req.path.split_once('?').unwrap_or((req.path, ""));
    if path == "/healthz" {
        return match req.method {
            "GET" => ok(200, &json!({"ok": true})),
            _ => err(405, "GET only"),
        };
    }
    let key = match &ctx.caller_key {
        Ok(k) => k,
        Err(e) => return err(503, format!("no caller can be authenticated: {e}")),
    };
    let caller = match caller::verify(key, req.authorization, ctx.now) {
        Ok(c) => c,
        Err(e) => return err(401, e),
    };
    let (role, actor) = (caller.role, caller.actor.as_str());
    if req.body.len() > MAX_BODY {
        return err(413, format!("request body is larger than {MAX_BODY} bytes"));
    }
    let store = match Store::open(root) {
        Ok(s) => s,
        Err(e) => return err(500, e.0),
    };
    let call = Call {
        store: &store,
        ctx,
        role,
        actor,
        body: req.body,
    };
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let result = match (req.method, segments.as_slice()) {
        ("POST", ["badges"]) => call.request(),
        ("GET", ["badges"]) => call.list(query),
        ("GET", ["badges", id]) => call.get(id),
        ("POST", ["badges", id, "approve"]) => call.decide(id, Decision::Approve),
        ("POST", ["badges", id, "reject"]) => call.decide(id, Decision::Reject),
        ("POST", ["badges", id, "revoke"]) => call.decide(id, Decision::Revoke),
        ("POST", ["import"]) => call.import(),
        ("GET", ["audit"]) => call.audit(query),
        ("GET", ["state"]) => call.state(),
        (
            _,
            ["badges"]
            | ["badges", _]
            | ["badges", _, "approve" | "reject" | "revoke"]
            | ["import"]
            | ["audit"]
            | ["state"],
        ) => Err(err(405, format!("{} is not allowed on {path}", req.method))),
        _ => Err(err(404, format!("no such resource {path}"))),
    };
    result.unwrap_or_else(|e| e)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Approve,
    Reject,
    Revoke,
}

struct Call<'a> {
    store: &'a Store,
    ctx: &'a Context,
    role: Role,
    actor: &'a str,
    body: &'a [u8],
}

type Result<T> = std::result::Result<T, Response>;

fn internal(e: crate::store::StoreError) -> Response {
    err(500, e.0)
}

fn query_params<'q>(query: &'q str, known: &[&str]) -> Result<Vec<(&'q str, &'q str)>> {
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !known.contains(&k) {
            return Err(err(
                400,
                format!(
                    "unknown query parameter {k:?} (known: {})",
                    known.join(", ")
                ),
            ));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn limit(v: &str) -> Result<usize> {
    match v.parse::<usize>() {
        Ok(n) if (1..=PAGE).contains(&n) => Ok(n),
        _ => Err(err(400, format!("limit {v:?} is not 1-{PAGE}"))),
    }
}

impl Call<'_> {
    fn require(&self, roles: &[Role], what: &str) -> Result<()> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(err(
                403,
                format!("{what} is not allowed for role {:?}", self.role).to_lowercase(),
            ))
        }
    }

    fn json<T: serde::de::DeserializeOwned>(&self, what: &str) -> Result<T> {
        serde_json::from_slice(self.body).map_err(|e| err(400, format!("{what}: {e}")))
    }

    fn badge(&self, id: &str) -> Result<Badge> {
        if !model::valid_badge_id(id) {
            return Err(err(404, format!("no badge {id:?}")));
        }
        self.store
            .badge(id)
            .map_err(internal)?
            .ok_or_else(|| err(404, format!("no badge {id}")))
    }

    fn commit(&self, action: Action, badges: Vec<Badge>, next_badge: u64) -> Result<Entry> {
        self.store
            .commit(Entry {
                seq: 0,
                at: self.ctx.now,
                actor: self.actor.to_owned(),
                role: self.role,
                action,
                badges,
                next_badge,
            })
            .map_err(internal)
    }

    /// Why an employee may not get another badge (they hold an open one), if so.
    fn open_badge_conflict(&self, employee_id: &str) -> Result<Option<String>> {
        let open = self.store.open_badge_of(employee_id).map_err(internal)?;
        Ok(open.map(|b| format!("employee {employee_id} already has badge {b}")))
    }

    /// A new badge numbered `number`, requested now by this caller; an approved one
    /// (an import) is also decided now by this caller.
    fn issue(&self, new: NewBadge, number: u64, status: Status) -> Badge {
        let decided = status == Status::Approved;
        Badge {
            id: format!("B{number:06}"),
            employee_id: new.employee_id,
            name: new.name,
            site: new.site,
            zones: new.zones,
            status,
            requested_at: self.ctx.now,
            requested_by: self.actor.to_owned(),
            decided_at: decided.then_some(self.ctx.now),
            decided_by: decided.then(|| self.actor.to_owned()),
            reason: None,
        }
    }

    fn request(&self) -> Result<Response> {
        self.require(&[Role::Employee, Role::Security], "requesting a badge")?;
        let new: NewBadge = self.json("badge request")?;
        model::validate_new(&new, &self.ctx.sites).map_err(|e| err(400, e))?;
        if self.role == Role::Employee && new.employee_id != self.actor {
            return Err(err(403, "an employee requests badges for themselves only"));
        }
        if let Some(why) = self.open_badge_conflict(&new.employee_id)? {
            return Err(err(409, why));
        }
        let head = self.store.head().map_err(internal)?;
        let badge = self.issue(new, head.next_badge, Status::Pending);
        self.commit(Action::Request, vec![badge.clone()], head.next_badge + 1)?;
        Ok(ok(201, &badge))
    }

    fn get(&self, id: &str) -> Result<Response> {
        let b = self.badge(id)?;
        if self.role == Role::Employee && b.employee_id != self.actor {
            return Err(err(403, "an employee reads their own badges only"));
        }
        Ok(ok(200, &b))
    }

    fn list(&self, query: &str) -> Result<Response> {
        self.require(&[Role::Manager, Role::Security], "listing badges")?;
        let (mut status, mut after, mut n) = (None, None, PAGE);
        for (k, v) in query_params(query, &["status", "after", "limit"])? {
            match k {
                "status" => {
                    status = Some(Status::parse(v).ok_or_else(|| {
                        err(
                            400,
                            format!(
                                "status {v:?} is not pending, active, approved, rejected or revoked"
                            ),
                        )
                    })?);
                }
                "after" if model::valid_badge_id(v) => after = Some(v),
                "after" => return Err(err(400, format!("after {v:?} is not a badge id"))),
                _ => n = limit(v)?,
            }
        }
        let mut badges = Vec::new();
        let mut cursor = after.map(str::to_owned);
        // Read in pages until `n` match or the records end.
        loop {
            let page = self
                .store
                .badges_after(cursor.as_deref(), PAGE)
                .map_err(internal)?;
            let Some(last) = page.last().map(|b| b.id.clone()) else {
                break;
            };
            for b in page {
                if status.is_none_or(|s| s == b.status) {
                    badges.push(b);
                    if badges.len() == n {
                        break;
                    }
                }
            }
            if badges.len() == n {
                break;
            }
            cursor = Some(last);
        }
        let next = (badges.len() == n).then(|| badges.last().map(|b| b.id.clone()));
        Ok(ok(
            200,
            &json!({ "badges": badges, "next": next.flatten() }),
        ))
    }

    fn decide(&self, id: &str, d: Decision) -> Result<Response> {
        match d {
            Decision::Approve => self.require(&[Role::Manager], "approving")?,
            Decision::Reject => self.require(&[Role::Manager], "rejecting")?,
            Decision::Revoke => self.require(&[Role::Security], "revoking")?,
        }
        let reason = match d {
            Decision::Approve => None,
            Decision::Reject | Decision::Revoke => {
                let r: Reason = self.json("reason")?;
                model::validate_reason(&r).map_err(|e| err(400, e))?;
                Some(r.reason)
            }
        };
        let mut b = self.badge(id)?;
        let (from, to, action) = match d {
            Decision::Approve => (Status::Pending, Status::Approved, Action::Approve),
            Decision::Reject => (Status::Pending, Status::Rejected, Action::Reject),
            Decision::Revoke => (Status::Approved, Status::Revoked, Action::Revoke),
        };
        if b.status != from {
            return Err(err(
                409,
                format!(
                    "badge {id} is {}, not {}",
                    json!(b.status).as_str().unwrap_or_default(),
                    json!(from).as_str().unwrap_or_default()
                ),
            ));
        }
        if d == Decision::Approve && b.employee_id == self.actor {
            return Err(err(403, "a manager does not approve their own badge"));
        }
        b.status = to;
        b.decided_at = Some(self.ctx.now);
        b.decided_by = Some(self.actor.to_owned());
        b.reason = reason;
        let head = self.store.head().map_err(internal)?;
        self.commit(action, vec![b.clone()], head.next_badge)?;
        Ok(ok(200, &b))
    }

    fn import(&self) -> Result<Response> {
        self.require(&[Role::Security], "importing badges")?;
        let list: Vec<NewBadge> = self.json("import (a JSON array of badge requests)")?;
        if list.is_empty() || list.len() > MAX_IMPORT {
            return Err(err(
                400,
                format!("an import holds 1 to {MAX_IMPORT} badges"),
            ));
        }
        let head = self.store.head().map_err(internal)?;
        let mut seen = std::collections::BTreeSet::new();
        let mut badges = Vec::with_capacity(list.len());
        for (i, new) in list.into_iter().enumerate() {
            model::validate_new(&new, &self.ctx.sites)
                .map_err(|e| err(400, format!("badge {i}: {e}")))?;
            if !seen.insert(new.employee_id.clone()) {
                return Err(err(
                    409,
                    format!("badge {i}: employee {} is listed twice", new.employee_id),
                ));
            }
            if let Some(why) = self.open_badge_conflict(&new.employee_id)? {
                return Err(err(409, format!("badge {i}: {why}")));
            }
            badges.push(self.issue(new, head.next_badge + i as u64, Status::Approved));
        }
        let next = head.next_badge + badges.len() as u64;
        let count = badges.len();
        let entry = self.commit(Action::Import, badges, next)?;
        Ok(ok(201, &json!({ "imported": count, "version": entry.seq })))
    }

    fn audit(&self, query: &str) -> Result<Response> {
        self.require(&[Role::Security], "reading the audit trail")?;
        let (mut after, mut n) = (0, PAGE);
        for (k, v) in query_params(query, &["after", "limit"])? {
            match k {
                "after" => {
                    after = v
                        .parse()
                        .map_err(|_| err(400, format!("after {v:?} is not a version")))?;
                }
                _ => n = limit(v)?,
            }
        }
        let entries = self.store.audit(after, n).map_err(internal)?;
        Ok(ok(200, &json!({ "entries": entries })))
    }

    fn state(&self) -> Result<Response> {
        self.require(&[Role::Security], "reading the state summary")?;
        Ok(ok(200, &self.store.summary().map_err(internal)?))
    }
}
