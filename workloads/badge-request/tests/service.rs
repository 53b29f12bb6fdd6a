//! The service on the host: the API end to end on a real folder, every error it names,
//! the sample data set, and recovery from a crash at each step of a commit.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use badge_request::api::{Context, Request, Response, handle};
use badge_request::caller::{CallerKey, mint};
use badge_request::store::{Action, Entry, Store};
use serde_json::{Value, json};

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!("badge-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const NOW: u64 = 1_800_000_000;

/// The owner's caller key (a fixed test key).
fn caller_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[42; 32])
}

fn ctx() -> Context {
    use base64::Engine as _;
    let public =
        base64::engine::general_purpose::STANDARD.encode(caller_key().verifying_key().as_bytes());
    Context {
        sites: badge_request::sites(None),
        now: NOW,
        caller_key: CallerKey::parse(Some(&public)),
    }
}

/// `authorization` for `who` (role, id), valid for ten minutes.
fn bearer(who: (&str, &str)) -> String {
    format!("Bearer {}", mint(&caller_key(), who.0, who.1, NOW + 600))
}

fn call(root: &Path, method: &str, path: &str, who: (&str, &str), body: &Value) -> Response {
    let body = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body).unwrap()
    };
    handle(
        root,
        &ctx(),
        &Request {
            method,
            path,
            authorization: Some(&bearer(who)),
            body: &body,
        },
    )
}

const ADA: (&str, &str) = ("employee", "E000042");
const BOSS: (&str, &str) = ("manager", "E000001");
const SEC: (&str, &str) = ("security", "guard-7");

fn request_ada(root: &Path) -> Response {
    call(
        root,
        "POST",
        "/badges",
        ADA,
        &json!({"employee_id": "E000042", "name": "Ada Lovelace", "site": "Zurich", "zones": ["lobby", "lab-2"]}),
    )
}

fn error(r: &Response) -> &str {
    r.body["error"].as_str().unwrap_or_default()
}

#[test]
fn request_approve_list_revoke_and_the_audit_trail() {
    let d = Dir::new("flow");
    let r = request_ada(&d.0);
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["id"], "B000001");
    assert_eq!(r.body["status"], "pending");

    let r = call(&d.0, "POST", "/badges/B000001/approve", BOSS, &Value::Null);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "approved");
    assert_eq!(r.body["decided_by"], "E000001");

    let r = call(&d.0, "GET", "/badges?status=active", SEC, &Value::Null);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["badges"].as_array().unwrap().len(), 1);

    let r = call(&d.0, "GET", "/badges/B000001", ADA, &Value::Null);
    assert_eq!(r.status, 200);
    assert_eq!(r.body["name"], "Ada Lovelace");

    let r = call(
        &d.0,
        "POST",
        "/badges/B000001/revoke",
        SEC,
        &json!({"reason": "left the company"}),
    );
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "revoked");
    // Revoked: Ada may request again.
    assert_eq!(request_ada(&d.0).status, 201);

    let r = call(&d.0, "GET", "/audit", SEC, &Value::Null);
    let entries = r.body["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["request", "approve", "revoke", "request"]);
    let seqs: Vec<u64> = entries.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(entries[2]["actor"], "guard-7");
    assert_eq!(entries[2]["badges"][0]["reason"], "left the company");
    let r = call(&d.0, "GET", "/audit?after=3", SEC, &Value::Null);
    assert_eq!(r.body["entries"].as_array().unwrap().len(), 1);

    let r = call(&d.0, "GET", "/state", SEC, &Value::Null);
    assert_eq!(r.body["version"], 4);
    assert_eq!(r.body["revoked"], 1);
    assert_eq!(r.body["pending"], 1);
}

