//! Counters (cvm's extension of the KBS protocol) over HTTPS on loopback: read and
//! compare-and-set with an attestation token under the resource policy of the same
//! path, forward only, conflicts named with both values, durable across a restart, a
//! corrupt record an error (never a silent 0); and create-only resource writes, which
//! `cvm seal` uses so a new version of a workload never replaces its state key.
#![allow(clippy::unwrap_used)]

mod common;

use common::{ALLOW_ALL, Options, start};
use cvm_kbs_client::attester::SampleAttester;
use cvm_kbs_client::client::{ClientError, KbsClient};
use cvm_kbs_client::counter::{Counter, CounterUpdate};

const PATH: &str = "default/badge/state-key";

fn update(expect: u64, value: u64, holder: &str) -> CounterUpdate {
    CounterUpdate {
        expect,
        value,
        holder: holder.into(),
    }
}

fn refusal(e: ClientError) -> (u16, String, String) {
    match e {
        ClientError::Refused {
            status,
            kind,
            detail,
        } => (status, kind, detail),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[test]
fn a_counter_moves_forward_by_compare_and_set_only() {
    let b = start(Options {
        allow_sample: true,
        ..Options::default()
    });
    let mut c = KbsClient::new(b.client_config()).unwrap();
    // No session: nothing to show.
    assert!(matches!(c.counter(PATH), Err(ClientError::Protocol(_))));
    c.attest(&mut SampleAttester).unwrap();
    // The default policy never serves sample evidence: counters follow it.
    let (status, kind, _) = refusal(c.counter(PATH).unwrap_err());
    assert_eq!((status, kind.as_str()), (403, "PolicyDeny"));
    let (status, _, _) = refusal(c.advance_counter(PATH, &update(0, 1, "a")).unwrap_err());
    assert_eq!(status, 403);
    b.set_policy(ALLOW_ALL);

    assert_eq!(c.counter(PATH).unwrap(), Counter::default());
    let one = c.advance_counter(PATH, &update(0, 1, "agent-a")).unwrap();
    assert_eq!((one.value, one.holder.as_str()), (1, "agent-a"));
    // A writer that read an older value loses, told both numbers.
    let (status, kind, detail) = refusal(
        c.advance_counter(PATH, &update(0, 5, "agent-b"))
            .unwrap_err(),
    );
    assert_eq!((status, kind.as_str()), (409, "CounterConflict"));
    assert!(detail.contains("is at 1, not 0"), "{detail}");
    // Backwards or in place is refused before the store is touched.
    let (status, kind, detail) = refusal(c.advance_counter(PATH, &update(1, 1, "x")).unwrap_err());
    assert_eq!((status, kind.as_str()), (400, "BadCounterUpdate"));
    assert!(detail.contains("only moves forward"), "{detail}");
    assert_eq!(c.counter(PATH).unwrap(), one);
    // Repeating the update that was applied (a retry whose answer was lost) succeeds.
    assert_eq!(
        c.advance_counter(PATH, &update(0, 1, "agent-a")).unwrap(),
        one
    );
    // But not one that differs in its holder.
    assert_eq!(
        refusal(
            c.advance_counter(PATH, &update(0, 1, "agent-b"))
                .unwrap_err()
        )
        .0,
        409
    );
    // Another path is another counter.
    assert_eq!(c.counter("default/other/state-key").unwrap().value, 0);
    // Bad paths are refused as for resources.
    assert_eq!(refusal(c.counter("a/../b").unwrap_err()).0, 404);

    // The admin sees it; the audit log has the advance and the conflict.
    let r = b.admin("GET", &format!("/kbs/v0/admin/counter/{PATH}"), b"");
    let seen: Counter = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(seen, one);
    let audit = b.audit_log();
    assert!(
        audit.contains("\"endpoint\":\"counter\",\"outcome\":\"advance\""),
        "{audit}"
    );
    assert!(audit.contains("is at 1, not 0"), "{audit}");

    // Durable across a restart.
    let dir = b.stop();
    let root = dir.path().to_owned();
    let b = start(Options {
        allow_sample: true,
        dir: Some(dir),
        ..Options::default()
    });
    let mut c = KbsClient::new(b.client_config()).unwrap();
    c.attest(&mut SampleAttester).unwrap();
    assert_eq!(c.counter(PATH).unwrap(), one);
    // A record that does not parse is an error, never a counter back at 0.
    std::fs::write(root.join("counters").join(PATH), b"{\"value\":").unwrap();
    let (status, kind, detail) = refusal(c.counter(PATH).unwrap_err());
    assert_eq!((status, kind.as_str()), (500, "StorageError"));
    assert!(detail.contains("corrupt"), "{detail}");
    assert_eq!(
        refusal(c.advance_counter(PATH, &update(0, 1, "x")).unwrap_err()).0,
        500
    );
}

#[test]
fn the_admin_retires_a_counter_whose_state_is_lost() {
    let b = start(Options {
        allow_sample: true,
        ..Options::default()
    });
    b.set_policy(ALLOW_ALL);
    let mut c = KbsClient::new(b.client_config()).unwrap();
    c.attest(&mut SampleAttester).unwrap();
    let path = format!("/kbs/v0/admin/counter/{PATH}");
    // Nothing holds a counter never written: nothing to retire.
    let r = b.admin("POST", &path, br#"{"expect":0}"#);
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    c.advance_counter(PATH, &update(0, 7, "volume:abc/badge"))
        .unwrap();
    // The value the admin saw must still be the counter's.
    let r = b.admin("POST", &path, br#"{"expect":6}"#);
    assert_eq!(r.status, 409);
    assert!(String::from_utf8_lossy(&r.body).contains("is at 7, not 6"));
    // Not a retirement without the value.
    let r = b.admin("POST", &path, b"{}");
    assert!(
        String::from_utf8_lossy(&r.body).contains("SerdeError"),
        "{}",
        r.status
    );
    assert_eq!(c.counter(PATH).unwrap().value, 7);
    let r = b.admin("POST", &path, br#"{"expect":7}"#);
    assert_eq!(r.status, 200);
    let retired: Counter = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        (retired.value, retired.holder.as_str()),
        (8, "removed/badge")
    );
    assert_eq!(c.counter(PATH).unwrap(), retired);
    // Only the admin may: an attested TEE's token is not an admin token.
    let r = b
        .transport()
        .call(
            "POST",
            &path,
            None,
            None,
            Some(("application/json", br#"{"expect":8}"#.as_slice())),
        )
        .unwrap();
    assert_eq!(r.status, 401);
    assert_eq!(c.counter(PATH).unwrap(), retired);
    let audit = b.audit_log();
    assert!(
        audit.contains("\"endpoint\":\"retire-counter\",\"outcome\":\"admin\""),
        "{audit}"
    );
}

#[test]
fn a_create_only_write_keeps_the_existing_resource() {
    let b = start(Options::default());
    let put = |bytes: &[u8]| {
        b.transport()
            .call_with(
                "POST",
                "/kbs/v0/resource/default/badge/state-key",
                None,
                Some(&b.admin_token()),
                Some(("application/octet-stream", bytes)),
                &[("if-none-match", "*")],
            )
            .unwrap()
    };
    assert_eq!(put(b"first").status, 200);
    let r = put(b"second");
    assert_eq!(r.status, 412);
    assert!(String::from_utf8_lossy(&r.body).contains("ResourceExists"));
    let r = b.admin("GET", "/kbs/v0/admin/resource/default/badge/state-key", b"");
    assert_eq!(&r.body[..], b"first");
}
