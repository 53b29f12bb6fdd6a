//! The wasmtime engine for one workload: configured from its policy's limits, compiling
//! the verified Wasm and linking it against exactly the WASI worlds we provide.

use std::time::Instant;

use cvm_runtime::launch::{StatusEvent, WasmKind};
use cvm_runtime::policy::WorkloadPolicy;
use wasmtime::component::{Component, Linker};
use wasmtime::{Config, InstanceAllocationStrategy, Module, PoolingAllocationConfig};
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::capabilities::{ComponentCtx, P1Ctx};
use crate::limits::{Limits, Ticker};
use crate::status::Status;

/// Requests one workload process serves at once at most; also the instance pool's size.
pub const MAX_CONCURRENT: u32 = cvm_runtime::policy::MAX_CONCURRENCY;

/// What the Wasm turned out to be, ready to instantiate.
pub enum Program {
    /// Serves `wasi:http`, one instance per request.
    Http(ProxyPre<ComponentCtx>),
    /// A component command, run once.
    Command(CommandPre<ComponentCtx>),
    /// A preview 1 module, run once.
    Preview1(wasmtime::InstancePre<P1Ctx>),
}

/// The engine and the policy limits every store gets.
pub struct Engine {
    pub inner: wasmtime::Engine,
    /// Wall-clock ticks (10 ms) run only while a limited execution is in flight.
    pub ticker: Option<Ticker>,
    pub limits: Limits,
    pub memory_bytes: usize,
}

impl Engine {
    pub fn new(policy: &WorkloadPolicy) -> wasmtime::Result<Self> {
        let limits = &policy.limits;
        let memory_bytes = (limits.memory_mib as usize) << 20;
        let mut pool = PoolingAllocationConfig::default();
        // Small pools: one workload per process, a few concurrent requests each. The
        // reservations are virtual; only touched pages cost memory.
        pool.total_component_instances(MAX_CONCURRENT)
            .total_core_instances(MAX_CONCURRENT * 4)
            .total_memories(MAX_CONCURRENT * 2)
            .total_tables(MAX_CONCURRENT * 4)
            .total_stacks(MAX_CONCURRENT)
            .max_memory_size(memory_bytes)
            // Return a freed slot's memory to the kernel instead of keeping it warm:
            // idle workloads should cost (almost) nothing.
            .linear_memory_keep_resident(0)
            .max_unused_warm_slots(1);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            // Reasons stay one line; a backtrace of unnamed functions helps no owner.
            .wasm_backtrace_max_frames(None)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .consume_fuel(limits.fuel > 0)
            .epoch_interruption(limits.wall_ms > 0);
        let inner = wasmtime::Engine::new(&config)?;
        let ticker = match limits.wall_ms {
            0 => None,
            _ => Some(Ticker::start(inner.clone())?),
        };
        Ok(Self {
            inner,
            ticker,
            limits: Limits {
                fuel: limits.fuel,
                wall_ms: limits.wall_ms,
            },
            memory_bytes,
        })
    }

    /// Compile and link, checking that the Wasm's kind fits the policy.
    pub fn compile(
        &self,
        wasm: &[u8],
        policy: &WorkloadPolicy,
        status: &Status,
    ) -> wasmtime::Result<Program> {
        let started = Instant::now();
        let (kind, program) = match layer(wasm)? {
            Layer::Component => {
                let component = Component::new(&self.inner, wasm)
                    .map_err(|e| e.context("the Wasm is not a valid component"))?;
                let mut linker = Linker::<ComponentCtx>::new(&self.inner);
                wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
                wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
                let pre = linker.instantiate_pre(&component).map_err(|e| {
                    e.context("the component imports something this appliance does not provide")
                })?;
                if let Ok(proxy) = ProxyPre::new(pre.clone()) {
                    (WasmKind::HttpComponent, Program::Http(proxy))
                } else if let Ok(cmd) = CommandPre::new(pre) {
                    (WasmKind::CommandComponent, Program::Command(cmd))
                } else {
                    wasmtime::bail!(
                        "the component exports neither wasi:http/incoming-handler nor wasi:cli/run"
                    );
                }
            }
            Layer::Module => {
                let module = Module::new(&self.inner, wasm)
                    .map_err(|e| e.context("the Wasm is not a valid module"))?;
                let mut linker = wasmtime::Linker::<P1Ctx>::new(&self.inner);
                wasmtime_wasi::p1::add_to_linker_async(&mut linker, |c| &mut c.wasi)?;
                let pre = linker.instantiate_pre(&module).map_err(|e| {
                    e.context("the module imports something other than WASI preview 1")
                })?;
                (WasmKind::Preview1Module, Program::Preview1(pre))
            }
        };
        match (kind, &policy.http) {
            (WasmKind::HttpComponent, None) => wasmtime::bail!(
                "the component serves wasi:http but the policy has no `http` section"
            ),
            (WasmKind::CommandComponent | WasmKind::Preview1Module, Some(_)) => wasmtime::bail!(
                "the policy has `http` but the Wasm does not export wasi:http/incoming-handler"
            ),
            _ => {}
        }
        status.send(&StatusEvent::Compiled {
            kind,
            ms: started.elapsed().as_millis() as u64,
        });
        Ok(program)
    }
}

enum Layer {
    Module,
    Component,
}

/// The preamble says which: `\0asm`, a 16-bit version, a 16-bit layer (0 core, 1
/// component).
fn layer(wasm: &[u8]) -> wasmtime::Result<Layer> {
    match wasm {
        [0, b'a', b's', b'm', _, _, 0, 0, ..] => Ok(Layer::Module),
        [0, b'a', b's', b'm', _, _, 1, 0, ..] => Ok(Layer::Component),
        _ => wasmtime::bail!("the Wasm does not start with a module or component preamble"),
    }
}