#[test]
fn every_bad_request_is_named() {
    let d = Dir::new("errors");
    assert_eq!(request_ada(&d.0).status, 201);
    let anonymous = |authorization: Option<&str>, ctx: &Context| {
        handle(
            &d.0,
            ctx,
            &Request {
                method: "GET",
                path: "/badges/B000001",
                authorization,
                body: b"",
            },
        )
    };
    // A token signed with another key, and one for an older time.
    let forged = format!(
        "Bearer {}",
        mint(
            &ed25519_dalek::SigningKey::from_bytes(&[43; 32]),
            "security",
            "guard-7",
            NOW + 600
        )
    );
    let expired = format!("Bearer {}", mint(&caller_key(), "security", "guard-7", NOW));
    let unconfigured = Context {
        caller_key: CallerKey::parse(None),
        ..ctx()
    };
    let cases: Vec<(Response, u16, &str)> = vec![
        (anonymous(None, &ctx()), 401, "missing authorization"),
        (
            anonymous(Some("Basic Z3Vlc3Q6Z3Vlc3Q="), &ctx()),
            401,
            "not a Bearer token",
        ),
        (anonymous(Some(&forged), &ctx()), 401, "does not verify"),
        (anonymous(Some(&expired), &ctx()), 401, "expired"),
        (
            anonymous(Some(&bearer(SEC)), &unconfigured),
            503,
            "CALLER_KEY is not set",
        ),
        (
            call(&d.0, "GET", "/badges", ("root", "x"), &Value::Null),
            401,
            "\"root\"",
        ),
        (
            call(&d.0, "GET", "/badges", ("manager", ""), &Value::Null),
            401,
            "sub",
        ),
        (
            call(
                &d.0,
                "POST",
                "/badges",
                ("employee", "E000043"),
                &json!({"employee_id": "E000042", "name": "Eve", "site": "Bern", "zones": ["lobby"]}),
            ),
            403,
            "themselves",
        ),
        (
            call(
                &d.0,
                "POST",
                "/badges",
                SEC,
                &json!({"employee_id": "E000099", "name": "Eve", "site": "Paris", "zones": ["lobby"]}),
            ),
            400,
            "site \"Paris\"",
        ),
        (
            call(
                &d.0,
                "POST",
                "/badges",
                SEC,
                &json!({"employee_id": "E000099", "name": "Eve", "site": "Bern", "zones": ["lobby"], "admin": true}),
            ),
            400,
            "admin",
        ),
        (request_ada(&d.0), 409, "already has badge B000001"),
        (
            call(
                &d.0,
                "POST",
                "/badges/B000001/approve",
                ("manager", "E000042"),
                &Value::Null,
            ),
            403,
            "own badge",
        ),
        (
            call(&d.0, "POST", "/badges/B000001/approve", SEC, &Value::Null),
            403,
            "approving",
        ),
        (
            call(
                &d.0,
                "POST",
                "/badges/B000001/revoke",
                SEC,
                &json!({"reason": "x"}),
            ),
            409,
            "is pending, not approved",
        ),
        (
            call(
                &d.0,
                "POST",
                "/badges/B000001/reject",
                BOSS,
                &json!({"reason": ""}),
            ),
            400,
            "reason is empty",
        ),
        (
            call(&d.0, "GET", "/badges/B000009", SEC, &Value::Null),
            404,
            "no badge B000009",
        ),
        (
            call(&d.0, "GET", "/badges/..%2Fhead", SEC, &Value::Null),
            404,
            "no badge",
        ),
        (
            call(
                &d.0,
                "GET",
                "/badges/B000001",
                ("employee", "E000043"),
                &Value::Null,
            ),
            403,
            "their own",
        ),
        (
            call(&d.0, "GET", "/badges", ADA, &Value::Null),
            403,
            "listing",
        ),
        (
            call(&d.0, "GET", "/badges?colour=red", SEC, &Value::Null),
            400,
            "unknown query parameter \"colour\"",
        ),
        (
            call(&d.0, "GET", "/badges?limit=0", SEC, &Value::Null),
            400,
            "limit",
        ),
        (
            call(&d.0, "GET", "/badges?after=..%2Fhead", SEC, &Value::Null),
            400,
            "is not a badge id",
        ),
        (
            call(&d.0, "DELETE", "/badges/B000001", SEC, &Value::Null),
            405,
            "DELETE",
        ),
        (
            call(&d.0, "GET", "/nowhere", SEC, &Value::Null),
            404,
            "/nowhere",
        ),
    ];
    for (r, status, needle) in cases {
        assert_eq!(r.status, status, "{:?}", r.body);
        assert!(error(&r).contains(needle), "{:?} lacks {needle}", r.body);
    }
    let big = vec![b' '; badge_request::api::MAX_BODY + 1];
    let r = handle(
        &d.0,
        &ctx(),
        &Request {
            method: "POST",
            path: "/import",
            authorization: Some(&bearer(SEC)),
            body: &big,
        },
    );
    assert_eq!(r.status, 413);
    // None of the refused requests changed anything.
    let r = call(&d.0, "GET", "/state", SEC, &Value::Null);
    assert_eq!(r.body["version"], 1);
}

