//! The wasmux `WasmVm` traits implemented on [wasmer] (the `sys` backend), with either of its
//! compilers: cranelift (engine name `wasmer`) or singlepass (`wasmer-singlepass`).
//!
//! This crate knows nothing about proxy-wasm. It compiles modules, links every entry of
//! [`HOST_FUNCS`](wasmux_abi::HOST_FUNCS) in one loop, instantiates, calls exports and exposes
//! linear memory; the ABI itself lives in `wasmux-abi`.
//!
//! # Design
//!
//! - **One compile, many instances.** [`WasmerEngine::compile`] builds a wasmer engine for the
//!   module (its compiler, with this crate's middleware) and compiles once; each per-worker
//!   instance is a new `Store` on a clone of that engine, sharing the compiled code. Wasmer has
//!   no linker: host functions are store objects, so each instance creates those its module
//!   imports, resolved once per module against the host-function table.
//! - **Exports resolved once per module.** A compiled module keeps a table of the guest's
//!   function exports, sorted by name, with the type of each;
//!   [`FuncRef`](wasmux_abi::FuncRef) indexes it, so a reference means the same export in
//!   every instance. `lookup` finds the export there and takes the instance's `Function`
//!   handle (wasmer has no export index); the typed handle is made on the export's first call.
//! - **Host state in the store.** Each instance's `FunctionEnv` holds the
//!   [`HostState`](wasmux_abi::HostState), its export handles, the `memory` export and the
//!   per-call limits. Host functions reach it through `FunctionEnvMut`; there are no
//!   thread-locals.
//! - **Raw values.** Host functions and exports see raw `u64` words (`i32` zero-extended,
//!   `i64` as its bits). Signatures made only of `i32`s, which is nearly all of proxy-wasm, go
//!   through typed functions (`Function::new_typed_with_env`, `TypedFunction`); anything else
//!   through wasmer's dynamic `Value` path.
//! - **Deadlines: metering with a host check per slice.** Wasmer has no epochs or fuel, and
//!   its metering middleware can only trap when its points run out (a trapped call cannot
//!   resume, so it cannot be sliced). This crate's own middleware (`middleware.rs`) meters every
//!   function the same way (one point per operator, charged at each branch, call and block
//!   end), but when the points run out it calls a hidden host import, `refuel`, instead of
//!   trapping. `refuel` checks the interrupt flag and the callback deadline against a coarse
//!   wall clock (a thread per engine ticks every millisecond while a call's deadline may pass,
//!   every 10 ms while the calls in flight all have deadlines of a second or more, and parks
//!   when the engine is idle, as in the wasmtime backend) and
//!   either stops the call with [`TrapKind::Deadline`](wasmux_abi::TrapKind) or grants the
//!   next slice: the points worth the rest of the deadline, at most [`INTERRUPT_CHECK`]. Every
//!   host function checks the same flag and clock first, so time spent in the host counts.
//!   Points only pace the checks; the deadline itself is wall time, so the calibration of
//!   points per millisecond ([`WasmerConfig::points_per_ms`], measured per compiler) bounds
//!   the overshoot (about one slice) rather than the deadline. An
//!   [`interrupt_handle`](wasmux_abi::WasmInstance::interrupt_handle) stops even a loop that
//!   never calls the host, at its next slice. Re-entrant calls from host functions (the
//!   guest allocator) draw on the outer call's points and deadline; nothing refills them.
//! - **Memory limit.** The middleware also rewrites `memory.grow`: a hidden host import,
//!   `grow_allowed`, compares the would-be size with
//!   [`Limits::max_memory_bytes`](wasmux_abi::Limits) of the instance, and a refused growth
//!   returns -1 without growing. A trap that follows a refused growth within the same call is
//!   reported as [`TrapKind::MemoryLimit`](wasmux_abi::TrapKind). A module whose initial
//!   memory is over the limit does not instantiate. Validation admits one memory at most and
//!   imported memories are never linked, so the limit is the instance's whole linear memory.
//! - **Table limit.** [`Limits::max_table_elements`](wasmux_abi::Limits) counts elements over
//!   all tables of an instance. A module whose tables start over it (the sum of their initial
//!   sizes) does not instantiate. `table.grow` goes through a third hidden import,
//!   `table_grow_delta`, which the middleware hands the current size of every table (read by
//!   `table.size` at each growth, so nothing drifts when a table refuses a growth for its own
//!   reasons); over the limit it turns the delta into -1 (`u32::MAX` elements), and the growth
//!   fails with -1 without allocating. That relies on the second half, the store's tunables:
//!   every table is created with its maximum capped at the limit (and at wasmer's own largest
//!   maximum, 128 Mi elements, so a module declaring a larger maximum still instantiates, as on
//!   other engines), and wasmer refuses any growth past a table's maximum. The cap alone would
//!   be a per-table limit; the import makes it a total.
//! - **Stack.** Wasmer runs wasm on a separate stack with a guard page (host functions run on
//!   the caller's stack); its size is `Limits::max_stack_bytes` of the instance, set through
//!   the store's tunables. Deep recursion traps with
//!   [`TrapKind::StackOverflow`](wasmux_abi::TrapKind).
//! - **Errors.** Wasmer traps are normalized into [`wasmux_abi::Trap`] with a backtrace from
//!   the name section. An [`wasmux_abi::Error`] raised by a host function travels through
//!   wasmer untouched and comes back out unchanged. Errors name the compiler that ran
//!   (`wasmer` or `wasmer-singlepass`).
//!
//! The middleware's rewriting is invisible to the embedder: the hidden imports and exports
//! (prefix `wasmux:`) are left out of [`WasmModule::imports`](wasmux_abi::WasmModule) and
//! [`WasmModule::exports`](wasmux_abi::WasmModule), and backtraces show the module's own
//! function indices.
//!
//! What a module may be is decided before wasmer sees it: [`wasmux_abi::validate()`] (the
//! WebAssembly 2.0 features without SIMD, one memory, bounded control nesting and table
//! declarations) refuses anything else with [`Error::Compile`] naming the compiler, the same
//! verdict as on every other engine. Wasmer itself is configured with its default features but
//! threads (shared memories, which would let a guest block in `memory.atomic.wait` beyond any
//! deadline), a second line behind the validation.
//!
//! Compiling is ahead of time and cannot be interrupted
//! ([`WasmEngine::compiles_ahead`] is true): the host bounds the work through the module size
//! and shape limits of the validation and stops waiting at
//! [`Limits::compile_deadline`](wasmux_abi::Limits). The cost follows the shape more than the
//! size, and the middleware adds to it (a metering check at every block end and call). Measured
//! in release on the project machine (2 cores, loaded): 9 999 nested empty blocks, the deepest
//! accepted, take cranelift 0.7 s and 101 MiB of peak RSS (singlepass 0.04 s, 15 MiB); 100 000
//! empty functions take cranelift 9 s and 139 MiB, singlepass 1.7 s and 209 MiB, nearly all of
//! it kept by the compiled module (about 1.3 KiB and 2.1 KiB a function).
//!
//! Compiled modules serialize (`WasmEngine::serialize`/`deserialize`), so `wasmux::ModuleCache`
//! keeps wasmer artifacts in memory and on disk as it does wasmtime's: a warm start loads the
//! compiled code instead of running cranelift or singlepass again (see `unsafe` below).
//!
//! # `unsafe`
//!
//! The workspace forbids `unsafe`; this crate denies it and allows it in three places, each
//! with a `// SAFETY:` comment:
//!
//! - Loading a serialized module (`WasmEngine::deserialize`, for the module cache):
//!   `wasmer::Module::deserialize` trusts its input as compiled code. `deserialize` must only
//!   ever see bytes that `serialize` produced on this engine build; wasmer rejects, as an
//!   error, artifacts of another wasmer version or target, and the module cache keys artifacts
//!   by [`WasmEngine::fingerprint`] and the module's SHA-256 and checks a checksum before
//!   handing bytes here. A cache directory someone else can write is trusted code: keep it
//!   private to the proxy.
//! - `Send` for [`WasmerInstance`]. wasmer 7 no longer declares its `Store` `Send` (6.1 did),
//!   for the sake of its V8 backend; the `sys` backend this crate uses has no thread affinity
//!   between calls, and the `WasmInstance` contract needs instances to move between threads.
//! - The store tunables that set the wasm stack size and cap table maximums: wasmer's
//!   `Tunables` trait has `unsafe` methods, which these forward to wasmer's own
//!   `BaseTunables` (with the capped table type, which decides nothing but how far a table
//!   may grow).
//!
//! # Why wasmer 7.3.0
//!
//! This crate pins wasmer `=7.3.0`, not the newer 7.4: wasmer 7.4's cranelift compiler pins
//! `cranelift-codegen =0.135.0`, while wasmtime 48.0.8 (the `wasmux-wasmtime` backend) needs
//! `^0.135.8`. In one lockfile cargo would then drop wasmtime to 48.0.0 and lose the security
//! fixes of the 48.0.x releases (GHSA-x84v-gj2h-g759, GHSA-vqjp-4c8c-hfgg). wasmer 7.3.0 pins
//! cranelift 0.134.3, another semver bucket, so both engines live in one build; the cost is
//! cranelift compiled twice.
//!
//! The crate is ready for 7.4 otherwise: built against wasmer 7.4.2 in a workspace of its own
//! (this crate and `wasmux-abi`, so a lockfile without wasmtime), it needed one change (7.4
//! replaced `BaseTunables::for_target(target)` with `BaseTunables::new()`, in `module.rs`) and
//! then passed all its tests, the shared backend suite on both compilers included. That check
//! predates the table limit; recheck `WASMER_TABLE_MAX` in `module.rs` against `wasmer-vm`'s
//! `TABLE_MAX_SIZE` when moving. Move once wasmer and wasmtime agree on a cranelift release
//! again.

