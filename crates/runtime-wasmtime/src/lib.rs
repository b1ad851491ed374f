//! The wasmux `WasmVm` traits implemented on [wasmtime] (cranelift).
//!
//! This crate knows nothing about proxy-wasm. It compiles modules, links every entry of
//! [`HOST_FUNCS`](wasmux_abi::HOST_FUNCS) in one loop, instantiates, calls exports and exposes
//! linear memory; the ABI itself lives in `wasmux-abi`.
//!
//! # Design
//!
//! - **One engine, one linker.** [`WasmtimeEngine`] owns a `wasmtime::Engine` and a single
//!   `Linker` holding every host function under every import module name. A compiled module
//!   keeps a `wasmtime::InstancePre`, so a per-worker instance is one store plus one
//!   pre-resolved instantiation: compiled code is shared, never recompiled.
//! - **Exports resolved once per module.** A compiled module keeps a table of its function
//!   exports ([`wasmux_abi::export_table`]), sorted by name, with wasmtime's export index
//!   (`ModuleExport`) and the type of each; [`FuncRef`](wasmux_abi::FuncRef) indexes it, so
//!   `lookup` is a binary search and a reference means the same export in every instance. An
//!   instance makes its handle for an export (by index, no name lookup) and the typed handle on
//!   the export's first call.
//! - **Host state in the store.** Each instance has its own `Store` whose data holds the
//!   [`HostState`](wasmux_abi::HostState), its export handles, the `memory` export and the
//!   per-call limits. Host functions reach it through the `Caller`; there are no
//!   thread-locals.
//! - **Raw values.** Host functions and exports see raw `u64` words (`i32` zero-extended,
//!   `i64` as its bits). Signatures made only of `i32`s, which is nearly all of proxy-wasm, go
//!   through typed trampolines (`Linker::func_wrap`, `TypedFunc`); anything else through
//!   wasmtime's dynamic `Val` path (`Linker::func_new`, `Func::call`), converted in one small
//!   function per direction.
//! - **Deadlines and interrupts.** The engine runs with epoch interruption. One background
//!   thread per engine publishes a coarse wall clock in ticks (1 ms by default; one atomic
//!   load to read, much cheaper than `Instant::now`), advances the epoch by the ticks elapsed
//!   each time it wakes, and stops when the engine is dropped. It runs only while a call's
//!   deadline may pass (or an interrupt handle asks): an idle engine's thread parks, with no
//!   wake-ups, and the next call wakes it. It wakes every tick while a call with a short
//!   deadline (under a second) runs, otherwise every 10 ms
//!   ([`wasmux_abi::deadline::COARSE_PACE`]). A top-level call notes the coarse time and arms
//!   the store's epoch deadline; the epoch callback checks the callback deadline against the
//!   coarse clock and an "interrupt requested" flag, then either traps or re-arms for at most
//!   [`INTERRUPT_CHECK`] more. Deadlines are thus precise to about one tick, or 1 % of a long
//!   one. Re-entrant calls from host functions (the guest allocator) run under the deadline of
//!   the outer call.
//! - **Memory limit.** A store resource limiter refuses growth beyond
//!   [`Limits::max_memory_bytes`](wasmux_abi::Limits): `memory.grow` returns -1. A trap that
//!   follows a refused growth within the same call is reported as
//!   [`TrapKind::MemoryLimit`](wasmux_abi::TrapKind).
//! - **Errors.** Wasmtime traps are normalized into [`wasmux_abi::Trap`] with a backtrace from
//!   the name section. An [`wasmux_abi::Error`] raised by a host function travels through
//!   wasmtime untouched and comes back out unchanged.
//!
//! The stack limit is an engine setting in wasmtime ([`WasmtimeConfig::max_stack_bytes`]);
//! `Limits::max_stack_bytes` given to `instantiate` is not applied per instance. wasmtime
//! stops a recursing guest at that limit only: on a thread with less native stack, the guest
//! would reach the thread's guard page first, which aborts the process. A top-level call (and
//! instantiation) therefore runs where the native stack has room for the limit plus 512 KiB for
//! wasmtime and the host functions: on the caller's stack when it has that much left, else on a
//! fresh stack segment (the `stacker` crate; the check is a thread-local read and a compare).
//!
//! # Serialized modules and `unsafe`
//!
//! [`WasmEngine::serialize`] and [`WasmEngine::deserialize`] are implemented, for the module
//! cache of the `wasmux` crate (`ModuleCache`): an artifact is wasmtime's own serialized
//! module, compiled machine code included. Loading one is `unsafe` in wasmtime, because
//! wasmtime only lightly validates it and runs the code it contains. This crate therefore
//! denies (rather than forbids) `unsafe_code`, and exactly one function, `load_artifact`,
//! allows it; its `// SAFETY:` comment states the contract. In short: `deserialize` must only
//! ever see bytes that `serialize` produced on this engine build. wasmtime itself rejects, as
//! an error, artifacts of another wasmtime version or of an incompatible configuration, and
//! the module cache keys artifacts by [`WasmEngine::fingerprint`] (wasmtime version, this
//! crate's settings and wasmtime's compatibility hash) and the module's SHA-256, writes files
//! atomically and checks a checksum before handing bytes here. A cache directory that someone
//! else can write is nevertheless trusted code, exactly as with wasmtime's own compilation
//! cache: keep it private to the proxy.