fn sample() -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample/employees.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn the_sample_data_set_imports_all_or_nothing() {
    let d = Dir::new("import");
    let employees = sample();
    assert_eq!(employees.as_array().unwrap().len(), 3000);
    let r = call(&d.0, "POST", "/import", SEC, &employees);
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["imported"], 3000);
    let before = call(&d.0, "GET", "/state", SEC, &Value::Null).body;
    assert_eq!(before["approved"], 3000);

    // A second import that overlaps: refused as a whole, naming the first conflict.
    let mut again = employees.as_array().unwrap()[..2].to_vec();
    again.insert(
        0,
        json!({"employee_id": "E999999", "name": "New Hire", "site": "Bern", "zones": ["lobby"]}),
    );
    let r = call(&d.0, "POST", "/import", SEC, &Value::Array(again));
    assert_eq!(r.status, 409, "{:?}", r.body);
    assert!(error(&r).starts_with("badge 1: employee"), "{:?}", r.body);
    assert_eq!(call(&d.0, "GET", "/state", SEC, &Value::Null).body, before);

    // Listing in pages walks every record once.
    let mut seen = 0;
    let mut after = String::new();
    loop {
        let q = if after.is_empty() {
            "/badges?status=active&limit=1000".to_owned()
        } else {
            format!("/badges?status=active&limit=1000&after={after}")
        };
        let r = call(&d.0, "GET", &q, ("manager", "E000001"), &Value::Null);
        let page = r.body["badges"].as_array().unwrap();
        seen += page.len();
        match r.body["next"].as_str() {
            Some(n) => after = n.to_owned(),
            None => break,
        }
        if page.is_empty() {
            break;
        }
    }
    assert_eq!(seen, 3000);
    // A few dozen bucket files hold them, not one file per badge.
    let files = std::fs::read_dir(d.0.join("badges")).unwrap().count()
        + std::fs::read_dir(d.0.join("employees")).unwrap().count();
    assert!(files <= 3000 / 128 + 1 + 16, "{files} files");
}