#![deny(unsafe_code)]

mod error;
mod imports;
mod instance;
mod middleware;
mod module;
mod typed;

use std::fmt;
use std::hash::Hasher as _;
use std::sync::Arc;
use std::time::Duration;

use wasmux_abi::deadline::CoarseClock;
use wasmux_abi::{Error, Result, WasmEngine, WasmModule};

pub use instance::WasmerInstance;
pub use module::WasmerModule;

/// The engine name of the cranelift compiler, reported in errors and traps.
pub const ENGINE_NAME: &str = "wasmer";

/// The engine name of the singlepass compiler, reported in errors and traps.
pub const SINGLEPASS_ENGINE_NAME: &str = "wasmer-singlepass";

/// The wasmer version this crate is pinned to.
pub const WASMER_VERSION: &str = "7.3.0";

/// The longest a running call goes without checking for an interrupt request, whatever its
/// deadline (as metering points at the configured rate).
pub const INTERRUPT_CHECK: Duration = Duration::from_millis(10);

/// Metering points per millisecond of cranelift code, the pace of deadline and interrupt
/// checks ([`WasmerConfig::points_per_ms`]).
///
/// Measured on the project machine (Debian 12 x86_64, 2 cores shared with other builds, load
/// average about 2, release build): an empty `(loop $l (br $l))` burns 1.62-1.67 × 10⁶ points
/// per millisecond (best of 5 runs of 5 × 10⁸ points, three runs), and a 100 ms deadline at this
/// rate stopped it after 100-101 ms of wall time. Reproduce with
/// `cargo test --release -p wasmux-wasmer --test backend -- --ignored --nocapture points_rate`.
/// Real filter code retires fewer points per millisecond than an empty loop, so its slices
/// are longer than [`INTERRUPT_CHECK`]; host calls check the clock too.
pub const CRANELIFT_POINTS_PER_MS: u64 = 1_600_000;

