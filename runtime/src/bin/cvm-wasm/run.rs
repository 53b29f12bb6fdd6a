//! Commands: run once, report the exit code, or the limit or trap that stopped it.

use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::bindings::CommandPre;

use crate::capabilities::{Capabilities, P1Ctx};
use crate::engine::Engine;
use crate::status::Status;

/// Run a component command to completion.
pub async fn command(
    engine: &Engine,
    pre: CommandPre<crate::capabilities::ComponentCtx>,
    caps: Capabilities,
    _status: &Status,
) -> wasmtime::Result<i32> {
    let mut store = caps.component_store(engine)?;
    let _ticks = engine.ticker.as_ref().map(|t| t.active());
    let run = async {
        let cmd = pre.instantiate_async(&mut store).await?;
        cmd.wasi_cli_run().call_run(&mut store).await
    };
    match engine.limits.within(run).await {
        Ok(Ok(())) => Ok(0),
        Ok(Err(())) => Ok(1),
        Err(e) => exit_code(e, engine),
    }
}

/// Run a preview 1 module's `_start` to completion.
pub async fn preview1(
    engine: &Engine,
    pre: wasmtime::InstancePre<P1Ctx>,
    caps: Capabilities,
    _status: &Status,
) -> wasmtime::Result<i32> {
    let mut store = caps.p1_store(engine)?;
    let _ticks = engine.ticker.as_ref().map(|t| t.active());
    let run = async {
        let instance = pre.instantiate_async(&mut store).await?;
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
        start.call_async(&mut store, ()).await
    };
    match engine.limits.within(run).await {
        Ok(()) => Ok(0),
        Err(e) => exit_code(e, engine),
    }
}

/// `proc_exit(n)` is an exit, not a failure.
fn exit_code(e: wasmtime::Error, engine: &Engine) -> wasmtime::Result<i32> {
    match e.downcast_ref::<I32Exit>() {
        Some(I32Exit(code)) => Ok(*code),
        None => Err(engine.limits.explain(e)),
    }
}
