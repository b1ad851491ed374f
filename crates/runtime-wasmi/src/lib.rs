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
//! - **Exports resolved once per module.** A module keeps a table of its function exports
//!   ([`wasmux_abi::export_table`]), sorted by name, with the type of each; [`FuncRef`](wasmux_abi::FuncRef) indexes it, so
//!   `lookup` is a binary search and a reference means the same export in every instance. An
//!   instance makes its handles for an export (wasmi looks exports up by name only) on the
//!   export's first call.
//! - **Host state in the store.** Each instance has its own `Store` whose data holds the
//!   [`HostState`](wasmux_abi::HostState), its export handles, the `memory` export, the
//!   deadline of the running call and the resource limiter. Host functions reach it through the `Caller`; there are no
//!   thread-locals.
//! - **Raw values.** Host functions and exports see raw `u64` words (`i32` zero-extended,
//!   `i64` as its bits). Signatures made only of `i32`s, which is nearly all of proxy-wasm, go
//!   through typed trampolines (`Linker::func_wrap`, `TypedFunc`); anything else through
//!   wasmi's dynamic `Val` path (`Linker::func_new`, `Func::call_resumable`).
//! - **Deadlines are wall-clock time.** A callback deadline bounds the whole top-level call in
//!   wall time: guest code, host functions, re-entrant calls into the guest (the allocator)
//!   and the translation of functions on their first call all count. Time is read from a
//!   coarse clock ([`wasmux_abi::deadline::CoarseClock`], one thread per engine advancing a
//!   tick count every [`WasmiConfig::clock_tick`], 1 ms by default, while a call's deadline
//!   may pass, or every 10 ms while the calls in flight all have deadlines of a second or
//!   more; parked when the engine is idle), so checking it is one
//!   atomic load, cheap enough for every host call; the bookkeeping of a call is a
//!   [`CallDeadline`](wasmux_abi::deadline::CallDeadline), as on the wasmtime backend.
//!   Deadlines are precise to about one tick (1 % of a deadline of a second or more): a
//!   call is never stopped before its deadline has passed (to within a tick), and never at
//!   all when the deadline is `None`. Stopping is
//!   [`TrapKind::Deadline`](wasmux_abi::TrapKind).
//! - **Fuel only pauses.** wasmi cannot be stopped from another thread, so fuel metering is
//!   on, but only as a pause mechanism: a call gets [`WasmiConfig::fuel_slice`] fuel at a
//!   time, and when a slice runs out the call pauses (wasmi's resumable calls), checks the
//!   interrupt flag and the deadline, then gets another slice and resumes. No fuel budget runs
//!   out on its own. Every host function also checks the flag and the deadline before it
//!   runs. A call therefore stops after its deadline passes (or after an
//!   [`interrupt_handle`](wasmux_abi::WasmInstance::interrupt_handle) is used) at its next
//!   host call or slice end, whichever comes first: at most one slice of guest execution
//!   (1-1.6 ms of the loops measured for [`DEFAULT_FUEL_SLICE`]), plus the host function
//!   running at the time, plus work that cannot be paused: a bulk instruction that needs more
//!   fuel than a slice (a huge `memory.fill`) and the first-call translation of a function,
//!   each of which runs to completion first.
//! - **Translation costs no fuel.** wasmi 2.0 charges fuel for lazily translating a function
//!   (7 per body byte by default) when the function is first called, and when that charge
//!   exceeds the fuel left in the store it fails the whole call with a non-resumable
//!   out-of-fuel error instead of pausing it: `UncompiledFuncEntry::compile`
//!   (`src/engine/code_map/mod.rs`) returns a `ResumableOutOfFuelError`, but the executor's
//!   `compile_or_get_func_entry!` (`src/engine/executor/handler/utils.rs`) ends the run with
//!   it as a plain error (`DoneReason::Error`), so `call_resumable` returns `Err`
//!   (wasmi-labs/wasmi#2032; the first call's own function is non-resumable by design,
//!   wasmi-labs/wasmi#1916). With slices, a function bigger than what is left of the current
//!   slice would fail its first call, deadline or not. The engine therefore sets translation
//!   and validation fuel to zero ([`wasmi::CustomFuelCosts`]; bulk copies keep wasmi's default
//!   cost); translation time still counts against the deadline through the clock. Should
//!   wasmi still report a call out of fuel, that is [`TrapKind::Other`](wasmux_abi::TrapKind),
//!   never a deadline.
//! - **`table.grow` at a slice end traps.** wasmi 2.0.0 pauses a `table.grow` that runs out of
//!   fuel without saving the instruction pointer (its handler in
//!   `src/engine/executor/handler/exec.rs` ends with `done!` where the other bulk
//!   instructions use `out_of_fuel!`), so resuming it would replay guest code from an earlier
//!   point. The limiter turns that case into a trap instead
//!   ([`TrapKind::Other`](wasmux_abi::TrapKind), with a message saying so). It cannot happen
//!   to growth by fewer than 16 elements (which costs no fuel) and is unlikely otherwise (a
//!   grow by `n` elements costs `n / 16` fuel out of a slice of a million).
//! - **Start functions.** A module's own `start` function (SDK-built filters use exported
//!   `_initialize`/`_start` functions instead, which are ordinary calls) runs inside
//!   instantiation, which wasmi cannot pause. It runs under the callback deadline at its host
//!   calls, and with fuel worth [`START_FUEL_PER_MS`] per millisecond of deadline (unlimited
//!   without a deadline), so a start function spinning in wasm stops too, if less precisely.
//!   The interrupt handle does not exist yet during instantiation.
//! - **Memory and table limits.** A store resource limiter refuses memory growth beyond
//!   [`Limits::max_memory_bytes`](wasmux_abi::Limits) (modules have one memory, so this is the
//!   instance's whole linear memory): `memory.grow` returns -1. A trap that follows a refused
//!   growth within the same call is reported as [`TrapKind::MemoryLimit`](wasmux_abi::TrapKind).
//!   It also counts table elements over all tables of the instance against
//!   [`Limits::max_table_elements`](wasmux_abi::Limits): initial sizes over the limit fail
//!   instantiation, and `table.grow` beyond it returns -1.
//! - **Stack.** wasm-to-wasm calls run on wasmi's own stacks, not the native one; wasmi
//!   bounds the value stack in bytes and the call depth in frames, per engine.
//!   [`WasmiConfig::max_stack_bytes`] sets the value stack to that many bytes and the depth to
//!   one frame per [`STACK_BYTES_PER_FRAME`] bytes (16384 frames for the default 1 MiB), so
//!   deep recursion traps with [`TrapKind::StackOverflow`](wasmux_abi::TrapKind) as on the
//!   compiling engines.
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
//! instead of 890 × 10³), which also makes each fuel slice, and so the delay before a call
//! notices its deadline, about 7× longer unless [`WasmiConfig::fuel_slice`] is lowered to
//! match.

