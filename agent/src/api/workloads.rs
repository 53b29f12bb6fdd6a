//! `/v1/workloads…` and `/v1/metrics`: deploy a bundle, list, status, logs (streamed
//! with `?follow=1`), stop, delete; every request but the deploy signed by the owner.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use cvm_proto::agent::LogLine;
use http_body_util::BodyExt as _;
use hyper::body::{Bytes, Frame};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

use super::{Body, error, json};
use crate::workloads::migrate::{self, MigrateError};
use crate::workloads::{DeployError, WorkloadError, Workloads};
use cvm_runtime::migration::{MigrateRequest, Offer};

/// `POST /v1/workloads`.
pub async fn deploy(w: &Arc<Workloads>, bundle: &[u8]) -> Response<Body> {
    // On its own task: a client that goes away must not cancel a deploy halfway
    // (after the state was opened, or with the runtime started).
    let (w, bundle) = (w.clone(), bundle.to_vec());
    let deployed =
        tokio::spawn(async move { crate::workloads::deploy::deploy(&w, &bundle).await }).await;
    let deployed = match deployed {
        Ok(d) => d,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal",
                format!("deploy task failed: {e}"),
            );
        }
    };
    match deployed {
        Ok(status) => json(StatusCode::CREATED, &status),
        Err(e) => {
            let status = match &e {
                DeployError::Bundle(cvm_runtime::bundle::BundleError::UnknownOwner(_))
                | DeployError::Bundle(cvm_runtime::bundle::BundleError::Signature)
                | DeployError::Key { .. } => StatusCode::FORBIDDEN,
                DeployError::Bundle(cvm_runtime::bundle::BundleError::TooLarge { .. }) => {
                    StatusCode::PAYLOAD_TOO_LARGE
                }
                DeployError::Bundle(_) => StatusCode::BAD_REQUEST,
                DeployError::Exists(_) => StatusCode::CONFLICT,
                DeployError::NoBroker | DeployError::NoMemory { .. } => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
                DeployError::Measure(_) => StatusCode::INTERNAL_SERVER_ERROR,
                // Rolled back, missing or removed state: the request conflicts with
                // what the broker recorded.
                DeployError::State(s) => match s.kind() {
                    "KeyRefused" | "StateKeyMismatch" => StatusCode::FORBIDDEN,
                    "StateUnavailable" => StatusCode::INTERNAL_SERVER_ERROR,
                    _ => StatusCode::CONFLICT,
                },
                DeployError::NotAllowed(_)
                | DeployError::Confinement(_)
                | DeployError::Content(_)
                | DeployError::Start(_) => StatusCode::UNPROCESSABLE_ENTITY,
            };
            error(status, e.kind(), e.to_string())
        }
    }
}

fn workload_error(e: WorkloadError) -> Response<Body> {
    match e {
        WorkloadError::NotFound(_) => error(StatusCode::NOT_FOUND, "NotFound", e.to_string()),
        WorkloadError::NotRunning(_) => error(StatusCode::CONFLICT, "NotRunning", e.to_string()),
        WorkloadError::Busy(_) => error(StatusCode::CONFLICT, "Busy", e.to_string()),
        WorkloadError::RemovalNotRecorded { .. } => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "RemovalNotRecorded",
            e.to_string(),
        ),
    }
}

fn migrate_error(e: MigrateError) -> Response<Body> {
    let status = match &e {
        MigrateError::Workload(WorkloadError::NotFound(_)) => StatusCode::NOT_FOUND,
        MigrateError::Workload(_) | MigrateError::NoState(_) => StatusCode::CONFLICT,
        MigrateError::BadRequest(_) => StatusCode::BAD_REQUEST,
        MigrateError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        MigrateError::Refused(_) => StatusCode::FORBIDDEN,
        MigrateError::Deploy(_) => StatusCode::UNPROCESSABLE_ENTITY,
    };
    error(status, e.kind(), e.to_string())
}

/// `POST /v1/workloads/NAME/migrate` (owner-signed): the report, whatever the outcome.
pub async fn migrate(w: &Arc<Workloads>, name: &str, owner: &[u8], body: &[u8]) -> Response<Body> {
    let req: MigrateRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                format!("migrate request: {e}"),
            );
        }
    };
    // Its own task: a client that goes away must not stop a migration halfway.
    let (w, name, owner) = (w.clone(), name.to_owned(), owner.to_vec());
    match tokio::spawn(async move { migrate::migrate(&w, &name, &owner, req).await }).await {
        Ok(Ok(report)) => json(StatusCode::OK, &report),
        Ok(Err(e)) => migrate_error(e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            format!("migration task failed: {e}"),
        ),
    }
}