/// A change to badges in two buckets that a crash cut after the first bucket's new
/// file was renamed into place (and the audit line appended), before the second's.
#[test]
fn a_crash_between_two_buckets_is_finished_on_the_next_request() {
    let (done, cut) = (Dir::new("buckets-done"), Dir::new("buckets-cut"));
    for d in [&done, &cut] {
        let r = call(&d.0, "POST", "/import", SEC, &sample());
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    let store = Store::open(&done.0).unwrap();
    let mut badges = vec![
        store.badge("B000001").unwrap().unwrap(),
        store.badge("B000200").unwrap().unwrap(),
    ];
    for b in &mut badges {
        b.status = badge_request::model::Status::Revoked;
        b.decided_at = Some(NOW);
        b.decided_by = Some("guard-7".into());
        b.reason = Some("lost".into());
    }
    let head = store.head().unwrap();
    let entry = store
        .commit(Entry {
            seq: 0,
            at: NOW,
            actor: "guard-7".into(),
            role: badge_request::model::Role::Security,
            action: Action::Revoke,
            badges,
            next_badge: head.next_badge,
        })
        .unwrap();
    // The cut twin: the change pending, its audit line and the first bucket written.
    std::fs::write(
        cut.0.join("pending.json"),
        serde_json::to_vec(&entry).unwrap(),
    )
    .unwrap();
    for f in ["audit.jsonl", "badges/0.json"] {
        std::fs::copy(done.0.join(f), cut.0.join(f)).unwrap();
    }
    assert_ne!(
        std::fs::read(done.0.join("badges/1.json")).unwrap(),
        std::fs::read(cut.0.join("badges/1.json")).unwrap()
    );
    let state = |d: &Dir| call(&d.0, "GET", "/state", SEC, &Value::Null).body;
    assert_eq!(state(&cut), state(&done));
    assert_eq!(state(&done)["revoked"], 2);
    assert!(!cut.0.join("pending.json").exists());
    // Both employees may request again: the index lost their revoked badges.
    for d in [&done, &cut] {
        let r = call(&d.0, "GET", "/badges/B000200", SEC, &Value::Null);
        let employee = r.body["employee_id"].as_str().unwrap().to_owned();
        let again =
            json!({"employee_id": employee, "name": "Again", "site": "Zurich", "zones": ["lobby"]});
        let r = call(&d.0, "POST", "/badges", SEC, &again);
        assert_eq!(r.status, 201, "{:?}", r.body);
    }
    assert_eq!(state(&cut), state(&done));
}

/// Records written by the layout before buckets (a file per badge and per employee)
/// are moved into buckets when the store opens: the same records, digest and index.
#[test]
fn records_of_the_file_per_badge_layout_are_moved_into_buckets() {
    let (now, old) = (Dir::new("layout-now"), Dir::new("layout-old"));
    assert_eq!(request_ada(&now.0).status, 201);
    let before = call(&now.0, "GET", "/state", SEC, &Value::Null).body;
    let ada = call(&now.0, "GET", "/badges/B000001", SEC, &Value::Null).body;
    for d in ["badges", "employees"] {
        std::fs::create_dir_all(old.0.join(d)).unwrap();
    }
    for f in ["head.json", "audit.jsonl"] {
        std::fs::copy(now.0.join(f), old.0.join(f)).unwrap();
    }
    std::fs::write(
        old.0.join("badges/B000001.json"),
        serde_json::to_vec(&ada).unwrap(),
    )
    .unwrap();
    std::fs::write(old.0.join("employees/E000042"), "B000001").unwrap();

    assert_eq!(
        call(&old.0, "GET", "/state", SEC, &Value::Null).body,
        before
    );
    assert!(!old.0.join("badges/B000001.json").exists());
    assert!(!old.0.join("employees/E000042").exists());
    // The index came along: Ada's open badge still blocks a second request.
    let r = request_ada(&old.0);
    assert_eq!(r.status, 409, "{:?}", r.body);
}

fn entry_for_ada(seq: u64) -> Entry {
    let r: Value = json!({
        "id": "B000001", "employee_id": "E000042", "name": "Ada Lovelace", "site": "Zurich",
        "zones": ["lobby"], "status": "pending", "requested_at": 1, "requested_by": "E000042"
    });
    Entry {
        seq,
        at: 1,
        actor: "E000042".into(),
        role: badge_request::model::Role::Employee,
        action: Action::Request,
        badges: vec![serde_json::from_value(r).unwrap()],
        next_badge: 2,
    }
}

#[test]
fn a_crash_at_any_step_of_a_commit_is_finished_once_on_the_next_request() {
    // After the commit point (pending.json renamed into place) and before anything else.
    let d = Dir::new("crash-pending");
    Store::open(&d.0).unwrap();
    std::fs::write(
        d.0.join("pending.json"),
        serde_json::to_vec(&entry_for_ada(1)).unwrap(),
    )
    .unwrap();
    let r = call(&d.0, "GET", "/badges/B000001", SEC, &Value::Null);
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(!d.0.join("pending.json").exists());

    // After the audit line was appended, before head.json: the line is not doubled.
    let d = Dir::new("crash-audit");
    Store::open(&d.0).unwrap();
    let e = entry_for_ada(1);
    std::fs::write(d.0.join("pending.json"), serde_json::to_vec(&e).unwrap()).unwrap();
    let mut line = serde_json::to_vec(&e).unwrap();
    line.push(b'\n');
    std::fs::write(d.0.join("audit.jsonl"), &line).unwrap();
    let r = call(&d.0, "GET", "/audit", SEC, &Value::Null);
    assert_eq!(
        r.body["entries"].as_array().unwrap().len(),
        1,
        "{:?}",
        r.body
    );
    assert_eq!(
        std::fs::read(d.0.join("audit.jsonl")).unwrap(),
        line,
        "the audit trail holds the change once"
    );

    // A torn append with no pending change (the crash came before the commit point):
    // never acknowledged, ignored by readers and cut by the next commit.
    let d = Dir::new("crash-torn");
    assert_eq!(request_ada(&d.0).status, 201);
    let audit = d.0.join("audit.jsonl");
    let good = std::fs::read(&audit).unwrap();
    let mut torn = good.clone();
    torn.extend_from_slice(b"{\"seq\":2,\"at\":");
    std::fs::write(&audit, &torn).unwrap();
    let r = call(&d.0, "GET", "/audit", SEC, &Value::Null);
    assert_eq!(r.body["entries"].as_array().unwrap().len(), 1);
    let r = call(&d.0, "POST", "/badges/B000001/approve", BOSS, &Value::Null);
    assert_eq!(r.status, 200);
    let r = call(&d.0, "GET", "/audit", SEC, &Value::Null);
    assert_eq!(r.body["entries"].as_array().unwrap().len(), 2);
    assert!(std::fs::read(&audit).unwrap().starts_with(&good));

    // A pending change that does not follow the version: refused, nothing served.
    let d = Dir::new("crash-gap");
    Store::open(&d.0).unwrap();
    std::fs::write(
        d.0.join("pending.json"),
        serde_json::to_vec(&entry_for_ada(5)).unwrap(),
    )
    .unwrap();
    let r = call(&d.0, "GET", "/state", SEC, &Value::Null);
    assert_eq!(r.status, 500);
    assert!(
        error(&r).contains("does not follow version 0"),
        "{:?}",
        r.body
    );
}

#[test]
fn equal_histories_have_equal_digests() {
    let (a, b) = (Dir::new("digest-a"), Dir::new("digest-b"));
    for d in [&a, &b] {
        assert_eq!(request_ada(&d.0).status, 201);
    }
    let state = |d: &Dir| call(&d.0, "GET", "/state", SEC, &Value::Null).body;
    assert_eq!(state(&a), state(&b));
    call(&b.0, "POST", "/badges/B000001/approve", BOSS, &Value::Null);
    assert_ne!(state(&a)["sha256"], state(&b)["sha256"]);
}

#[test]
fn an_audit_trail_shorter_than_its_head_is_refused_never_padded() {
    let d = Dir::new("audit-cut");
    assert_eq!(request_ada(&d.0).status, 201);
    let audit = d.0.join("audit.jsonl");
    let good = std::fs::read(&audit).unwrap();
    std::fs::write(&audit, &good[..good.len() - 5]).unwrap();
    for path in ["/audit", "/state"] {
        let r = call(&d.0, "GET", path, SEC, &Value::Null);
        assert_eq!(r.status, 500, "{path}");
        assert!(error(&r).contains("is shorter"), "{path}: {:?}", r.body);
    }
    // A change is refused too, and the trail is left as it was (not padded).
    let r = call(&d.0, "POST", "/badges/B000001/approve", BOSS, &Value::Null);
    assert_eq!(r.status, 500, "{:?}", r.body);
    assert_eq!(std::fs::read(&audit).unwrap(), &good[..good.len() - 5]);
}
