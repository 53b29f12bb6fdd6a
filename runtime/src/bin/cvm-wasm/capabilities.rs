//! The policy's capabilities as WASI sees them: preopened folders of the workload's
//! own state (read-only or read-write), explicit args and env (nothing inherited), TCP
//! connect/bind allowlists (UDP and name lookup off), no outgoing `wasi:http`. Every
//! refusal is reported as a `denied` status event.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use cvm_runtime::launch::{LaunchSpec, StatusEvent};
use cvm_runtime::policy::{Access, WorkloadPolicy};
use wasmtime::Store;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::engine::Engine;
use crate::limits::{MemoryLimit, ticks};
use crate::status::Status;

/// What one workload may use; builds a fresh WASI context per store.
#[derive(Clone)]
pub struct Capabilities {
    argv: Vec<String>,
    env: Vec<(String, String)>,
    preopens: Vec<(PathBuf, String, FsPerms)>,
    connect: Arc<[SocketAddr]>,
    bind: Arc<[SocketAddr]>,
    status: Status,
}

impl Capabilities {
    /// Resolve the preopens beneath the state folder (creating them), refusing any that
    /// leads outside it (a symlink planted by an earlier run, say).
    pub fn new(
        spec: &LaunchSpec,
        policy: &WorkloadPolicy,
        status: Status,
    ) -> wasmtime::Result<Self> {
        let root = std::fs::canonicalize(&spec.state).map_err(|e| {
            wasmtime::format_err!("the workload's state folder {}: {e}", spec.state.display())
        })?;
        let mut preopens = Vec::new();
        for p in &policy.preopens {
            let host = root.join(&p.dir);
            std::fs::create_dir_all(&host)
                .map_err(|e| wasmtime::format_err!("create preopen {}: {e}", p.dir))?;
            let real = std::fs::canonicalize(&host)
                .map_err(|e| wasmtime::format_err!("resolve preopen {}: {e}", p.dir))?;
            if !real.starts_with(&root) {
                wasmtime::bail!(
                    "preopen {} resolves to {}, outside the workload's state",
                    p.dir,
                    real.display()
                );
            }
            let perms = match p.access {
                Access::Ro => FsPerms::ReadOnly,
                Access::Rw => FsPerms::ReadWrite,
            };
            preopens.push((real, p.guest.clone(), perms));
        }
        let mut argv = vec![spec.name.clone()];
        argv.extend(policy.args.iter().cloned());
        Ok(Self {
            argv,
            env: policy
                .env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            preopens,
            connect: policy.network.connect.clone().into(),
            bind: policy.network.bind.clone().into(),
            status,
        })
    }

    fn builder(&self) -> wasmtime::Result<WasiCtxBuilder> {
        let mut b = WasiCtxBuilder::new();
        b.args(&self.argv)
            .envs(&self.env)
            .inherit_stdout()
            .inherit_stderr();
        for (host, guest, perms) in &self.preopens {
            b.preopened_dir(host, guest, *perms)?;
        }
        b.allow_tcp(!self.connect.is_empty() || !self.bind.is_empty())
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let (connect, bind, status) =
            (self.connect.clone(), self.bind.clone(), self.status.clone());
        b.socket_addr_check(move |addr, use_| {
            let verdict = allowed(&connect, &bind, addr, use_);
            if let Err((what, list)) = verdict {
                status.send(&StatusEvent::Denied {
                    what: what.to_owned(),
                    detail: format!("{addr} is not in the policy's {list}"),
                });
            }
            let ok = verdict.is_ok();
            Box::pin(async move { ok })
        });
        Ok(b)
    }

    /// A store for a component, with the policy's limits applied.
    pub fn component_store(&self, engine: &Engine) -> wasmtime::Result<Store<ComponentCtx>> {
        let ctx = ComponentCtx {
            wasi: self.builder()?.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: NoOutgoingHttp(self.status.clone()),
            limit: MemoryLimit {
                max_bytes: engine.memory_bytes,
            },
        };
        limited(engine, ctx, |c| &mut c.limit)
    }

    /// A store for a preview 1 module, with the policy's limits applied.
    pub fn p1_store(&self, engine: &Engine) -> wasmtime::Result<Store<P1Ctx>> {
        let ctx = P1Ctx {
            wasi: self.builder()?.build_p1(),
            limit: MemoryLimit {
                max_bytes: engine.memory_bytes,
            },
        };
        limited(engine, ctx, |c| &mut c.limit)
    }
}

