//! HTTP front end: turns requests into calls on the agent's core and back into JSON.
//! The core modules never see HTTP types.

mod attestation;
pub mod auth;
mod eventlog;
mod healthz;
mod state;
mod workloads;

use std::convert::Infallible;
use std::sync::Arc;

use cvm_proto::agent::ErrorBody;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::debug;

use crate::AgentState;

/// The response body type of every handler (boxed: a followed log streams).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A body of known bytes.
pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).boxed_unsync()
}

/// How long a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Accept TLS connections forever; each is served on its own task, HTTP/2 or HTTP/1.1
/// as the client chooses. There is no plain-HTTP port: the API is only reachable
/// through the attested key.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AgentState>,
    tls: Arc<rustls::ServerConfig>,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => return debug!(%peer, "TLS handshake timed out"),
                };
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(req, &state).await) }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Largest request body accepted (an activation request is about 400 bytes), but for
/// a bundle.
const MAX_REQUEST_BODY: usize = 64 << 10;

/// Read the body up to `limit` bytes.
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, limit).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "BadRequest",
            format!("request body unreadable or over {limit} bytes: {e}"),
        )),
    }
}

async fn route(req: Request<Incoming>, state: &Arc<AgentState>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if path == "/v1/workloads"
        || path.starts_with("/v1/workloads/")
        || path == "/v1/metrics"
        || path == "/v1/migrations"
        || path.starts_with("/v1/migrations/")
    {
        return route_workloads(req, state).await;
    }
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => healthz::get(),
        (&Method::GET, "/v1/eventlog") => eventlog::get(state),
        (&Method::GET, "/v1/state") => state::get(state),
        (&Method::GET, "/v1/attestation/passport") => {
            attestation::passport(state.passports.clone()).await
        }
        (&Method::GET, "/v1/attestation/identity") => {
            attestation::identity(state.attestation.clone()).await
        }
        (&Method::GET, "/v1/attestation") => {
            attestation::evidence(state.attestation.clone(), req.uri().query()).await
        }
        (&Method::POST, "/v1/attestation/activate") => {
            match read_body(req.into_body(), MAX_REQUEST_BODY).await {
                Ok(body) => attestation::activate(state.attestation.clone(), &body).await,
                Err(resp) => resp,
            }
        }
        (
            _,
            "/healthz"
            | "/v1/eventlog"
            | "/v1/state"
            | "/v1/attestation/identity"
            | "/v1/attestation/passport"
            | "/v1/attestation"
            | "/v1/attestation/activate",
        ) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            format!("{method} is not allowed here"),
        ),
        (_, path) => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no endpoint {path}"),
        ),
    }
}

/// The workload API: the deploy is authorised by its bundle's signature, everything
/// else by an owner-signed request, and an owner sees only its own workloads.
async fn route_workloads(req: Request<Incoming>, state: &Arc<AgentState>) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let path = parts.uri.path().to_owned();
    let method = parts.method.clone();
    if method == Method::POST && path == "/v1/workloads" {
        return match read_body(body, cvm_runtime::bundle::MAX_BUNDLE).await {
            Ok(bundle) => workloads::deploy(&state.workloads, &bundle).await,
            Err(resp) => resp,
        };
    }
    // Another appliance's offer: authorised by its release certificate (signed by an
    // appliance the broker affirmed, naming this one), not by an owner.
    if method == Method::POST && path == "/v1/migrations" {
        return match read_body(body, crate::workloads::migrate::MAX_OFFER).await {
            Ok(offer) => workloads::receive(&state.workloads, &offer).await,
            Err(resp) => resp,
        };
    }
    let body = match read_body(body, MAX_REQUEST_BODY).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    let owner = match auth::authorize(
        &parts,
        &body,
        &state.owners,
        &state.tls_key_sha256,
        &state.replay,
    ) {
        Ok(kid) => kid,
        Err(detail) => return error(StatusCode::UNAUTHORIZED, "Unauthorized", detail),
    };
    let w = &state.workloads;
    if let Some(id) = path.strip_prefix("/v1/migrations/") {
        return match method {
            Method::GET => workloads::migration(w, id, &owner),
            _ => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                format!("{method} is not allowed here"),
            ),
        };
    }
    let rest = path.strip_prefix("/v1/workloads/").unwrap_or("");
    let (name, action) = rest.split_once('/').unwrap_or((rest, ""));
    match (&method, path.as_str(), action) {
        (&Method::GET, "/v1/workloads", _) => workloads::list(w, &owner),
        (&Method::GET, "/v1/metrics", _) => workloads::metrics(w, &owner),
        (&Method::GET, _, "") if !name.is_empty() => workloads::status(w, name, &owner),
        (&Method::DELETE, _, "") if !name.is_empty() => workloads::remove(w, name, &owner).await,
        (&Method::GET, _, "logs") => workloads::logs(w, name, &owner, parts.uri.query()),
        (&Method::POST, _, "stop") => workloads::stop(w, name, &owner).await,
        (&Method::POST, _, "migrate") => workloads::migrate(w, name, &owner, &body).await,
        _ => error(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("no endpoint {method} {path}"),
        ),
    }
}

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut resp = Response::new(full(Bytes::from(bytes)));
            *resp.status_mut() = status;
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Serialize",
            e.to_string(),
        ),
    }
}

/// An [`ErrorBody`] response.
pub fn error(status: StatusCode, kind: &str, detail: String) -> Response<Body> {
    let body = ErrorBody {
        kind: kind.to_owned(),
        detail,
    };
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let mut resp = Response::new(full(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
