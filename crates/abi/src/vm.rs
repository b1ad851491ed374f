//! The `WasmVm` traits: the whole contract between the ABI layer and an engine backend.
//!
//! Three objects, all object-safe: a [`WasmEngine`] compiles bytes into a [`WasmModule`]; a
//! module is compiled code shared by every instance made from it (per-worker clones never
//! recompile); a [`WasmInstance`] runs exports. While the guest calls a host function, the
//! backend hands the ABI layer a [`Guest`]: bounds-checked memory access, the host state, and
//! re-entrant calls into the guest (the allocator). Backends know nothing about proxy-wasm:
//! they register [`HOST_FUNCS`](crate::HOST_FUNCS) in one loop and pass raw values through.
//!
//! Values cross this boundary as raw `u64` words: an `i32` parameter or result travels
//! zero-extended (`v as u32 as u64`), an `i64` as its bits. Proxy-wasm uses no floats.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{HostState, Quotas, Result};

/// A wasm value type as proxy-wasm uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValType {
    /// `i32`.
    I32,
    /// `i64`.
    I64,
    /// `f32` (only seen in foreign modules; never in the proxy-wasm ABI).
    F32,
    /// `f64` (idem).
    F64,
    /// Reference or vector types, which no proxy-wasm import or callback uses.
    Other,
}

impl fmt::Display for ValType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::I32 => "i32",
            Self::I64 => "i64",
            Self::F32 => "f32",
            Self::F64 => "f64",
            Self::Other => "ref",
        })
    }
}

/// A function signature.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FuncType {
    /// Parameter types.
    pub params: Vec<ValType>,
    /// Result types.
    pub results: Vec<ValType>,
}

impl FuncType {
    /// Builds a signature from slices.
    pub fn new(params: &[ValType], results: &[ValType]) -> Self {
        Self { params: params.to_vec(), results: results.to_vec() }
    }

    /// Whether this signature is exactly `params -> results`.
    pub fn is(&self, params: &[ValType], results: &[ValType]) -> bool {
        self.params == params && self.results == results
    }
}

impl fmt::Display for FuncType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |v: &[ValType]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>().join(", ");
        write!(f, "({}) -> ({})", join(&self.params), join(&self.results))
    }
}

/// The type of an import or export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExternType {
    /// A function.
    Func(FuncType),
    /// A linear memory.
    Memory,
    /// A table.
    Table,
    /// A global.
    Global,
    /// Anything else (tags, ...).
    Other,
}

impl ExternType {
    /// A short kind name.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Func(_) => "function",
            Self::Memory => "memory",
            Self::Table => "table",
            Self::Global => "global",
            Self::Other => "other",
        }
    }
}

/// One import of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportDesc {
    /// Import module, e.g. `env`.
    pub module: String,
    /// Import name, e.g. `proxy_log`.
    pub name: String,
    /// Its type.
    pub ty: ExternType,
}

/// One export of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportDesc {
    /// Export name.
    pub name: String,
    /// Its type.
    pub ty: ExternType,
}

/// A guest export resolved by [`WasmInstance::lookup`]: an index into the instance's own table
/// of resolved functions. Only meaningful for the instance that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FuncRef(pub u32);

/// Resource limits applied to one instance. Every sandboxed engine enforces all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Maximum linear memory in bytes. Growth beyond it fails (`memory.grow` returns -1).
    /// Modules have at most one memory (multi-memory is rejected at load), so this is the
    /// instance's whole linear memory.
    pub max_memory_bytes: u64,
    /// Maximum table elements, over all tables of the instance: the initial sizes are checked
    /// at instantiation (a module over it fails to instantiate) and `table.grow` beyond it
    /// fails (returns -1).
    pub max_table_elements: u64,
    /// CPU deadline for one top-level callback, including the host calls it makes.
    /// `None` disables it.
    pub callback_deadline: Option<Duration>,
    /// Maximum wasm stack in bytes (engines that count stack otherwise map it to an equivalent
    /// depth).
    pub max_stack_bytes: usize,
    /// Largest module accepted, in bytes.
    pub max_module_bytes: usize,
    /// Longest the host waits for a module to compile (`None`: no bound). See
    /// [`crate::validate`](mod@crate::validate) for what each engine can honour.
    pub compile_deadline: Option<Duration>,
    /// Host-side quotas: what the plugin may make the host hold.
    pub quotas: Quotas,
}

