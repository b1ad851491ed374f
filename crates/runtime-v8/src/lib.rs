//! The wasmux `WasmVm` traits implemented on V8 10.2, the library Debian ships as `libnode108`
//! (Node 18), through a small C++ bridge (`src/bridge.cc`) compiled by the build script.
//!
//! This crate knows nothing about proxy-wasm. It compiles modules, links every function
//! import to its entry of [`HOST_FUNCS`](wasmux_abi::HOST_FUNCS), instantiates, calls exports
//! and exposes linear memory; the ABI itself lives in `wasmux-abi`.
//!
//! # Getting V8
//!
//! The `v8` crate downloads a prebuilt static library at build time, and libnode does not export
//! the wasm C API, so the bridge uses V8's C++ API from `libnode.so.108`. The build script finds
//! it through `V8_INCLUDE_DIR`/`V8_LIB_DIR`, the system paths, or the project cache
//! `.cache/v8` that `scripts/fetch-v8.sh` fills (see `build.rs`).
//!
//! # Design
//!
//! - **The bridge.** About 900 lines of C++ behind a C ABI: compile, instantiate, resolve an
//!   export, call, read the memory base, terminate. No C++ exception crosses it (every entry
//!   point is `noexcept` and catches), no Rust panic crosses it (the host trampoline catches
//!   them), and Rust never holds a V8 handle. Error details come back through a callback that
//!   fills a `Report`, so no allocation crosses either.
//! - **Compile once, instantiate anywhere.** The engine owns one compile isolate (behind a
//!   mutex). A module keeps V8's `CompiledWasmModule`, which any isolate can instantiate with
//!   `WasmModuleObject::FromCompiledModule`: per-worker instances share the compiled code.
//! - **One isolate per instance.** Each instance has its own isolate and context. An isolate is
//!   single-threaded and heavy (a few milliseconds and a few MiB each), but the alternatives do not fit
//!   the contract: `WasmInstance` is `Send`, so an instance may move to another thread between
//!   calls. With one isolate per thread, an instance living in thread A's isolate could not be
//!   called from thread B while A runs other instances in it, and `v8::Locker` would serialize
//!   them and costs more than the wasm call itself (measured: a `Locker` per call takes about
//!   140 ns, an `Isolate::Scope` per call 50 to 90 ns, against about 100 ns for the call). With
//!   its own isolate, an instance carries everything with it.
//! - **Entering the isolate lazily.** Isolate::Enter takes a mutex and allocates, so the bridge
//!   leaves an instance's isolate and context entered on the thread that used it last and finds
//!   them entered on the next call from that thread: a call costs a `HandleScope`, a `TryCatch`
//!   and `Function::Call` on a cached `v8::Global` handle, with no JS-level lookup. One
//!   instance per thread is kept entered; switching to another instance exits it first. An
//!   instance that moved to another thread is entered and exited around each operation there
//!   (under the instance's mutex) until the old thread lets go of it, at its next bridge
//!   operation or when it exits; an instance dropped elsewhere is disposed by that thread then
//!   (a thread that never calls the bridge again keeps it until it exits).
//!   Each thread change also sets the isolate's stack limit for the new thread.
//! - **Exports resolved once per module.** A compiled module keeps a table of the function
//!   exports the host can call, sorted by name, with their types as the bridge's type codes;
//!   [`FuncRef`](wasmux_abi::FuncRef) indexes it, and is also the slot of the export in the
//!   bridge's per-instance table. `lookup` finds the export there and has the bridge take
//!   the instance's function handle, once per instance.
//! - **Host state outside V8.** Each instance's [`HostState`](wasmux_abi::HostState), resolved
//!   exports, memory view and pending error live in a Rust `State` behind a raw pointer that
//!   the bridge hands back to the host trampoline; there are no thread-locals on the Rust side.
//!   Host functions are `FunctionTemplate` callbacks, one per import of the module (each
//!   resolved against the table at compile time); they convert the arguments to raw `u64`
//!   words and call `imports::host_call`.
//! - **Validation, then a rewrite.** Every module first goes through
//!   [`wasmux_abi::validate()`] on its original bytes, so V8 and the rewrite only ever see modules
//!   wasmux accepts (a module using a table or global it never declares is refused there, and
//!   cannot pick up one the rewrite appends). The rewrite (see `rewrite.rs`) then adds what V8
//!   lacks for per-instance limits, appending everything so that no index of the module
//!   changes; a valid module it cannot handle is refused rather than run without limits.
//! - **Memory.** Linear memory is read through the exported `WebAssembly.Memory`'s backing
//!   store. Growing memory changes its size and can move it, so the view is read again after
//!   each growth: the rewrite routes every `memory.grow` through an appended function that
//!   reports to the host, so a host call does not re-read the view unless memory grew.
//! - **Memory limit.** `--wasm_max_mem_pages` is process-wide, so the limit is enforced per
//!   instance another way: the module's memory definition is rewritten into an import of the
//!   same type, and each instance provides a `WebAssembly.Memory` whose maximum is the smaller
//!   of the declared maximum and the instance's limit. V8 itself refuses growth beyond it
//!   (`memory.grow` returns -1), which holds whatever the guest does. The growth hook also
//!   reports refusals, so a trap after growth past the limit was refused in the same call is
//!   [`TrapKind::MemoryLimit`](wasmux_abi::TrapKind), exactly as on the other engines.
//! - **Table limit.** V8 has no per-instance table limit either, and a table maximum could
//!   only bound each table, not the total over all tables the contract counts
//!   ([`Limits::max_table_elements`](wasmux_abi::Limits)). So the rewrite routes every
//!   `table.grow` through an appended wasm function that adds up the sizes of all the module's
//!   tables and grows only within a budget held in an appended global, which the bridge sets
//!   per instance (beyond it, -1, as a failed `table.grow`); the initial sizes are checked
//!   before V8 allocates anything. No host call is involved.
//! - **Start function.** The rewrite turns the start section into an export that the bridge
//!   calls once the growth hook and the table budget are in place, so start-up runs under the
//!   same limits (and the same deadline) as any call.
//! - **The JS heap.** Tables and function references live in the isolate's JS heap, and V8
//!   aborts the process when that heap is exhausted. Each isolate's heap limit is therefore
//!   sized from the instance's table limit and the module's functions, imports, exports and
//!   globals, so a guest within its limits cannot exhaust it (a 10-million-element table, or
//!   `ref.func` on every function, used to).
//! - **Deadlines and interrupts.** A watchdog thread per engine ticks (every 1 ms by default
//!   while a call with a short deadline runs, every 10 ms while the calls in flight have
//!   deadlines of a second or more; parked when the engine is idle), keeps a coarse clock and calls `Isolate::TerminateExecution` on a top-level call that ran past
//!   its deadline; [`WasmInstance::interrupt_handle`](wasmux_abi::WasmInstance) uses the same
//!   path. V8 honours a termination at its interrupt checks: function entries and, because
//!   the bridge turns off dynamic tiering (`--no-wasm-dynamic-tiering`), every loop header
//!   (with dynamic tiering, V8 10.2's baseline code checks at loop back-edges only when the
//!   tiering budget runs out, and a loop of host calls or bulk memory operations ran for
//!   minutes past its deadline). Without dynamic tiering V8 compiles every function with
//!   TurboFan in the background after the baseline compile, once per module. The host
//!   trampoline also refuses to run host functions once a termination was requested (one
//!   atomic load per host call). Calls start and finish with one atomic operation each; a
//!   termination that arrives as a call finishes is cancelled with
//!   `CancelTerminateExecution`, so the isolate stays usable. Re-entrant calls from host
//!   functions run under the outer call's deadline.
//! - **Errors.** V8's `RuntimeError` messages map to the same [`TrapKind`](wasmux_abi::TrapKind)s
//!   as the other engines ("Maximum call stack size exceeded" is a stack overflow, a
//!   termination is a deadline), with a backtrace of wasm function names. An
//!   [`Error`] returned by a host function (a trap in the re-entrant
//!   allocator, say) is kept in the state while a JS exception unwinds the guest, and the outer
//!   call returns that same error.
//! - **Stack.** [`Limits::max_stack_bytes`](wasmux_abi::Limits) is applied per instance with
//!   `Isolate::SetStackLimit`, kept at least a reserve above the end of the thread's stack so
//!   host functions always have room.
//! - **No trap handler.** V8 is not asked to install its WebAssembly signal handler, so it
//!   emits explicit bounds checks. Its handler would chain badly with wasmtime's and wasmer's
//!   in the same process (it uninstalls itself on the first fault it does not own).
//!
//! Module serialization is not offered, because V8 10.2's public API cannot load what it
//! saves: `CompiledWasmModule::Serialize` writes a module's code, but the only way back,
//! `WasmModuleObject::FromCompiledModule`, takes a `CompiledWasmModule` of the same process,
//! which nothing outside V8 can construct from bytes (the deserializer is internal to V8). And
//! there is little to save: V8 compiles with its baseline compiler and optimizes in the
//! background (a cold start of the 280 KB bench-json fixture, first instance included, took
//! 4.3 ms in docs/BENCHMARKS.md). Foreground tasks V8 posts are run every 1024
//! top-level calls of an instance.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod error;
mod ffi;
mod imports;
mod instance;
mod module;
mod rewrite;
mod watch;

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmux_abi::{Error, Result, WasmEngine, WasmModule};

