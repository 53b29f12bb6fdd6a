//! Checks of a guest's event log: it replays to the register the kernel reports, and
//! its digests are those of the files that went into the image.

use cvm_attest::{EventKind, HashAlg};
use cvm_image::Manifest;
use cvm_proto::agent::EventLogResponse;

pub use cvm_broker::appraise::Check;

/// Run every check; the caller decides what a failure means.
pub fn check_eventlog(resp: &EventLogResponse, manifest: Option<&Manifest>) -> Vec<Check> {
    let mut checks = Vec::new();
    if resp.register_values.is_empty() {
        checks.push(Check {
            name: "register".into(),
            ok: false,
            detail: format!("no register values reported for {:?}", resp.log.register),
        });
    }
    for rv in &resp.register_values {
        let name = format!("replay {:?} {}", resp.log.register, rv.hash_alg.name());
        let actual = hex::decode(&rv.value).unwrap_or_default();
        checks.push(match resp.log.verify_replay(rv.hash_alg, &actual) {
            Ok(()) => Check {
                name,
                ok: true,
                detail: rv.value.clone(),
            },
            Err(e) => Check {
                name,
                ok: false,
                detail: e.to_string(),
            },
        });
    }
    if let Some(m) = manifest {
        for (kind, path) in [
            (EventKind::InitBinary, cvm_image::GUEST_INIT),
            (EventKind::InitConfig, cvm_image::GUEST_INIT_CONFIG),
            (EventKind::AgentBinary, cvm_image::GUEST_AGENT),
        ] {
            checks.push(check_file(resp, m, kind, path));
        }
    }
    checks
}

fn check_file(resp: &EventLogResponse, m: &Manifest, kind: EventKind, path: &str) -> Check {
    let name = format!("{kind:?} digest = image file {path}");
    let logged = resp
        .log
        .find(kind)
        .and_then(|r| r.digest(HashAlg::Sha256).ok())
        .map(hex::encode);
    let expected = m.file(path).map(|f| f.sha256.clone());
    match (logged, expected) {
        (Some(l), Some(e)) if l == e => Check {
            name,
            ok: true,
            detail: l,
        },
        (Some(l), Some(e)) => Check {
            name,
            ok: false,
            detail: format!("measurement mismatch: expected {e}, got {l}"),
        },
        (None, _) => Check {
            name,
            ok: false,
            detail: "no such record in the event log".into(),
        },
        (_, None) => Check {
            name,
            ok: false,
            detail: "no such file in the image manifest".into(),
        },
    }
}
