//! The wasmux `WasmVm` traits implemented on [WAMR] (the WebAssembly Micro Runtime), through
//! the raw bindings of [`wamrx_sys`] 0.3.0 (WAMR 2.4.3, vendored C sources built by CMake).
//!
//! This crate knows nothing about proxy-wasm. It loads modules, registers every entry of
//! [`HOST_FUNCS`](wasmux_abi::HOST_FUNCS) in one loop, instantiates, calls exports and exposes
//! linear memory; the ABI itself lives in `wasmux-abi`.
//!
//! # Design
//!
//! - **Fast interpreter only.** `wamrx-sys` builds WAMR's fast interpreter, no AOT and no JIT:
//!   loading a module validates it and translates every function to WAMR's internal bytecode,
//!   eagerly (about 3 ms for a proxy-wasm filter). Instances of a module share that code;
//!   per-worker instances never reload. Module serialization is not offered: the fast
//!   interpreter's translated bytecode lives in the loaded module and WAMR has no API to save or
//!   load it; the only loadable artifacts are AOT files, which need WAMR's `wamrc` compiler (on
//!   LLVM) and an AOT-enabled runtime, neither of which `wamrx-sys` builds.
//! - **Why not the `wamrx` wrapper.** Its `Engine`, `Linker` and `Instance` are neither `Send`
//!   nor `Sync` (they hold `Rc`s), while the `WasmVm` traits need `Send + Sync` engines and
//!   modules and `Send` instances; it also has no termination, no memory limit and boxes every
//!   host-call argument. This crate therefore calls WAMR's C API directly, in a few places
//!   ([`instance`], [`imports`]) where every `unsafe` block says why it is sound.
//! - **One process-wide runtime.** WAMR is initialized once per process
//!   (`wasm_runtime_full_init`, system allocator) and never torn down; every host function is
//!   registered then, once, in WAMR's process-wide native registry, under every import module
//!   name, with a single trampoline (WAMR's "raw" calling convention: one 64-bit slot per
//!   argument). The [`HostFunc`](wasmux_abi::HostFunc) travels as the symbol's attachment.
//!   Every [`WamrEngine`] shares that runtime; engines differ only in their watchdog.
//! - **Exports resolved once per module.** A loaded module keeps a table of its function
//!   exports ([`wasmux_abi::export_table`]), sorted by name, with the name WAMR knows each by (as a C string) and its type;
//!   [`FuncRef`](wasmux_abi::FuncRef) indexes it, so `lookup` is a binary search and a
//!   reference means the same export in every instance. WAMR's C API finds an instance's
//!   function only by name: an instance does that once per export, on its first call.
//! - **Host state in the instance.** Each WAMR module instance carries a pointer to the
//!   instance's own state (host state, export handles, parked errors, memory-limit
//!   bookkeeping) as its *custom data*; the trampoline finds it from the execution environment
//!   it is given. There are no thread-locals holding state.
//! - **Threads.** Instances are `Send`: WAMR's execution environment (one per instance, made at
//!   instantiation) records the calling thread and its native stack bounds at the start of
//!   every call (`wasm_call_function`, built without hardware bound checks), so an instance may
//!   run on any thread, one call at a time. Each thread that touches WAMR first runs
//!   `wasm_runtime_init_thread_env` once (a no-op on Linux in this build, required elsewhere),
//!   and the matching teardown at thread exit. WAMR's own locks make loading, instantiating and
//!   terminating safe from any thread.
//! - **Re-entrancy.** Host functions call back into the guest (its allocator) with the
//!   execution environment they were given, as WAMR intends: the interpreter pushes a new frame
//!   on the same interpreter stack. No Rust reference to an instance's state is held across a
//!   call into WAMR; each step borrows it afresh from the raw pointer.
//!
//! # Limits
//!
//! - **Memory.** The instance's memory maximum is set at instantiation to the smaller of the
//!   module's maximum and [`Limits::max_memory_bytes`](wasmux_abi::Limits)
//!   (`max_memory_pages`), so `memory.grow` past it returns -1. WAMR reports every failed
//!   growth to a process-wide callback; a failure that the host's limit caused (the requested
//!   size is over it) marks the current call, and a trap that follows in the same call is
//!   [`TrapKind::MemoryLimit`](wasmux_abi::TrapKind). A module whose initial memory is over the
//!   limit does not instantiate; neither does one that defines a memory while the limit is below
//!   one page (WAMR reads a page limit of 0 as "no limit").
//! - **Deadlines and interrupts.** WAMR can stop a running call from another thread:
//!   `wasm_runtime_terminate` sets the instance's exception and its execution environment's
//!   termination flag, and the interpreter checks that flag at every branch (`br`, `br_if`,
//!   `br_table`) and after each host call. The flag exists only when WAMR is built with its
//!   thread manager, which is why this crate enables `wamrx-sys`'s `thread-mgr` feature. Each
//!   engine runs a watchdog thread that ticks every [`WamrConfig::clock_tick`] (1 ms by
//!   default; every 10 ms while the calls in flight have deadlines of a second or more) and
//!   terminates calls past their deadline; an
//!   [`interrupt_handle`](wasmux_abi::WasmInstance::interrupt_handle) terminates the running
//!   call at once. Host functions look at the same state before they run. Deadlines cover the
//!   whole top-level call in wall time, host functions and re-entrant calls included, and are
//!   precise to about one tick (1 % of a deadline of a second or more). A stopped call is
//!   [`TrapKind::Deadline`](wasmux_abi::TrapKind); the instance stays usable.
//! - **The thread manager's stack split, undone.** With the thread manager, WAMR divides a
//!   module's auxiliary (shadow) stack, the region its `__stack_pointer` global walks, between
//!   the instance and the threads it could spawn, and traps when the instance's share
//!   overflows. Spawning is not possible here (no `wasi-threads`, no `pthread` imports), so
//!   after making the execution environment this crate gives the instance back its whole
//!   auxiliary stack (`wasm_exec_env_set_aux_stack`, the call WAMR itself uses for this,
//!   declared here since `wamrx-sys` does not bind it).
//! - **Stack.** wasm calls run on WAMR's interpreter stack (frames and operands), not the
//!   native one; its size is [`Limits::max_stack_bytes`](wasmux_abi::Limits), per instance, and
//!   overflowing it traps with [`TrapKind::StackOverflow`](wasmux_abi::TrapKind). Re-entrant
//!   calls (host → guest → host ...) do use native stack; WAMR checks the native stack bounds
//!   of the calling thread before each call and traps ("native stack overflow", also
//!   `StackOverflow`) instead of crashing. The interpreter stack is allocated (and zeroed by
//!   WAMR) with each instance; `wasmux bench` measures what an extra instance costs in RSS
//!   (docs/BENCHMARKS.md: about 1.1 MiB for an SDK filter, guest memory included, as on wasmi).
//! - **Tables.** Initial table sizes over [`Limits::max_table_elements`](wasmux_abi::Limits)
//!   (over all tables) fail instantiation. Growth is bounded by WAMR, not by that limit: WAMR
//!   fixes each table's capacity when it loads the module, at the smaller of its declared
//!   maximum and `max(1024, 2 × initial size)` (`WASM_TABLE_MAX_SIZE` in `core/config.h`), and
//!   allocates it in full for every instance. `table.grow` beyond that capacity returns -1 even
//!   under the host's limit, and growth within it succeeds even past a host limit smaller than
//!   the capacity. This is the one limit WAMR does not enforce as the other engines do; it is
//!   declared as a gap of the shared backend suite (`table_growth_is_capped`).
//! - **Start-up code.** WAMR runs a module's `start` function, and exports it recognizes by name
//!   (`__wasm_call_ctors`, `__post_instantiate`), inside instantiation, where no deadline can
//!   reach them. Before loading, the module is therefore rewritten at the section level
//!   ([`rewrite`]): the start section is dropped and its function exported under a reserved
//!   name, and those two exports are renamed; the instance calls the start function itself,
//!   as a top-level call under the deadline, right after instantiation. Exports are always
//!   described and looked up by their original names.
//! - **Errors.** WAMR exceptions are normalized into [`wasmux_abi::Trap`]. WAMR records no
//!   frames in this build, so a trap's backtrace lists the guest entry points the host called,
//!   innermost first. An [`wasmux_abi::Error`] raised by a host function is parked in the
//!   instance state while WAMR unwinds and comes back out unchanged.
//!
//! [WAMR]: https://github.com/bytecodealliance/wasm-micro-runtime

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod error;
mod imports;
mod instance;
mod module;
mod rewrite;
mod runtime;
mod typed;
mod watch;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use wasmux_abi::{Result, WasmEngine, WasmModule};