pub use instance::V8Instance;
pub use module::V8Module;

/// The engine name reported in errors and traps.
pub const ENGINE_NAME: &str = "v8";

/// The V8 version of the headers this crate was built against, e.g. `10.2.154.26`.
pub const V8_VERSION: &str = env!("WASMUX_V8_VERSION");

/// Settings of a [`V8Engine`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V8Config {
    tick: Duration,
}

impl Default for V8Config {
    fn default() -> Self {
        Self { tick: Duration::from_millis(1) }
    }
}

impl V8Config {
    /// Sets the watchdog tick: the granularity of callback deadlines (default 1 ms, at least
    /// 100 µs).
    #[must_use]
    pub fn watchdog_tick(mut self, tick: Duration) -> Self {
        self.tick = tick.max(Duration::from_micros(100));
        self
    }
}

/// The state every module and instance of an engine shares.
pub(crate) struct Shared {
    pub(crate) compiler: ffi::Compiler,
    pub(crate) watchdog: watch::Watchdog,
    config: V8Config,
}

/// A [`WasmEngine`] on V8.
///
/// Cheap to clone; clones share the compile isolate and the watchdog thread.
#[derive(Clone)]
pub struct V8Engine {
    shared: Arc<Shared>,
}

impl fmt::Debug for V8Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V8Engine").field("config", &self.shared.config).finish_non_exhaustive()
    }
}

