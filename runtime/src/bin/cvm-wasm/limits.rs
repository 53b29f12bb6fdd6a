//! The policy's limits on one store: linear memory (a limiter that says which limit
//! was hit), fuel, and wall-clock time (epoch ticks that only run while a limited
//! execution is in flight, so idle workloads never wake up).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Trap;

use wasmtime::ResourceLimiter;

/// One epoch tick.
pub const TICK: Duration = Duration::from_millis(10);
/// Largest table a workload may grow (a guard, not a policy knob).
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// Linear memory may not grow past the policy's limit.
pub struct MemoryLimit {
    pub max_bytes: usize,
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            wasmtime::bail!(
                "memory limit reached: the workload asked for {} MiB, its policy allows {} MiB",
                desired.div_ceil(1 << 20),
                self.max_bytes >> 20
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// Increments the engine's epoch every [`TICK`] while any [`Active`] guard lives.
#[derive(Clone)]
pub struct Ticker {
    active: Arc<AtomicUsize>,
    thread: Thread,
}

impl Ticker {
    pub fn start(engine: wasmtime::Engine) -> std::io::Result<Self> {
        let active = Arc::new(AtomicUsize::new(0));
        let seen = active.clone();
        let handle = std::thread::Builder::new()
            .name("epoch".into())
            .spawn(move || {
                loop {
                    if seen.load(Ordering::Acquire) == 0 {
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })?;
        Ok(Self {
            active,
            thread: handle.thread().clone(),
        })
    }

    /// Ticks run until the guard is dropped.
    pub fn active(&self) -> Active {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.thread.unpark();
        Active(self.active.clone())
    }
}

/// Keeps the [`Ticker`] running.
pub struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Ticks in a wall-clock limit (at least one).
pub fn ticks(wall_ms: u64) -> u64 {
    (wall_ms / TICK.as_millis() as u64).max(1)
}

/// The per-execution limits of the policy (memory is the store limiter's).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Fuel units per execution (0: none).
    pub fuel: u64,
    /// Wall-clock ms per execution (0: none).
    pub wall_ms: u64,
}

impl Limits {
    /// Bound a whole execution by the wall-clock limit: epoch ticks stop compute, this
    /// timeout stops a workload blocked in a host call. Errors name the limit hit.
    pub async fn within<T>(
        self,
        fut: impl Future<Output = wasmtime::Result<T>>,
    ) -> wasmtime::Result<T> {
        if self.wall_ms == 0 {
            return fut.await.map_err(|e| self.explain(e));
        }
        // The grace lets the epoch trap, which names the same limit, win for compute.
        let limit = Duration::from_millis(self.wall_ms) + TICK * 5;
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r.map_err(|e| self.explain(e)),
            Err(_) => Err(self.wall_limit()),
        }
    }

    fn wall_limit(self) -> wasmtime::Error {
        wasmtime::format_err!(
            "wall-clock limit reached: the policy allows {} ms",
            self.wall_ms
        )
    }

    /// Name the limit behind a trap.
    pub fn explain(self, e: wasmtime::Error) -> wasmtime::Error {
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => {
                wasmtime::format_err!("fuel limit reached: the policy allows {} units", self.fuel)
            }
            Some(Trap::Interrupt) => self.wall_limit(),
            _ => e,
        }
    }
}
