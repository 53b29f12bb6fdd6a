//! `cvm-wasm`: runs one sealed workload — the agent starts one per workload, in its own
//! process (and, with the enforcement issue, its own cgroup and Landlock domain), so a
//! compromised runtime instance is contained by the kernel as well as by wasmtime.
//!
//! Input: the already verified and decrypted Wasm (the agent checked the owner's
//! signature, measured the manifest, fetched the key, decrypted and checked the hash),
//! the workload policy, the workload's state folder, and where to serve `wasi:http`
//! ([`cvm_runtime::launch::LaunchSpec`]). The Wasm is compiled here, in the guest, from
//! those bytes: nothing precompiled is ever loaded.
//!
//! Output: the workload's stdout/stderr on this process's stdout/stderr, and status
//! events ([`cvm_runtime::launch::StatusEvent`]) as JSON lines to `--status`.
#![deny(unsafe_code)]

mod capabilities;
mod engine;
mod limits;
mod run;
mod serve;
mod status;

use std::process::ExitCode;

use cvm_runtime::confinement::Confinement;
use cvm_runtime::launch::{LaunchSpec, StatusEvent};
use cvm_runtime::policy::WorkloadPolicy;

use crate::status::Status;

fn main() -> ExitCode {
    let spec = match LaunchSpec::parse(std::env::args().skip(1)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cvm-wasm: {e}");
            return ExitCode::from(2);
        }
    };
    let status = match Status::open(spec.status.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cvm-wasm: status socket: {e}");
            return ExitCode::from(2);
        }
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(wasmtime::Error::from)
        .and_then(|rt| rt.block_on(start(&spec, &status)));
    match result {
        Ok(code) => {
            status.send(&StatusEvent::Exited { code });
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
        Err(e) => {
            status.send(&StatusEvent::Failed {
                reason: status::reason(&e),
            });
            ExitCode::FAILURE
        }
    }
}

/// Read the inputs, bind, confine, compile, then serve or run. Returns a command's
/// exit code.
async fn start(spec: &LaunchSpec, status: &Status) -> wasmtime::Result<i32> {
    let policy_text = std::fs::read_to_string(&spec.policy)
        .map_err(|e| wasmtime::format_err!("read the policy {}: {e}", spec.policy.display()))?;
    let policy = WorkloadPolicy::from_yaml(&policy_text)?;
    let wasm = std::fs::read(&spec.wasm)
        .map_err(|e| wasmtime::format_err!("read the Wasm {}: {e}", spec.wasm.display()))?;
    let bound = match &spec.http {
        Some(listen) if policy.http.is_some() => Some(serve::bind(listen).await?),
        _ => None,
    };
    let caps = capabilities::Capabilities::new(spec, &policy, status.clone())?;
    if spec.confine {
        // Before the Wasm is compiled: a compiler bug a crafted module triggers is
        // contained by the kernel too.
        let c = Confinement::derive(&spec.name, &policy, &spec.state);
        let done = cvm_runtime::confine::apply(&c)
            .map_err(|e| wasmtime::format_err!("confinement {e}"))?;
        status.send(&StatusEvent::Confined {
            cgroup: done.cgroup,
            landlock: done.landlock,
        });
    }
    let engine = engine::Engine::new(&policy)?;
    let program = engine.compile(&wasm, &policy, status)?;
    drop(wasm);
    release_free_memory();
    match program {
        engine::Program::Http(pre) => {
            let bound = bound.ok_or_else(|| {
                wasmtime::format_err!(
                    "the policy has `http` but cvm-wasm was started without --http"
                )
            })?;
            let concurrency = policy.http.as_ref().map_or(1, |h| h.concurrency);
            serve::serve(engine, pre, caps, bound, status, concurrency).await?;
            Ok(0)
        }
        engine::Program::Command(pre) => {
            status.send(&StatusEvent::Ready { listen: None });
            run::command(&engine, pre, caps, status).await
        }
        engine::Program::Preview1(pre) => {
            status.send(&StatusEvent::Ready { listen: None });
            run::preview1(&engine, pre, caps, status).await
        }
    }
}

/// Compiling leaves megabytes of freed heap that malloc keeps; an idle workload should
/// not hold them (this is what lets a hundred workloads share a small guest).
fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own heap bookkeeping and returns unused
    // pages to the kernel; it takes no pointers from us and is thread-safe.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}