/// Initializes V8 once per process.
fn init() -> Result<()> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        // SAFETY: `host_call` has the signature the bridge expects and is only called with the
        // state pointers this crate hands to the bridge.
        match unsafe { ffi::wasmux_v8_init(imports::host_call) } {
            ffi::OK => Ok(()),
            _ => Err("cannot initialize V8".to_owned()),
        }
    })
    .clone()
    .map_err(|message| Error::Engine { engine: ENGINE_NAME, message })
}

impl V8Engine {
    /// Initializes V8 (once per process), creates the compile isolate and starts the watchdog.
    ///
    /// # Errors
    /// [`Error::Engine`] when V8 cannot be initialized or the watchdog thread cannot start.
    pub fn new(config: V8Config) -> Result<Self> {
        init()?;
        let compiler = ffi::Compiler::new().ok_or_else(|| error::engine_msg("cannot create the compile isolate"))?;
        let watchdog = watch::start(config.tick)?;
        Ok(Self { shared: Arc::new(Shared { compiler, watchdog, config }) })
    }

    /// The V8 version loaded at run time.
    pub fn v8_version() -> String {
        ffi::runtime_version()
    }
}

impl WasmEngine for V8Engine {
    fn name(&self) -> &'static str {
        ENGINE_NAME
    }

    fn compile(&self, bytes: &[u8]) -> Result<Arc<dyn WasmModule>> {
        Ok(Arc::new(V8Module::new(self.shared.clone(), bytes)?))
    }

    fn fingerprint(&self) -> String {
        let settings = format!(
            "bridge=2;trap-handler=off;memory=imported;tiering=eager;target={}-{}",
            std::env::consts::ARCH,
            std::env::consts::OS
        );
        format!("{ENGINE_NAME}-{V8_VERSION}-{:016x}", wasmux_abi::stable_hash(settings.as_bytes()))
    }
}