pub use instance::WamrInstance;
pub use module::WamrModule;

/// The engine name reported in errors and traps.
pub const ENGINE_NAME: &str = "wamr";

/// The WAMR version `wamrx-sys` 0.3.0 vendors.
pub const WAMR_VERSION: &str = "2.4.3";

/// The default tick of the engine's watchdog: the precision of callback deadlines.
pub const DEFAULT_CLOCK_TICK: Duration = Duration::from_millis(1);

/// Settings of a [`WamrEngine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WamrConfig {
    tick: Duration,
}

impl Default for WamrConfig {
    fn default() -> Self {
        Self { tick: DEFAULT_CLOCK_TICK }
    }
}

impl WamrConfig {
    /// Sets the tick of the engine's watchdog: the precision of callback deadlines (default
    /// [`DEFAULT_CLOCK_TICK`], at least 100 µs).
    #[must_use]
    pub fn clock_tick(mut self, tick: Duration) -> Self {
        self.tick = tick.max(Duration::from_micros(100));
        self
    }
}

/// The state every module and instance of an engine shares.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) watchdog: watch::Watchdog,
    pub(crate) config: WamrConfig,
}

/// A [`WasmEngine`] on WAMR's fast interpreter.
///
/// Cheap to clone; clones share the watchdog thread. Every engine shares the process-wide WAMR
/// runtime and its host-function registry.
#[derive(Clone)]
pub struct WamrEngine {
    shared: Arc<Shared>,
}

