//! HTTP front end: turns requests into calls on the agent's core and back into JSON.
//! The core modules never see HTTP types.

mod attestation;
mod eventlog;
mod healthz;
mod state;

use std::convert::Infallible;
use std::sync::Arc;

use cvm_proto::agent::ErrorBody;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::debug;

use crate::AgentState;

/// The response body type of every handler.
pub type Body = Full<Bytes>;

/// Accept connections forever; each is served on its own task.
pub async fn serve(listener: TcpListener, state: Arc<AgentState>) -> std::io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(req, &state).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Largest request body accepted (an activation request is about 400 bytes).
const MAX_REQUEST_BODY: usize = 64 << 10;

async fn route(req: Request<Incoming>, state: &Arc<AgentState>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => healthz::get(),
        (&Method::GET, "/v1/eventlog") => eventlog::get(state),
        (&Method::GET, "/v1/state") => state::get(state),
        (&Method::GET, "/v1/attestation/identity") => {
            attestation::identity(state.attestation.clone()).await
        }
        (&Method::GET, "/v1/attestation/evidence") => {
            attestation::evidence(state.attestation.clone(), req.uri().query()).await
        }
        (&Method::POST, "/v1/attestation/activate") => {
            match Limited::new(req.into_body(), MAX_REQUEST_BODY)
                .collect()
                .await
            {
                Ok(body) => {
                    attestation::activate(state.attestation.clone(), &body.to_bytes()).await
                }
                Err(e) => error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "BadRequest",
                    format!("request body unreadable or over {MAX_REQUEST_BODY} bytes: {e}"),
                ),
            }
        }
        (
            _,
            "/healthz"
            | "/v1/eventlog"
            | "/v1/state"
            | "/v1/attestation/identity"
            | "/v1/attestation/evidence"
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

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut resp = Response::new(Full::new(Bytes::from(bytes)));
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
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}