#![deny(unsafe_code)]

mod error;
mod imports;
mod instance;
mod module;
mod typed;

use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use wasmux_abi::deadline::CoarseClock;
use wasmux_abi::{Error, Limits, Result, WasmEngine, WasmModule};

pub use instance::WasmtimeInstance;
pub use module::WasmtimeModule;

/// The engine name reported in errors and traps.
pub const ENGINE_NAME: &str = "wasmtime";

/// The wasmtime version this crate is pinned to.
pub const WASMTIME_VERSION: &str = "48.0.8";

/// The longest a running call goes without checking for an interrupt request, whatever its
/// deadline.
pub const INTERRUPT_CHECK: Duration = Duration::from_millis(10);

/// The most wasm frames a trap's backtrace records.
const BACKTRACE_FRAMES: usize = 32;

/// Settings of a [`WasmtimeEngine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WasmtimeConfig {
    max_stack_bytes: usize,
    tick: Duration,
    optimize: bool,
}

impl Default for WasmtimeConfig {
    fn default() -> Self {
        Self { max_stack_bytes: Limits::DEFAULT_STACK, tick: Duration::from_millis(1), optimize: true }
    }
}

impl WasmtimeConfig {
    /// Sets the maximum wasm stack in bytes for every instance of the engine (default
    /// [`Limits::DEFAULT_STACK`]).
    #[must_use]
    pub fn max_stack_bytes(mut self, bytes: usize) -> Self {
        self.max_stack_bytes = bytes;
        self
    }

    /// Sets the epoch tick: the granularity of short callback deadlines (default 1 ms, at least
    /// 100 µs); long ones are checked every 10 ms or every tick if that is longer.
    #[must_use]
    pub fn epoch_tick(mut self, tick: Duration) -> Self {
        self.tick = tick.max(Duration::from_micros(100));
        self
    }

    /// Chooses cranelift's `speed` optimizations (default) or none (faster compiles).
    #[must_use]
    pub fn optimize(mut self, optimize: bool) -> Self {
        self.optimize = optimize;
        self
    }
}

/// The state every module and instance of an engine shares.
pub(crate) struct Shared {
    pub(crate) engine: wasmtime::Engine,
    /// The coarse clock deadlines are checked against; its thread advances the epoch.
    pub(crate) clock: CoarseClock,
    pub(crate) linker: wasmtime::Linker<instance::StoreData>,
    pub(crate) config: WasmtimeConfig,
}

/// A [`WasmEngine`] on wasmtime with cranelift.
///
/// Cheap to clone; clones share the compiler, the host-function linker and the epoch thread.
#[derive(Clone)]
pub struct WasmtimeEngine {
    shared: Arc<Shared>,
}

impl fmt::Debug for WasmtimeEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WasmtimeEngine").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

