//! The wasmux `WasmVm` traits implemented on [wasmi] (an interpreter).
//!
//! This crate knows nothing about proxy-wasm. It compiles modules, links every entry of
//! [`HOST_FUNCS`](wasmux_abi::HOST_FUNCS) in one loop, instantiates, calls exports and exposes
//! linear memory; the ABI itself lives in `wasmux-abi`.
//!
//! # Design
//!
//! - **One engine, one linker.** [`WasmiEngine`] owns a `wasmi::Engine` and a single `Linker`
//!   holding every host function under every import module name. Compilation uses wasmi's
//!   lazy translation: a module is parsed and validated up front (about 1 ms for a proxy-wasm
//!   filter) and each function is translated to wasmi bytecode on its first call. Instances
//!   of a module share its translated code; per-worker instances never recompile.
//! - **Host state in the store.** Each instance has its own `Store` whose data holds the
//!   [`HostState`](wasmux_abi::HostState), the resolved exports (indexed by
//!   [`FuncRef`](wasmux_abi::FuncRef)), the `memory` export, the fuel budget and the memory
//!   limiter. Host functions reach it through the `Caller`; there are no thread-locals.
//! - **Raw values.** Host functions and exports see raw `u64` words (`i32` zero-extended,
//!   `i64` as its bits). Signatures made only of `i32`s, which is nearly all of proxy-wasm, go
//!   through typed trampolines (`Linker::func_wrap`, `TypedFunc`); anything else through
//!   wasmi's dynamic `Val` path (`Linker::func_new`, `Func::call_resumable`).
//! - **Deadlines are fuel.** Fuel metering is always on. A callback deadline `d` becomes a
//!   budget of `d` × [`WasmiConfig::fuel_per_ms`] fuel for the whole top-level call, including
//!   the re-entrant calls its host functions make (the guest allocator): those draw on the
//!   same budget and never refuel. The default rate, [`DEFAULT_FUEL_PER_MS`], is what an
//!   empty wasm loop burns per millisecond on the project machine, so a deadline is a bound
//!   on guest instructions, not on wall time: it is deterministic (the same call stops at the
//!   same instruction on every run), and time spent inside host functions is not counted.
//!   Translating a function on its first call is charged to the call too. Running out of
//!   budget is [`TrapKind::Deadline`](wasmux_abi::TrapKind).
//! - **Interrupts.** wasmi cannot be stopped from another thread, so calls run in fuel
//!   slices: the store gets at most [`INTERRUPT_CHECK`] worth of fuel at a time, and when a
//!   slice runs out the call pauses (wasmi's resumable calls), checks the interrupt flag and
//!   the budget, then refuels and resumes. Every host function also checks the flag first.
//!   An [`interrupt_handle`](wasmux_abi::WasmInstance::interrupt_handle) therefore stops the
//!   running call at its next host call or at the end of the current slice, whichever comes
//!   first: after at most one slice (10 ms × `fuel_per_ms` fuel) of guest execution, plus
//!   the host function running at the time, plus one instruction that needs more fuel than a
//!   slice (a huge `memory.fill`), which runs to completion first. The instantiation-time
//!   `start` function runs in one piece and cannot be interrupted (the handle does not exist
//!   yet); it is bounded by the callback deadline.
//! - **Memory limit.** A store resource limiter refuses growth beyond
//!   [`Limits::max_memory_bytes`](wasmux_abi::Limits): `memory.grow` returns -1. A trap that
//!   follows a refused growth within the same call is reported as
//!   [`TrapKind::MemoryLimit`](wasmux_abi::TrapKind).
//! - **Stack.** wasm-to-wasm calls run on wasmi's own stacks, not the native one; wasmi
//!   bounds the value stack in bytes and the call depth in frames, per engine. [`WasmiConfig::max_stack_bytes`] sets the
//!   value stack to that many bytes and the depth to one frame per [`STACK_BYTES_PER_FRAME`]
//!   bytes (16384 frames for the default 1 MiB), so deep recursion traps with
//!   [`TrapKind::StackOverflow`](wasmux_abi::TrapKind) as on the compiling engines.
//!   `Limits::max_stack_bytes` given to `instantiate` is not applied per instance.
//! - **Errors.** wasmi trap codes are normalized into [`wasmux_abi::Trap`]. wasmi records no
//!   wasm backtrace, so a trap's backtrace lists only the guest entry points the host called,
//!   innermost first (for a trap in the allocator during a callback:
//!   `malloc <- proxy_on_configure`). An [`wasmux_abi::Error`] raised by a host function is
//!   parked in the store while wasmi unwinds and comes back out unchanged.
//!
//! Module serialization is not offered: wasmi has no compiled artifact to save, and
//! compiling is already cheap.
//!
//! # Build profiles: wasmi's dispatch
//!
//! By default (wasmi's `auto-dispatch`), wasmi 2.0 chains its instruction handlers through
//! calls that LLVM must compile into jumps. If it does not, every executed instruction costs
//! native stack and a long-running guest aborts the whole process with a stack overflow.
//! wasmi only selects this dispatch in optimized builds (`opt-level` 2, 3, `s`, `z`), but
//! debug assertions defeat the optimization (wasmi-labs/wasmi#2039: with this workspace's
//! `dev` profile, which optimizes dependencies at `opt-level = 2` and keeps debug assertions,
//! the first infinite-loop test overflowed), and so can many codegen units
//! (wasmi-labs/wasmi#1942). The
//! wasmux workspace builds the `wasmi` package with `debug-assertions = false` and
//! `codegen-units = 1` in every profile (root `Cargo.toml`); **an embedder must do the same**
//! in its own workspace:
//!
//! ```toml
//! [profile.dev.package.wasmi]
//! debug-assertions = false
//! codegen-units = 1
//!
//! [profile.release.package.wasmi]
//! codegen-units = 1
//! ```
//!
//! or enable this crate's `portable-dispatch` feature (wasmi's loop dispatch): safe in any
//! profile, but about 7× slower on tight loops here (an empty loop ran 117 × 10³ fuel/ms
//! instead of 890 × 10³), which also makes fuel deadlines about 7× longer in wall time unless
//! [`WasmiConfig::fuel_per_ms`] is lowered to match.