/// Metering points per millisecond of singlepass code, measured as for
/// [`CRANELIFT_POINTS_PER_MS`]: 0.69-0.86 × 10⁶ points per millisecond for an empty loop; a
/// 100 ms deadline stopped it after 101-109 ms.
pub const SINGLEPASS_POINTS_PER_MS: u64 = 800_000;

/// The granularity of the coarse clock deadlines are measured with.
const TICK: Duration = Duration::from_millis(1);

/// The most wasm frames a trap's backtrace records.
const BACKTRACE_FRAMES: usize = 32;

/// A wasmer compiler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compiler {
    /// Cranelift: optimized code, slower compiles (engine name `wasmer`).
    #[default]
    Cranelift,
    /// Singlepass: one pass, fast compiles, slower code (engine name `wasmer-singlepass`).
    Singlepass,
}

impl Compiler {
    /// The engine name this compiler reports in errors and traps.
    pub fn engine_name(self) -> &'static str {
        match self {
            Self::Cranelift => ENGINE_NAME,
            Self::Singlepass => SINGLEPASS_ENGINE_NAME,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Cranelift => "cranelift",
            Self::Singlepass => "singlepass",
        }
    }

    fn default_points_per_ms(self) -> u64 {
        match self {
            Self::Cranelift => CRANELIFT_POINTS_PER_MS,
            Self::Singlepass => SINGLEPASS_POINTS_PER_MS,
        }
    }
}

/// Settings of a [`WasmerEngine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmerConfig {
    compiler: Compiler,
    points_per_ms: Option<u64>,
    optimize: bool,
}

impl Default for WasmerConfig {
    fn default() -> Self {
        Self { compiler: Compiler::Cranelift, points_per_ms: None, optimize: true }
    }
}