/// `GET /v1/migrations/ID` (owner-signed): the report of a migration from here (a
/// pending one shows its outcome once settled).
pub fn migration(w: &Workloads, id: &str, owner: &[u8]) -> Response<Body> {
    match w.reports.get(id, owner) {
        Some(r) => json(StatusCode::OK, &r),
        None => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "no migration {id} of this owner's is known here (the last 64 are kept, until a restart)"
            ),
        ),
    }
}

/// `POST /v1/migrations`: another appliance's offer; the acceptance certificate.
pub async fn receive(w: &Arc<Workloads>, body: &[u8]) -> Response<Body> {
    let offer: Offer = match serde_json::from_slice(body) {
        Ok(o) => o,
        Err(e) => return error(StatusCode::BAD_REQUEST, "BadRequest", format!("offer: {e}")),
    };
    let w = w.clone();
    match tokio::spawn(async move { migrate::receive(&w, offer).await }).await {
        Ok(Ok(acceptance)) => json(StatusCode::OK, &acceptance),
        Ok(Err(e)) => migrate_error(e),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal",
            format!("migration task failed: {e}"),
        ),
    }
}

/// `GET /v1/workloads`.
pub fn list(w: &Workloads, owner: &[u8]) -> Response<Body> {
    json(StatusCode::OK, &w.list(Some(owner)))
}

/// `GET /v1/workloads/NAME`.
pub fn status(w: &Workloads, name: &str, owner: &[u8]) -> Response<Body> {
    match w.get(name, owner) {
        Ok(e) => match e.status() {
            Some(s) => json(StatusCode::OK, &s),
            None => workload_error(WorkloadError::NotFound(name.to_owned())),
        },
        Err(e) => workload_error(e),
    }
}

/// `POST /v1/workloads/NAME/stop`.
pub async fn stop(w: &Workloads, name: &str, owner: &[u8]) -> Response<Body> {
    match w.stop(name, owner).await {
        Ok(s) => json(StatusCode::OK, &s),
        Err(e) => workload_error(e),
    }
}

/// `DELETE /v1/workloads/NAME`.
pub async fn remove(w: &Workloads, name: &str, owner: &[u8]) -> Response<Body> {
    match w.remove(name, owner).await {
        Ok(()) => {
            let mut r = Response::new(super::full(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Err(e) => workload_error(e),
    }
}

/// `GET /v1/metrics`: the caller's workloads and the agent, Prometheus text format.
pub fn metrics(w: &Workloads, owner: &[u8]) -> Response<Body> {
    let mut r = Response::new(super::full(Bytes::from(w.metrics(Some(owner)))));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// `GET /v1/workloads/NAME/logs?since=SEQ&follow=1`: JSON lines.
pub fn logs(w: &Workloads, name: &str, owner: &[u8], query: Option<&str>) -> Response<Body> {
    let entry = match w.get(name, owner) {
        Ok(e) => e,
        Err(e) => return workload_error(e),
    };
    let param = |k: &str| {
        query
            .into_iter()
            .flat_map(|q| q.split('&'))
            .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
    };
    let since: u64 = match param("since").map(str::parse).transpose() {
        Ok(s) => s.unwrap_or(0),
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "since is not a number".into(),
            );
        }
    };
    let follow = param("follow") == Some("1");
    let lines_text = |lines: &[LogLine]| {
        let mut out = Vec::new();
        for l in lines {
            if let Ok(mut j) = serde_json::to_vec(l) {
                j.push(b'\n');
                out.extend(j);
            }
        }
        Bytes::from(out)
    };
    let mut resp = if !follow {
        Response::new(super::full(lines_text(&entry.logs.since(since))))
    } else {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        tokio::spawn(async move {
            let mut next = since;
            let mut wake = entry.logs.subscribe();
            loop {
                let lines = entry.logs.since(next);
                if let Some(last) = lines.last() {
                    next = last.seq + 1;
                    if tx.send(lines_text(&lines)).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    changed = wake.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Response::new(Channel(rx).boxed_unsync())
    };
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/jsonl"));
    resp
}

/// A body fed from a channel (a followed log).
struct Channel(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Channel {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