impl Limits {
    /// Default memory cap: 256 MiB.
    pub const DEFAULT_MAX_MEMORY: u64 = 256 << 20;
    /// Default table cap: 100 000 elements (proxy-wasm-cpp-host's wasmtime backend allows
    /// 10 000 per table).
    pub const DEFAULT_MAX_TABLE_ELEMENTS: u64 = 100_000;
    /// Default CPU deadline per callback: 1 s.
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);
    /// Default stack: 1 MiB.
    pub const DEFAULT_STACK: usize = 1 << 20;
    /// Default module size cap: 64 MiB.
    pub const DEFAULT_MAX_MODULE: usize = 64 << 20;
    /// Default compile deadline: 60 s.
    pub const DEFAULT_COMPILE_DEADLINE: Duration = Duration::from_secs(60);
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_memory_bytes: Self::DEFAULT_MAX_MEMORY,
            max_table_elements: Self::DEFAULT_MAX_TABLE_ELEMENTS,
            callback_deadline: Some(Self::DEFAULT_DEADLINE),
            max_stack_bytes: Self::DEFAULT_STACK,
            max_module_bytes: Self::DEFAULT_MAX_MODULE,
            compile_deadline: Some(Self::DEFAULT_COMPILE_DEADLINE),
            quotas: Quotas::default(),
        }
    }
}

/// A guest memory range that lies outside linear memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfBounds;

/// A compiler and runtime for wasm modules.
pub trait WasmEngine: Send + Sync + fmt::Debug {
    /// A stable engine name, e.g. `wasmtime`.
    fn name(&self) -> &'static str;

    /// Compiles (or, for lazy engines, validates) a module.
    ///
    /// # Errors
    /// [`Error::Compile`](crate::Error::Compile) for malformed or unsupported bytes.
    fn compile(&self, bytes: &[u8]) -> Result<Arc<dyn WasmModule>>;

    /// Whether [`Self::compile`] compiles every function ahead of time (and so can take long on
    /// a big module), rather than validating and translating lazily.
    fn compiles_ahead(&self) -> bool {
        false
    }

    /// Engine-specific fingerprint for cache keys: engine version and the settings that change
    /// generated code.
    fn fingerprint(&self) -> String {
        self.name().to_string()
    }

    /// Serializes a compiled module to an engine artifact, if the engine supports it.
    fn serialize(&self, _module: &dyn WasmModule) -> Option<Vec<u8>> {
        None
    }

    /// Loads an artifact produced by [`Self::serialize`] on the same engine build.
    ///
    /// # Errors
    /// An artifact from another engine build or a corrupt one is rejected.
    fn deserialize(&self, _artifact: &[u8]) -> Result<Arc<dyn WasmModule>> {
        Err(crate::Error::Engine { engine: self.name(), message: "serialization unsupported".into() })
    }
}

/// Compiled code, shared by every instance made from it.
pub trait WasmModule: Send + Sync + fmt::Debug {
    /// Downcasting support for the engine that made the module.
    fn as_any(&self) -> &dyn std::any::Any;

    /// The module's imports, in declaration order.
    fn imports(&self) -> &[ImportDesc];

    /// The module's exports, in declaration order.
    fn exports(&self) -> &[ExportDesc];

    /// Creates a fresh instance with its own memory and `state`, with every import linked to
    /// [`HOST_FUNCS`](crate::HOST_FUNCS). Runs no guest code (no start-up exports).
    ///
    /// # Errors
    /// Link or instantiation failures (the ABI layer validates imports before calling this).
    fn instantiate(&self, state: HostState, limits: &Limits) -> Result<Box<dyn WasmInstance>>;
}

/// A running instance, driven by the ABI layer from outside the guest.
pub trait WasmInstance: Send {
    /// The engine name.
    fn engine(&self) -> &'static str;

    /// The host state stored with the instance.
    fn state(&mut self) -> &mut HostState;

    /// Resolves a function export by name. `None` when absent or not a function.
    fn lookup(&mut self, name: &str) -> Option<FuncRef>;

    /// Calls a resolved export as a top-level call: the CPU deadline starts afresh.
    ///
    /// # Errors
    /// [`Error::Trap`](crate::Error::Trap) when the guest traps or a limit stops it.
    fn call(&mut self, func: FuncRef, args: &[u64]) -> Result<Option<u64>>;

    /// Current linear memory size in bytes.
    fn memory_size(&mut self) -> u64;

    /// Reads guest memory.
    ///
    /// # Errors
    /// [`OutOfBounds`] when the range is not inside linear memory.
    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds>;

    /// The raw bits of exported global `name`, of type `ty` (`i32` zero-extended, floats as
    /// their bits), for [`snapshot`](crate::snapshot)s. `None` when there is no such global,
    /// or the engine cannot read globals (its instances are then never snapshotted).
    fn global(&mut self, _name: &str, _ty: ValType) -> Option<u64> {
        None
    }

    /// A handle that interrupts the running call from another thread; the call traps with
    /// [`TrapKind::Deadline`](crate::TrapKind::Deadline).
    fn interrupt_handle(&self) -> Arc<dyn Fn() + Send + Sync>;
}

/// The guest as seen from inside a host function.
pub trait Guest {
    /// The host state of the calling instance.
    fn state(&mut self) -> &mut HostState;