#![forbid(unsafe_code)]

mod error;
mod imports;
mod instance;
mod module;
mod typed;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use wasmux_abi::{Limits, Result, WasmEngine, WasmModule};

pub use instance::WasmiInstance;
pub use module::WasmiModule;

/// The engine name reported in errors and traps.
pub const ENGINE_NAME: &str = "wasmi";

/// The wasmi version this crate is pinned to.
pub const WASMI_VERSION: &str = "2.0.0";

/// Fuel per millisecond of guest execution used to turn a callback deadline into fuel.
///
/// Measured on the project machine (Debian 12 x86_64, 2 cores shared with other builds, load
/// average 3-4, release build, tail-call dispatch): an empty `(loop $l (br $l))` burns
/// 0.89-0.94 × 10⁶ fuel per millisecond on wasmi 2.0.0 with default fuel costs (best of 5
/// runs of 2 × 10⁹ fuel), and a 500 ms deadline at this rate stopped it after about 560 ms of
/// wall time. Reproduce with
/// `cargo test --release -p wasmux-wasmi --test backend -- --ignored --nocapture fuel_rate`.
/// Real filter code (loads, stores, calls) retires fewer fuel units per millisecond than an
/// empty loop, so its deadlines err on the generous side.
pub const DEFAULT_FUEL_PER_MS: u64 = 1_000_000;

/// The longest stretch of guest execution, as fuel at the configured rate, between two checks
/// for an interrupt request.
pub const INTERRUPT_CHECK: Duration = Duration::from_millis(10);

/// Bytes of [`WasmiConfig::max_stack_bytes`] counted per wasm call frame when deriving wasmi's
/// maximum call depth.
pub const STACK_BYTES_PER_FRAME: usize = 64;

/// wasmi's smallest value stack (its default initial height).
const MIN_STACK_BYTES: usize = 1_000;

/// Settings of a [`WasmiEngine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmiConfig {
    max_stack_bytes: usize,
    fuel_per_ms: u64,
    lazy: bool,
}