impl fmt::Debug for WamrEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WamrEngine").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

impl WamrEngine {
    /// Creates an engine: initializes the process-wide WAMR runtime and registers the host
    /// functions (the first time), and starts the engine's watchdog thread.
    ///
    /// # Errors
    /// [`wasmux_abi::Error::Engine`] when WAMR cannot be initialized or the watchdog thread
    /// cannot be started.
    pub fn new(config: WamrConfig) -> Result<Self> {
        runtime::init()?;
        let watchdog = watch::start(config.tick)?;
        Ok(Self { shared: Arc::new(Shared { watchdog, config }) })
    }
}

impl WasmEngine for WamrEngine {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn compile(&self, bytes: &[u8]) -> Result<Arc<dyn WasmModule>> {
        Ok(Arc::new(WamrModule::new(self.shared.clone(), bytes)?))
    }

    fn compiles_ahead(&self) -> bool {
        // Loading translates every function to the fast interpreter's bytecode.
        true
    }

    fn fingerprint(&self) -> String {
        let settings = format!(
            "mode=fast-interp;bulk-memory;reference-types;thread-mgr;hw-bound-check=off;target={}-{}",
            std::env::consts::ARCH,
            std::env::consts::OS,
        );
        format!("{ENGINE_NAME}-{WAMR_VERSION}-{:016x}", wasmux_abi::stable_hash(settings.as_bytes()))
    }
}