    /// Size of a native word in guest memory: 4 for wasm32, 8 for native (null) filters.
    fn word_size(&self) -> usize {
        4
    }

    /// Current linear memory size in bytes.
    fn memory_size(&mut self) -> u64;

    /// Reads `out.len()` bytes at `ptr`.
    ///
    /// # Errors
    /// [`OutOfBounds`] when the range is not inside linear memory.
    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds>;

    /// Writes `data` at `ptr`.
    ///
    /// # Errors
    /// [`OutOfBounds`] when the range is not inside linear memory.
    fn write(&mut self, ptr: u64, data: &[u8]) -> Result<(), OutOfBounds>;

    /// Guest memory lent by reference, when the engine can lend it: a fast path for helpers
    /// that touch several ranges at once, or look guest bytes up without copying them. Valid
    /// until the next [`Self::call`]. `None` when the engine lends nothing.
    fn memory(&mut self) -> Option<GuestMemory<'_>> {
        self.memory_and_state().0
    }

    /// [`Self::memory`] and [`Self::state`] at once, so that host functions can look guest
    /// bytes up in host state (or copy host state into the guest) without copying them first.
    /// Engines that lend memory implement this one; the default lends none.
    fn memory_and_state(&mut self) -> (Option<GuestMemory<'_>>, &mut HostState) {
        (None, self.state())
    }

    /// Calls back into the guest (re-entrant), e.g. its allocator.
    ///
    /// # Errors
    /// Traps propagate and end the outer call too.
    fn call(&mut self, func: FuncRef, args: &[u64]) -> Result<Option<u64>>;
}

/// Guest memory lent to a host function ([`Guest::memory`]).
pub enum GuestMemory<'a> {
    /// A wasm linear memory: one slice, indexed by guest address.
    Linear(&'a mut [u8]),
    /// A native filter's memory: the host's own address space, sliced by the backend.
    Native(&'a mut dyn NativeMemory),
}

impl fmt::Debug for GuestMemory<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Linear(m) => write!(f, "Linear({} bytes)", m.len()),
            Self::Native(_) => f.write_str("Native"),
        }
    }
}

impl GuestMemory<'_> {
    /// The bytes at `[ptr, ptr+len)`; `None` when the range is out of bounds. An empty range
    /// is the empty slice wherever it points.
    #[inline]
    pub fn get(&self, ptr: u64, len: u64) -> Option<&[u8]> {
        if len == 0 {
            return Some(&[]);
        }
        match self {
            Self::Linear(m) => m.get(range(ptr, len)?),
            Self::Native(m) => m.bytes(ptr, usize::try_from(len).ok()?),
        }
    }

    /// [`Self::get`], writable.
    #[inline]
    pub fn get_mut(&mut self, ptr: u64, len: u64) -> Option<&mut [u8]> {
        if len == 0 {
            return Some(&mut []);
        }
        match self {
            Self::Linear(m) => m.get_mut(range(ptr, len)?),
            Self::Native(m) => m.bytes_mut(ptr, usize::try_from(len).ok()?),
        }
    }
}

/// `[at, at+len)` as a `usize` range, when it does not overflow.
#[inline]
fn range(at: u64, len: u64) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(at).ok()?;
    Some(start..start.checked_add(usize::try_from(len).ok()?)?)
}

/// The memory of a native (null) guest: the host's own address space, which the backend
/// slices by address. Only a backend that runs trusted native code implements it; wasm
/// engines lend [`GuestMemory::Linear`].
pub trait NativeMemory {
    /// The `len > 0` bytes at address `ptr`; `None` for an address no filter can pass (null,
    /// or a range that wraps around).
    fn bytes(&self, ptr: u64, len: usize) -> Option<&[u8]>;
    /// [`Self::bytes`], writable.
    fn bytes_mut(&mut self, ptr: u64, len: usize) -> Option<&mut [u8]>;
}

/// Why a backend stopped a running call: the CPU deadline or the embedder's interrupt handle.
/// Backends report both as [`TrapKind::Deadline`](crate::TrapKind::Deadline), with this as the
/// message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The callback deadline passed.
    Deadline(Duration),
    /// The embedder called the interrupt handle.
    Interrupted,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Deadline(d) => write!(f, "callback deadline of {d:?} exceeded"),
            Self::Interrupted => f.write_str("interrupted by the host"),
        }
    }
}

impl std::error::Error for StopReason {}

/// FNV-1a (64 bits) as a [`Hasher`](std::hash::Hasher): a hash that never changes between Rust
/// releases, for engine fingerprints and cache keys.
#[derive(Debug, Clone, Copy)]
pub struct StableHasher(u64);

impl Default for StableHasher {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = bytes.iter().fold(self.0, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// [`StableHasher`] over a byte string.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    use std::hash::Hasher as _;
    let mut h = StableHasher::default();
    h.write(bytes);
    h.finish()
}
