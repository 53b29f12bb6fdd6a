//! HTTP(S) front end: hyper HTTP/1.1 over TCP, with rustls when the broker has a TLS
//! identity. It maps URLs to the protocol and admin operations, bounds every body,
//! and turns errors into Trustee's error shape. No operation sees HTTP types.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, HeaderValue, IF_NONE_MATCH, SET_COOKIE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::debug;

use crate::admin::PolicyBody;
use crate::error::KbsError;
use crate::kbs::{MAX_ATTEST_BODY, MAX_AUTH_BODY, MAX_COUNTER_BODY};
use crate::state::Broker;
use crate::store::{MAX_DOCUMENT, MAX_RESOURCE};

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "kbs-session-id";
/// The protocol's path prefix.
pub const PREFIX: &str = "/kbs/v0";
/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time a client has to finish the TLS handshake and send its headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Body = Full<Bytes>;

/// Serve `listener` until `shutdown` completes; TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    broker: Arc<Broker>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            debug!(%peer, "connection refused: too many connections");
            continue;
        };
        let broker = broker.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            match acceptor {
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_connection(TokioIo::new(tls), broker, peer).await,
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                }
                None => serve_connection(TokioIo::new(stream), broker, peer).await,
            }
        });
    }
}

async fn serve_connection<I>(io: I, broker: Arc<Broker>, peer: SocketAddr)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let broker = broker.clone();
        async move { Ok::<_, Infallible>(route(req, &broker, peer).await) }
    });
    if let Err(e) = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(io, service)
        .await
    {
        debug!(%peer, error = %e, "connection ended with an error");
    }
}

fn cookie(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == SESSION_COOKIE).then(|| v.to_owned())
        })
}

fn bearer(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(|t| t.trim().to_owned())
}

async fn body(req: Request<Incoming>, limit: usize) -> Result<Bytes, KbsError> {
    Limited::new(req.into_body(), limit)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .map_err(|_| KbsError::PayloadTooLarge(limit))
}

async fn route(req: Request<Incoming>, broker: &Broker, peer: SocketAddr) -> Response<Body> {
    let peer = peer.to_string();
    match dispatch(req, broker, &peer).await {
        Ok(resp) => resp,
        Err(e) => error(&e),
    }
}