impl Default for WasmiConfig {
    fn default() -> Self {
        Self { max_stack_bytes: Limits::DEFAULT_STACK, fuel_per_ms: DEFAULT_FUEL_PER_MS, lazy: true }
    }
}

impl WasmiConfig {
    /// Sets the maximum wasm stack in bytes for every instance of the engine (default
    /// [`Limits::DEFAULT_STACK`]): wasmi's value stack in bytes, and its call depth at one
    /// frame per [`STACK_BYTES_PER_FRAME`] bytes.
    #[must_use]
    pub fn max_stack_bytes(mut self, bytes: usize) -> Self {
        self.max_stack_bytes = bytes;
        self
    }

    /// Sets the fuel a millisecond of callback deadline is worth (default
    /// [`DEFAULT_FUEL_PER_MS`], at least 1).
    #[must_use]
    pub fn fuel_per_ms(mut self, fuel: u64) -> Self {
        self.fuel_per_ms = fuel.max(1);
        self
    }

    /// Chooses lazy translation (default: validate up front, translate each function on its
    /// first call) or eager translation of every function at compile time.
    #[must_use]
    pub fn lazy(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }

    /// The maximum call depth derived from the stack size.
    fn max_depth(&self) -> usize {
        (self.max_stack_bytes / STACK_BYTES_PER_FRAME).max(1)
    }

    /// The fuel a duration of guest execution is worth, at least 1.
    pub(crate) fn fuel_for(&self, d: Duration) -> u64 {
        let fuel = d.as_nanos().saturating_mul(u128::from(self.fuel_per_ms)) / 1_000_000;
        u64::try_from(fuel).unwrap_or(u64::MAX).max(1)
    }
}

/// The state every module and instance of an engine shares.
pub(crate) struct Shared {
    pub(crate) engine: wasmi::Engine,
    pub(crate) linker: wasmi::Linker<instance::StoreData>,
    pub(crate) config: WasmiConfig,
}

/// A [`WasmEngine`] on wasmi.
///
/// Cheap to clone; clones share the engine (and its translated code) and the host-function
/// linker.
#[derive(Clone)]
pub struct WasmiEngine {
    shared: Arc<Shared>,
}

impl fmt::Debug for WasmiEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmiEngine").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

impl WasmiEngine {
    /// Creates an engine and links every host function.
    ///
    /// # Errors
    /// [`Error::Engine`](wasmux_abi::Error::Engine) when wasmi rejects a host function.
    pub fn new(config: WasmiConfig) -> Result<Self> {
        let mut wc = wasmi::Config::default();
        let stack = config.max_stack_bytes.max(MIN_STACK_BYTES);
        wc.consume_fuel(true)
            .compilation_mode(if config.lazy {
                wasmi::CompilationMode::LazyTranslation
            } else {
                wasmi::CompilationMode::Eager
            })
            .set_max_stack_height(stack)
            .set_max_recursion_depth(config.max_depth());
        let engine = wasmi::Engine::new(&wc);
        let linker = imports::linker(&engine)?;
        Ok(Self { shared: Arc::new(Shared { engine, linker, config }) })
    }

    /// The underlying wasmi engine.
    pub fn wasmi(&self) -> &wasmi::Engine {
        &self.shared.engine
    }
}

impl WasmEngine for WasmiEngine {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn compile(&self, bytes: &[u8]) -> Result<Arc<dyn WasmModule>> {
        Ok(Arc::new(WasmiModule::new(self.shared.clone(), bytes)?))
    }

    fn fingerprint(&self) -> String {
        let c = &self.shared.config;
        let settings = format!(
            "stack={};depth={};mode={};fuel=on;target={}-{}",
            c.max_stack_bytes.max(MIN_STACK_BYTES),
            c.max_depth(),
            if c.lazy { "lazy-translation" } else { "eager" },
            std::env::consts::ARCH,
            std::env::consts::OS,
        );
        format!("{ENGINE_NAME}-{WASMI_VERSION}-{:016x}", wasmux_abi::stable_hash(settings.as_bytes()))
    }
}
