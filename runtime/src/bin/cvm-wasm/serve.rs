//! `wasi:http` components: one instance per request from the pre-instantiated
//! component, each request under the policy's limits; a failed request is reported
//! and answered with 500, and the service keeps serving.

use std::convert::Infallible;
use std::sync::Arc;

use cvm_runtime::launch::{Listen, StatusEvent};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use wasmtime_wasi_http::WasiHttpView as _;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::capabilities::{Capabilities, ComponentCtx};
use crate::engine::{Engine, MAX_CONCURRENT};
use crate::status::{Status, reason};

struct Server {
    engine: Engine,
    pre: ProxyPre<ComponentCtx>,
    caps: Capabilities,
    status: Status,
    /// One permit per live instance: held until the handler task ends, not only until
    /// the response head, so `http.concurrency` bounds instances that are still running
    /// (a client that disconnects does not free its request's slot early).
    slots: Arc<Semaphore>,
}

/// A bound listener: bound before the process confines itself, so the confinement
/// need not grant the socket's folder or port to the workload.
pub enum Bound {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket.
    Unix(UnixListener, String),
}

/// Bind where the agent said to serve.
pub async fn bind(listen: &Listen) -> wasmtime::Result<Bound> {
    match listen {
        Listen::Tcp(addr) => {
            Ok(Bound::Tcp(TcpListener::bind(addr).await.map_err(|e| {
                wasmtime::format_err!("listen on {addr}: {e}")
            })?))
        }
        Listen::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let l = UnixListener::bind(path)
                .map_err(|e| wasmtime::format_err!("listen on {}: {e}", path.display()))?;
            Ok(Bound::Unix(l, listen.to_string()))
        }
    }
}

/// Serve until the process is stopped.
pub async fn serve(
    engine: Engine,
    pre: ProxyPre<ComponentCtx>,
    caps: Capabilities,
    bound: Bound,
    status: &Status,
    concurrency: u32,
) -> wasmtime::Result<()> {
    let server = Arc::new(Server {
        engine,
        pre,
        caps,
        status: status.clone(),
        slots: Arc::new(Semaphore::new(concurrency.clamp(1, MAX_CONCURRENT) as usize)),
    });
    match bound {
        Bound::Tcp(l) => {
            status.send(&StatusEvent::Ready {
                listen: Some(format!("tcp:{}", l.local_addr()?)),
            });
            loop {
                let (stream, _) = l.accept().await?;
                stream.set_nodelay(true)?;
                connection(server.clone(), stream);
            }
        }
        Bound::Unix(l, name) => {
            status.send(&StatusEvent::Ready { listen: Some(name) });
            loop {
                let (stream, _) = l.accept().await?;
                connection(server.clone(), stream);
            }
        }
    }
}

fn connection(server: Arc<Server>, stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static) {
    tokio::task::spawn(async move {
        let service = service_fn(move |req| {
            let server = server.clone();
            async move { Ok::<_, Infallible>(server.handle(req).await) }
        });
        let _ = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
}

impl Server {
    async fn handle(&self, req: Request<Incoming>) -> Response<HyperOutgoingBody> {
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "workload is stopping");
        };
        match self.call(req, slot).await {
            Ok(resp) => resp,
            Err(reason) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("workload failed: {reason}\n"),
            ),
        }
    }

    /// Answer one request; a failure is reported (once) and its reason returned.
    async fn call(
        &self,
        req: Request<Incoming>,
        slot: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Response<HyperOutgoingBody>, String> {
        let report = |e: wasmtime::Error| {
            let reason = reason(&e);
            self.status.send(&StatusEvent::RequestFailed {
                reason: reason.clone(),
            });
            reason
        };
        let (store, req, out, rx) = self.prepare(req).map_err(report)?;

        let mut store = store;
        let pre = self.pre.clone();
        let ticks = self.engine.ticker.as_ref().map(|t| t.active());
        // The handler may keep running after it sent the response head (streaming the
        // body), so it runs as a task of its own, still under the limits.
        let limits = self.engine.limits;
        let status = self.status.clone();
        let task = tokio::task::spawn(async move {
            let _ticks = ticks;
            let _slot = slot;
            let run = async {
                let proxy = pre.instantiate_async(&mut store).await?;
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await
            };
            // The task is the one place a handler failure is reported.
            let r = limits.within(run).await;
            if let Err(e) = &r {
                status.send(&StatusEvent::RequestFailed { reason: reason(e) });
            }
            r
        });
        match rx.await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(code)) => Err(report(wasmtime::format_err!(
                "the handler answered with error {code:?}"
            ))),
            Err(_) => match task.await {
                Ok(Ok(())) => Err(report(wasmtime::format_err!(
                    "the handler returned without a response"
                ))),
                Ok(Err(e)) => Err(reason(&e)),
                Err(e) => Err(report(wasmtime::format_err!(
                    "the request task failed: {e}"
                ))),
            },
        }
    }

    #[allow(clippy::type_complexity)]
    fn prepare(
        &self,
        req: Request<Incoming>,
    ) -> wasmtime::Result<(
        wasmtime::Store<ComponentCtx>,
        wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostIncomingRequest>,
        wasmtime::component::Resource<wasmtime_wasi_http::p2::types::HostResponseOutparam>,
        tokio::sync::oneshot::Receiver<
            Result<
                Response<HyperOutgoingBody>,
                wasmtime_wasi_http::p2::bindings::http::types::ErrorCode,
            >,
        >,
    )> {
        let mut store = self.caps.component_store(&self.engine)?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let req = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, req)?;
        let out = store.data_mut().http().new_response_outparam(tx)?;
        Ok((store, req, out, rx))
    }
}

fn plain(status: StatusCode, text: &str) -> Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(text.to_owned()))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp
}