#![forbid(unsafe_code)]

mod error;
mod imports;
mod instance;
mod module;
mod typed;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use wasmux_abi::deadline::CoarseClock;
use wasmux_abi::{Error, Limits, Result, WasmEngine, WasmModule};

pub use instance::WasmiInstance;
pub use module::WasmiModule;

/// The engine name reported in errors and traps.
pub const ENGINE_NAME: &str = "wasmi";

/// The wasmi version this crate is pinned to.
pub const WASMI_VERSION: &str = "2.0.0";

/// Fuel a call gets per slice: the most guest execution between two checks of the deadline
/// and the interrupt flag.
///
/// wasmi charges one unit per wasm operator (none for `nop`, `drop`, `block`, `loop`, `end`),
/// plus one per 64 bytes for bulk copies. Measured on the project machine (Debian 12 x86_64,
/// 2 cores shared with other builds, release build, tail-call dispatch, wasmi 2.0.0): an empty
/// `(loop $l (br $l))` burns 0.74-0.94 × 10⁶ fuel per millisecond and a loop of `i64.div_u`
/// and `call_indirect` 0.63-0.72 × 10⁶, so a slice is 1-1.6 ms of guest code. A pause costs
/// about 1.4 µs: 2 × 10⁸ loop iterations took the same time (566 ms) in default slices as in
/// one piece, and 10% longer in slices 100 times smaller. Reproduce with
/// `cargo test --release -p wasmux-wasmi --test backend -- --ignored --nocapture fuel_rate`.
pub const DEFAULT_FUEL_SLICE: u64 = 1_000_000;

/// The default tick of the engine's coarse clock: the precision of callback deadlines.
pub const DEFAULT_CLOCK_TICK: Duration = Duration::from_millis(1);

/// Fuel per millisecond of callback deadline given to a module's `start` function, which
/// wasmi cannot pause (see the crate docs): four times the rate of an empty loop on the
/// project machine (see [`DEFAULT_FUEL_SLICE`]), so that a start function is not stopped
/// before its time on a faster machine.
pub const START_FUEL_PER_MS: u64 = 4_000_000;