async fn dispatch(
    req: Request<Incoming>,
    broker: &Broker,
    peer: &str,
) -> Result<Response<Body>, KbsError> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Err(KbsError::InvalidRequestPath(truncate(&path)));
    };
    let session = cookie(&req);
    let bearer = bearer(&req);
    let (session, bearer) = (session.as_deref(), bearer.as_deref());
    match (&method, rest) {
        (&Method::POST, "/auth") => {
            let b = body(req, MAX_AUTH_BODY).await?;
            let (id, challenge) = broker.auth(&b, peer)?;
            let mut resp = json(&challenge)?;
            let cookie = format!(
                "{SESSION_COOKIE}={id}; Path={PREFIX}; Max-Age={}; HttpOnly",
                broker.config().session_lifetime
            );
            if let Ok(v) = HeaderValue::from_str(&cookie) {
                resp.headers_mut().insert(SET_COOKIE, v);
            }
            Ok(resp)
        }
        (&Method::POST, "/attest") => {
            let b = body(req, MAX_ATTEST_BODY).await?;
            let token = broker.attest(session, &b, peer)?;
            json(&serde_json::json!({ "token": token }))
        }
        (&Method::POST, "/resource-policy") => {
            let b = body(req, MAX_DOCUMENT).await?;
            broker.admin_set_policy(bearer, &b, peer)?;
            Ok(empty())
        }
        (&Method::GET, "/resource-policy") => {
            let rego = broker.admin_get_policy(bearer, peer)?;
            json(&PolicyBody {
                policy: URL_SAFE_NO_PAD.encode(rego),
            })
        }
        (&Method::POST, "/reference-values") => {
            let b = body(req, MAX_DOCUMENT).await?;
            let name = broker.admin_set_reference(bearer, &b, peer)?;
            json(&serde_json::json!({ "name": name }))
        }
        (&Method::GET, "/reference-values") => json(&broker.admin_list_references(bearer, peer)?),
        (&Method::DELETE, r) if r.starts_with("/reference-values/") => {
            let name = &r["/reference-values/".len()..];
            broker.admin_remove_reference(bearer, name, peer)?;
            Ok(empty())
        }
        (&Method::GET, r) if r.starts_with("/resource/") => {
            let jwe = broker.resource(session, bearer, &r["/resource/".len()..], peer)?;
            Ok(with_type(Bytes::from(jwe), "application/json"))
        }
        (&Method::POST, r) if r.starts_with("/resource/") => {
            let create_only = req
                .headers()
                .get(IF_NONE_MATCH)
                .is_some_and(|v| v.as_bytes() == b"*");
            let b = body(req, MAX_RESOURCE).await?;
            broker.admin_put_resource(bearer, &r["/resource/".len()..], &b, create_only, peer)?;
            Ok(empty())
        }
        (&Method::DELETE, r) if r.starts_with("/resource/") => {
            broker.admin_remove_resource(bearer, &r["/resource/".len()..], peer)?;
            Ok(empty())
        }
        // The key attestation tokens are signed with (a JWK), for peers that check a
        // token as a passport. Public, like a certificate.
        (&Method::GET, "/token-key") => json(&broker.token_key.public_jwk()),
        (&Method::GET, r) if r.starts_with("/counter/") => {
            json(&broker.counter(session, bearer, &r["/counter/".len()..], peer)?)
        }
        (&Method::POST, r) if r.starts_with("/counter/") => {
            let b = body(req, MAX_COUNTER_BODY).await?;
            json(&broker.advance_counter(session, bearer, &r["/counter/".len()..], &b, peer)?)
        }
        (&Method::POST, r) if r.starts_with("/admin/counter/") => {
            let b = body(req, MAX_COUNTER_BODY).await?;
            json(&broker.admin_retire_counter(bearer, &r["/admin/counter/".len()..], &b, peer)?)
        }
        (&Method::GET, r) if r.starts_with("/admin/counter/") => {
            json(&broker.admin_get_counter(bearer, &r["/admin/counter/".len()..], peer)?)
        }
        (&Method::GET, r) if r.starts_with("/admin/resource/") => {
            let bytes = broker.admin_get_resource(bearer, &r["/admin/resource/".len()..], peer)?;
            Ok(with_type(
                Bytes::copy_from_slice(&bytes),
                "application/octet-stream",
            ))
        }
        (_, "/auth" | "/attest" | "/resource-policy" | "/reference-values" | "/token-key") => {
            Err(KbsError::MethodNotAllowed(method.to_string()))
        }
        (_, r)
            if r.starts_with("/resource/")
                || r.starts_with("/reference-values/")
                || r.starts_with("/counter/") =>
        {
            Err(KbsError::MethodNotAllowed(method.to_string()))
        }
        _ => Err(KbsError::InvalidRequestPath(truncate(&path))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

fn with_type(bytes: Bytes, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(bytes));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn empty() -> Response<Body> {
    Response::new(Full::new(Bytes::new()))
}

fn json<T: Serialize>(value: &T) -> Result<Response<Body>, KbsError> {
    let bytes = serde_json::to_vec(value).map_err(|e| KbsError::SerdeError(e.to_string()))?;
    Ok(with_type(Bytes::from(bytes), "application/json"))
}

fn error(e: &KbsError) -> Response<Body> {
    let bytes = serde_json::to_vec(&e.info()).unwrap_or_default();
    let mut resp = with_type(Bytes::from(bytes), "application/json");
    *resp.status_mut() = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::UNAUTHORIZED);
    resp
}