impl WasmtimeEngine {
    /// Creates an engine, links every host function and starts its epoch thread.
    ///
    /// # Errors
    /// [`Error::Engine`] when wasmtime rejects the configuration or a host function.
    pub fn new(config: WasmtimeConfig) -> Result<Self> {
        let mut wt = wasmtime::Config::new();
        wt.strategy(wasmtime::Strategy::Cranelift)
            .cranelift_opt_level(if config.optimize { wasmtime::OptLevel::Speed } else { wasmtime::OptLevel::None })
            .epoch_interruption(true)
            .max_wasm_stack(config.max_stack_bytes)
            .wasm_backtrace_max_frames(std::num::NonZeroUsize::new(BACKTRACE_FRAMES));
        let engine = wasmtime::Engine::new(&wt).map_err(error::engine)?;
        let linker = imports::linker(&engine)?;
        // The clock thread also advances the engine's epoch, until the engine is dropped: one
        // epoch per tick elapsed since its last wake (it wakes every tick or at the coarse pace),
        // so that an epoch deadline armed `n` epochs ahead passes `n` ticks later either way. No
        // deadline is armed further than one interrupt check ahead: more epochs per wake than
        // that change nothing.
        let weak = engine.weak();
        let most = u64::try_from(INTERRUPT_CHECK.as_nanos() / config.tick.as_nanos().max(1)).unwrap_or(u64::MAX) + 1;
        let last = std::sync::atomic::AtomicU64::new(0);
        let clock = CoarseClock::start("wasmux-wasmtime-epoch", config.tick, move |now| {
            let Some(engine) = weak.upgrade() else { return false };
            let elapsed = now.saturating_sub(last.swap(now, std::sync::atomic::Ordering::Relaxed));
            for _ in 0..elapsed.clamp(1, most) {
                engine.increment_epoch();
            }
            true
        })
        .map_err(|e| Error::Engine { engine: ENGINE_NAME, message: format!("cannot start the epoch thread: {e}") })?;
        Ok(Self { shared: Arc::new(Shared { engine, clock, linker, config }) })
    }

    /// The underlying wasmtime engine.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.shared.engine
    }
}

impl WasmEngine for WasmtimeEngine {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn compiles_ahead(&self) -> bool {
        true
    }

    fn compile(&self, bytes: &[u8]) -> Result<Arc<dyn WasmModule>> {
        Ok(Arc::new(WasmtimeModule::new(self.shared.clone(), bytes)?))
    }

    fn fingerprint(&self) -> String {
        let c = &self.shared.config;
        let settings = format!(
            "stack={};opt={};target={}-{}",
            c.max_stack_bytes,
            if c.optimize { "speed" } else { "none" },
            std::env::consts::ARCH,
            std::env::consts::OS,
        );
        // Everything wasmtime itself requires to match for an artifact to load: its compiler
        // settings, wasm features and tunables.
        let mut compat = wasmux_abi::StableHasher::default();
        self.shared.engine.precompile_compatibility_hash().hash(&mut compat);
        format!(
            "{ENGINE_NAME}-{WASMTIME_VERSION}-{:016x}-{:016x}",
            wasmux_abi::stable_hash(settings.as_bytes()),
            compat.finish()
        )
    }

    fn serialize(&self, module: &dyn WasmModule) -> Option<Vec<u8>> {
        let module = module.as_any().downcast_ref::<WasmtimeModule>()?;
        // A module of another engine instance with other settings would carry code this
        // engine's fingerprint does not describe.
        if !wasmtime::Engine::same(module.wasmtime().engine(), &self.shared.engine) {
            return None;
        }
        module.wasmtime().serialize().ok()
    }

    fn deserialize(&self, artifact: &[u8]) -> Result<Arc<dyn WasmModule>> {
        let module = load_artifact(&self.shared.engine, artifact)?;
        Ok(Arc::new(WasmtimeModule::from_compiled(self.shared.clone(), module)))
    }
}

/// Loads a module serialized by [`WasmEngine::serialize`] on an engine of this build.
#[allow(unsafe_code, reason = "wasmtime::Module::deserialize is unsafe: it trusts its input as compiled code")]
fn load_artifact(engine: &wasmtime::Engine, artifact: &[u8]) -> Result<wasmtime::Module> {
    // SAFETY: wasmtime requires that the bytes be the unmodified output of `Module::serialize`
    // (or `Engine::precompile_module`) of some wasmtime build; bytes from another wasmtime
    // version or an incompatible `Config` are then rejected with an error, never run. The only
    // caller of `WasmEngine::deserialize` in wasmux is the module cache (`wasmux::ModuleCache`),
    // which upholds this: its artifacts come from `serialize` above, on an engine with the same
    // fingerprint (wasmtime version, settings, compatibility hash) for the same module hash;
    // in memory they are bytes it produced itself, and on disk they are files it wrote
    // atomically (temporary file + rename) with a header repeating the key and a CRC-32 of
    // the artifact, all checked before this call, so a truncated, corrupted or misplaced file
    // is a cache miss, not a load. What remains trusted is the cache directory itself: whoever
    // can write it can make the host run arbitrary code, as with wasmtime's own cache.
    // Embedders calling `deserialize` directly take on the same contract (documented at the
    // crate level).
    unsafe { wasmtime::Module::deserialize(engine, artifact) }
        .map_err(|e| error::engine_msg(format!("cannot load a serialized module: {}", error::chain(&e))))
}