/// Bytes of [`WasmiConfig::max_stack_bytes`] counted per wasm call frame when deriving wasmi's
/// maximum call depth.
pub const STACK_BYTES_PER_FRAME: usize = 64;

/// wasmi's smallest value stack (its default initial height).
const MIN_STACK_BYTES: usize = 1_000;

/// wasmi's default for bulk copies (`memory.fill`, `memory.copy`, `table.grow`, ...): one unit
/// of fuel per this many bytes.
const BYTES_COPIED_PER_FUEL: u32 = 64;

/// Settings of a [`WasmiEngine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmiConfig {
    max_stack_bytes: usize,
    fuel_slice: u64,
    tick: Duration,
    lazy: bool,
}

impl Default for WasmiConfig {
    fn default() -> Self {
        Self {
            max_stack_bytes: Limits::DEFAULT_STACK,
            fuel_slice: DEFAULT_FUEL_SLICE,
            tick: DEFAULT_CLOCK_TICK,
            lazy: true,
        }
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

    /// Sets the fuel a call gets per slice, that is how much guest execution may pass between
    /// two checks of the deadline and the interrupt flag (default [`DEFAULT_FUEL_SLICE`], at
    /// least 1). It never limits how long a call may run.
    #[must_use]
    pub fn fuel_slice(mut self, fuel: u64) -> Self {
        self.fuel_slice = fuel.max(1);
        self
    }

    /// Sets the tick of the engine's coarse clock: the precision of callback deadlines
    /// (default [`DEFAULT_CLOCK_TICK`], at least 100 µs).
    #[must_use]
    pub fn clock_tick(mut self, tick: Duration) -> Self {
        self.tick = tick.max(Duration::from_micros(100));
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
}

/// The state every module and instance of an engine shares.
pub(crate) struct Shared {
    pub(crate) engine: wasmi::Engine,
    /// The coarse clock deadlines are checked against.
    pub(crate) clock: CoarseClock,
    pub(crate) linker: wasmi::Linker<instance::StoreData>,
    pub(crate) config: WasmiConfig,
}

/// A [`WasmEngine`] on wasmi.
///
/// Cheap to clone; clones share the engine (and its translated code), the host-function
/// linker and the clock thread.
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
    /// Creates an engine, links every host function and starts its clock thread.
    ///
    /// # Errors
    /// [`Error::Engine`] when wasmi rejects a host function or the
    /// clock thread cannot be started.
    pub fn new(config: WasmiConfig) -> Result<Self> {
        let mut wc = wasmi::Config::default();
        let stack = config.max_stack_bytes.max(MIN_STACK_BYTES);
        // Fuel only cuts calls into slices; translating a function must never fail a call for want of
        // it (see the crate docs), so translation and validation are free.
        let costs = wasmi::CustomFuelCosts {
            bytes_copied_per_fuel: BYTES_COPIED_PER_FUEL,
            fuel_per_bytes_translated: 0,
            fuel_per_bytes_validated: 0,
        };
        wc.consume_fuel(true)
            .fuel_cost(costs)
            .compilation_mode(if config.lazy {
                wasmi::CompilationMode::LazyTranslation
            } else {
                wasmi::CompilationMode::Eager
            })
            .set_max_stack_height(stack)
            .set_max_recursion_depth(config.max_depth());
        let engine = wasmi::Engine::new(&wc);
        let linker = imports::linker(&engine)?;
        // The thread stops one tick after the last clone of the clock is dropped.
        let clock = CoarseClock::start("wasmux-wasmi-clock", config.tick, |_| true).map_err(|e| Error::Engine {
            engine: ENGINE_NAME,
            message: format!("cannot start the clock thread: {e}"),
        })?;
        Ok(Self { shared: Arc::new(Shared { engine, clock, linker, config }) })
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
            "stack={};depth={};mode={};fuel=slices;translation-fuel=0;target={}-{}",
            c.max_stack_bytes.max(MIN_STACK_BYTES),
            c.max_depth(),
            if c.lazy { "lazy-translation" } else { "eager" },
            std::env::consts::ARCH,
            std::env::consts::OS,
        );
        format!("{ENGINE_NAME}-{WASMI_VERSION}-{:016x}", wasmux_abi::stable_hash(settings.as_bytes()))
    }
}