impl WasmerConfig {
    /// Chooses the compiler (default cranelift).
    #[must_use]
    pub fn compiler(mut self, compiler: Compiler) -> Self {
        self.compiler = compiler;
        self
    }

    /// Sets the metering points a millisecond of guest execution is worth, which paces the
    /// deadline and interrupt checks (default: [`CRANELIFT_POINTS_PER_MS`] or
    /// [`SINGLEPASS_POINTS_PER_MS`]; at least 1).
    #[must_use]
    pub fn points_per_ms(mut self, points: u64) -> Self {
        self.points_per_ms = Some(points.max(1));
        self
    }

    /// Chooses cranelift's `speed` optimizations (default) or none (faster compiles). No
    /// effect on singlepass.
    #[must_use]
    pub fn optimize(mut self, optimize: bool) -> Self {
        self.optimize = optimize;
        self
    }

    /// The rate in effect.
    pub(crate) fn rate(&self) -> u64 {
        self.points_per_ms.unwrap_or_else(|| self.compiler.default_points_per_ms())
    }

    /// A compiler configuration with this crate's middleware.
    fn compiler_config(&self) -> Box<dyn wasmer::sys::CompilerConfig> {
        use wasmer::sys::CompilerConfig as _;
        let middleware = Arc::new(middleware::Limiting::default());
        match self.compiler {
            Compiler::Cranelift => {
                let mut c = wasmer::sys::Cranelift::new();
                c.opt_level(if self.optimize {
                    wasmer::sys::CraneliftOptLevel::Speed
                } else {
                    wasmer::sys::CraneliftOptLevel::None
                });
                c.push_middleware(middleware);
                Box::new(c)
            }
            Compiler::Singlepass => {
                let mut c = wasmer::sys::Singlepass::new();
                c.push_middleware(middleware);
                Box::new(c)
            }
        }
    }
}

/// The state every module and instance of an engine shares.
pub(crate) struct Shared {
    pub(crate) config: WasmerConfig,
    /// The engine name (after the compiler).
    pub(crate) name: &'static str,
    /// The coarse clock deadlines are checked against (its thread stops with the last engine,
    /// module or instance).
    pub(crate) clock: CoarseClock,
}

/// A [`WasmEngine`] on wasmer with cranelift or singlepass.
///
/// Cheap to clone; clones share the settings and the clock thread.
#[derive(Clone)]
pub struct WasmerEngine {
    shared: Arc<Shared>,
}

impl fmt::Debug for WasmerEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmerEngine").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

impl WasmerEngine {
    /// Creates an engine and starts its clock thread.
    ///
    /// # Errors
    /// [`Error::Engine`] when the clock thread cannot start.
    pub fn new(config: WasmerConfig) -> Result<Self> {
        let name = config.compiler.engine_name();
        let clock = CoarseClock::start("wasmux-wasmer-clock", TICK, |_| true)
            .map_err(|e| Error::Engine { engine: name, message: format!("cannot start the clock thread: {e}") })?;
        Ok(Self { shared: Arc::new(Shared { config, name, clock }) })
    }

    /// The settings.
    pub fn config(&self) -> &WasmerConfig {
        &self.shared.config
    }
}

impl WasmEngine for WasmerEngine {
    fn name(&self) -> &'static str {
        self.shared.name
    }

    fn compiles_ahead(&self) -> bool {
        true
    }

    fn compile(&self, bytes: &[u8]) -> Result<Arc<dyn WasmModule>> {
        Ok(Arc::new(WasmerModule::new(self.shared.clone(), bytes)?))
    }

    fn serialize(&self, module: &dyn WasmModule) -> Option<Vec<u8>> {
        let module = module.as_any().downcast_ref::<WasmerModule>()?;
        // A module of an engine with other settings would carry code this engine's
        // fingerprint does not describe.
        if module.shared().config != self.shared.config {
            return None;
        }
        module.serialize()
    }

    fn deserialize(&self, artifact: &[u8]) -> Result<Arc<dyn WasmModule>> {
        Ok(Arc::new(WasmerModule::deserialize(self.shared.clone(), artifact)?))
    }

    fn fingerprint(&self) -> String {
        let c = &self.shared.config;
        let settings = format!(
            "opt={};middleware={};target={}-{}",
            if c.optimize { "speed" } else { "none" },
            middleware::VERSION,
            std::env::consts::ARCH,
            std::env::consts::OS,
        );
        let mut h = wasmux_abi::StableHasher::default();
        h.write(settings.as_bytes());
        format!("{}-{WASMER_VERSION}-{}-{:016x}", self.shared.name, c.compiler.as_str(), h.finish())
    }
}