fn limited<T: 'static>(
    engine: &Engine,
    data: T,
    limit: fn(&mut T) -> &mut MemoryLimit,
) -> wasmtime::Result<Store<T>> {
    let mut store = Store::new(&engine.inner, data);
    store.limiter(move |d| limit(d));
    if engine.limits.fuel > 0 {
        store.set_fuel(engine.limits.fuel)?;
    }
    if engine.limits.wall_ms > 0 {
        store.set_epoch_deadline(ticks(engine.limits.wall_ms));
        store.epoch_deadline_trap();
    }
    Ok(store)
}

/// The network rule: connect and bind only to listed addresses; the implicit bind to
/// the wildcard address that `connect` performs is allowed when connecting is; listen
/// and accept only on a listed bind port; no UDP.
fn allowed(
    connect: &[SocketAddr],
    bind: &[SocketAddr],
    addr: SocketAddr,
    use_: SocketAddrUse,
) -> Result<(), (&'static str, &'static str)> {
    let ok = match use_ {
        SocketAddrUse::TcpConnect => connect.contains(&addr),
        SocketAddrUse::TcpBind => {
            bind.contains(&addr)
                || (!connect.is_empty() && addr.ip().is_unspecified() && addr.port() == 0)
        }
        SocketAddrUse::TcpListen => {
            addr.port() != 0 && bind.iter().any(|b| b.port() == addr.port())
        }
        SocketAddrUse::TcpAccept => !bind.is_empty(),
        SocketAddrUse::UdpBind | SocketAddrUse::UdpSend | SocketAddrUse::UdpReceive => false,
    };
    if ok {
        return Ok(());
    }
    Err(match use_ {
        SocketAddrUse::TcpConnect => ("connect", "network.connect"),
        SocketAddrUse::TcpBind => ("bind", "network.bind"),
        SocketAddrUse::TcpListen | SocketAddrUse::TcpAccept => ("listen", "network.bind"),
        _ => ("udp", "policy (UDP is never granted)"),
    })
}

/// A component's store data.
pub struct ComponentCtx {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: NoOutgoingHttp,
    limit: MemoryLimit,
}

impl WasiView for ComponentCtx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for ComponentCtx {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// A preview 1 module's store data.
pub struct P1Ctx {
    pub wasi: WasiP1Ctx,
    limit: MemoryLimit,
}

/// Workloads make no outgoing `wasi:http` requests (a policy rule for them would name
/// hosts; raw TCP under `network.connect` is what the policy grants today).
struct NoOutgoingHttp(Status);

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                hyper::Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for NoOutgoingHttp {
    fn send_request(
        &mut self,
        request: hyper::Request<WasiBody>,
        _options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        self.0.send(&StatusEvent::Denied {
            what: "http-request".into(),
            detail: format!(
                "{} {} (outgoing wasi:http is not granted)",
                request.method(),
                request.uri()
            ),
        });
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn network_rule() {
        let connect = [a("10.0.2.2:8443")];
        let bind = [a("0.0.0.0:9000")];
        assert!(allowed(&connect, &[], a("10.0.2.2:8443"), SocketAddrUse::TcpConnect).is_ok());
        assert!(allowed(&connect, &[], a("10.0.2.2:80"), SocketAddrUse::TcpConnect).is_err());
        // The implicit bind of connect, but nothing else, without a bind rule.
        assert!(allowed(&connect, &[], a("0.0.0.0:0"), SocketAddrUse::TcpBind).is_ok());
        assert!(allowed(&[], &[], a("0.0.0.0:0"), SocketAddrUse::TcpBind).is_err());
        assert!(allowed(&connect, &[], a("0.0.0.0:9000"), SocketAddrUse::TcpBind).is_err());
        assert!(allowed(&connect, &bind, a("0.0.0.0:9000"), SocketAddrUse::TcpBind).is_ok());
        assert!(allowed(&connect, &bind, a("0.0.0.0:9000"), SocketAddrUse::TcpListen).is_ok());
        assert!(allowed(&connect, &bind, a("0.0.0.0:0"), SocketAddrUse::TcpListen).is_err());
        assert!(allowed(&connect, &bind, a("10.0.2.2:53"), SocketAddrUse::UdpSend).is_err());
    }

    #[test]
    fn a_preopen_leading_outside_the_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink("/etc", state.join("data")).unwrap();
        let spec = LaunchSpec {
            name: "w".into(),
            wasm: "x".into(),
            policy: "x".into(),
            state,
            http: None,
            status: None,
            confine: false,
        };
        let policy =
            WorkloadPolicy::from_yaml("preopens: [{dir: data, guest: /data, access: ro}]").unwrap();
        let e = Capabilities::new(&spec, &policy, Status::open(None).unwrap())
            .err()
            .unwrap();
        assert!(crate::status::reason(&e).contains("outside the workload's state"));
    }
}
