//! The C ABI of the C++ bridge (`src/bridge.cc`) and the small owning wrappers around it.
//!
//! Everything here mirrors a declaration in the bridge; the codes at the top must match its
//! constants. The bridge never lets a C++ exception out, and the Rust callbacks it calls never
//! unwind (panics are caught before they reach it).

use std::ffi::{CStr, c_char, c_void};
use std::marker::{PhantomData, PhantomPinned};
use std::ptr::NonNull;

use wasmux_abi::ValType;

/// Value type codes.
pub(crate) const I32: u8 = 0;
pub(crate) const I64: u8 = 1;
pub(crate) const F32: u8 = 2;
pub(crate) const F64: u8 = 3;
/// Reference and vector types, which cannot cross the bridge.
pub(crate) const OTHER: u8 = 255;

/// Status codes of bridge calls.
pub(crate) const OK: i32 = 0;
pub(crate) const EXCEPTION: i32 = 1;
pub(crate) const TERMINATED: i32 = 2;

/// Report tags (see [`Report`]).
const TAG_CLASS: u32 = 0;
const TAG_MESSAGE: u32 = 1;
const TAG_FRAME: u32 = 2;

/// The most parameters or results a function may have to cross the bridge.
pub(crate) const MAX_VALUES: usize = 16;

/// The "host function" the growth hook calls after every `memory.grow`, with the requested
/// pages, the result and the new size in pages (see [`crate::rewrite`]).
pub(crate) const GROW_NOTE: u32 = u32::MAX;

macro_rules! opaque {
    ($($(#[$m:meta])* $name:ident;)*) => {$(
        $(#[$m])*
        #[repr(C)]
        pub(crate) struct $name {
            _data: [u8; 0],
            _marker: PhantomData<(*mut u8, PhantomPinned)>,
        }
    )*};
}

opaque! {
    /// The engine's compile isolate (`Compiler` in the bridge).
    RawCompiler;
    /// `v8::CompiledWasmModule`: compiled code that any isolate can instantiate.
    RawModule;
    /// `std::shared_ptr<Instance>`: one isolate, context and wasm instance.
    RawInstance;
    /// `v8::Isolate`, only ever handed to [`wasmux_v8_terminate`] and
    /// [`wasmux_v8_cancel_terminate`].
    RawIsolate;
}

/// Receives report strings from the bridge.
pub(crate) type SinkFn = unsafe extern "C" fn(ctx: *mut c_void, tag: u32, ptr: *const u8, len: usize);

/// The host-function trampoline the bridge calls for every guest import call.
pub(crate) type HostFn =
    unsafe extern "C" fn(state: *mut c_void, func: u32, args: *const u64, nargs: u32, result: *mut u64) -> i32;

/// One function import to link (`wx_import`).
#[repr(C)]
pub(crate) struct ImportSpec {
    pub(crate) module: *const u8,
    pub(crate) module_len: usize,
    pub(crate) name: *const u8,
    pub(crate) name_len: usize,
    pub(crate) host_func: u32,
    pub(crate) params: *const u8,
    pub(crate) n_params: u32,
    pub(crate) results: *const u8,
    pub(crate) n_results: u32,
}

/// The memory the bridge creates for the instance (`wx_memory`), in pages.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MemorySpec {
    pub(crate) present: u32,
    pub(crate) initial: u32,
    pub(crate) maximum: u32,
}

/// The names (empty when absent) the rewrite gave to the hooks the bridge installs at
/// instantiation (`wx_hooks`, see [`crate::rewrite`]), and the table budget.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct HookSpec {
    pub(crate) grow_table: *const u8,
    pub(crate) grow_table_len: usize,
    pub(crate) table_limit: *const u8,
    pub(crate) table_limit_len: usize,
    pub(crate) table_limit_value: u32,
    pub(crate) start: *const u8,
    pub(crate) start_len: usize,
}

unsafe extern "C" {
    pub(crate) fn wasmux_v8_init(host: HostFn) -> i32;
    pub(crate) fn wasmux_v8_version() -> *const c_char;
    pub(crate) fn wasmux_v8_compiler_new() -> *mut RawCompiler;
    pub(crate) fn wasmux_v8_compiler_free(compiler: *mut RawCompiler);
    pub(crate) fn wasmux_v8_compile(
        compiler: *mut RawCompiler,
        bytes: *const u8,
        len: usize,
        out: *mut *mut RawModule,
        sink_ctx: *mut c_void,
        sink: SinkFn,
    ) -> i32;
    pub(crate) fn wasmux_v8_module_free(module: *mut RawModule);
    pub(crate) fn wasmux_v8_instance_new(
        state: *mut c_void,
        max_stack: usize,
        max_heap: usize,
        out: *mut *mut RawInstance,
        isolate: *mut *mut RawIsolate,
    ) -> i32;
    pub(crate) fn wasmux_v8_instance_free(instance: *mut RawInstance);
    pub(crate) fn wasmux_v8_instance_link(
        instance: *mut RawInstance,
        module: *const RawModule,
        imports: *const ImportSpec,
        n_imports: usize,
        mem_module: *const u8,
        mem_module_len: usize,
        mem_name: *const u8,
        mem_name_len: usize,
        memory: MemorySpec,
        hooks: HookSpec,
        sink_ctx: *mut c_void,
        sink: SinkFn,
    ) -> i32;
    pub(crate) fn wasmux_v8_lookup(
        instance: *mut RawInstance,
        slot: u32,
        n_slots: u32,
        name: *const u8,
        name_len: usize,
        params: *const u8,
        n_params: usize,
        results: *const u8,
        n_results: usize,
    ) -> i32;
    pub(crate) fn wasmux_v8_call(
        instance: *mut RawInstance,
        index: u32,
        args: *const u64,
        nargs: u32,
        result: *mut u64,
        sink_ctx: *mut c_void,
        sink: SinkFn,
    ) -> i32;
    pub(crate) fn wasmux_v8_memory(instance: *mut RawInstance, base: *mut *mut u8, len: *mut usize) -> i32;
    pub(crate) fn wasmux_v8_global(
        instance: *mut RawInstance,
        name: *const u8,
        name_len: usize,
        ty: u8,
        out: *mut u64,
    ) -> i32;
    pub(crate) fn wasmux_v8_terminate(isolate: *mut RawIsolate);
    pub(crate) fn wasmux_v8_cancel_terminate(isolate: *mut RawIsolate);
}

/// The type code of a value type.
pub(crate) fn type_code(ty: ValType) -> u8 {
    match ty {
        ValType::I32 => I32,
        ValType::I64 => I64,
        ValType::F32 => F32,
        ValType::F64 => F64,
        ValType::Other => OTHER,
    }
}

/// The version of the V8 library loaded at run time.
pub(crate) fn runtime_version() -> String {
    // SAFETY: `V8::GetVersion` returns a static NUL-terminated string and needs no
    // initialization.
    unsafe { CStr::from_ptr(wasmux_v8_version()) }.to_string_lossy().into_owned()
}

/// What the bridge reported about a failed operation.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Constructor name of the exception, e.g. `RuntimeError` (empty for non-errors).
    pub(crate) class: String,
    /// Its message.
    pub(crate) message: String,
    /// Wasm function names, innermost first (empty when unnamed).
    pub(crate) frames: Vec<String>,
}

impl Report {
    /// The context pointer for [`report_sink`].
    pub(crate) fn as_sink(&mut self) -> *mut c_void {
        std::ptr::from_mut(self).cast()
    }
}

/// The [`SinkFn`] that fills a [`Report`].
///
/// # Safety
/// `ctx` is a pointer from [`Report::as_sink`] whose report is not otherwise borrowed, and
/// `ptr..ptr+len` is readable.
pub(crate) unsafe extern "C" fn report_sink(ctx: *mut c_void, tag: u32, ptr: *const u8, len: usize) {
    // SAFETY: guaranteed by the caller (the bridge passes back the context it was given, during
    // the call that received it, and a valid byte range).
    let (report, bytes) =
        unsafe { (&mut *ctx.cast::<Report>(), if len == 0 { &[][..] } else { std::slice::from_raw_parts(ptr, len) }) };
    let text = String::from_utf8_lossy(bytes).into_owned();
    match tag {
        TAG_CLASS => report.class = text,
        TAG_MESSAGE => report.message = text,
        TAG_FRAME => report.frames.push(text),
        _ => {}
    }
}

/// An owned compile isolate.
#[derive(Debug)]
pub(crate) struct Compiler(NonNull<RawCompiler>);

// SAFETY: the bridge serializes every use of a compiler with its own mutex and enters the
// isolate for the duration of each compile, so any thread may use or free it.
unsafe impl Send for Compiler {}
// SAFETY: as above; `compile` takes `&self` because the bridge locks.
unsafe impl Sync for Compiler {}

impl Compiler {
    /// Creates the isolate.
    pub(crate) fn new() -> Option<Self> {
        // SAFETY: V8 is initialized (the engine calls `wasmux_v8_init` first); no arguments.
        NonNull::new(unsafe { wasmux_v8_compiler_new() }).map(Self)
    }

    /// Compiles `bytes`; on failure, the bridge's status and report.
    pub(crate) fn compile(&self, bytes: &[u8]) -> Result<CompiledModule, (i32, Report)> {
        let mut out = std::ptr::null_mut();
        let mut report = Report::default();
        // SAFETY: the compiler is alive; `bytes` is readable for its length during the call;
        // `out` and the report are valid for writes during the call.
        let status = unsafe {
            wasmux_v8_compile(self.0.as_ptr(), bytes.as_ptr(), bytes.len(), &mut out, report.as_sink(), report_sink)
        };
        match NonNull::new(out) {
            Some(module) if status == OK => Ok(CompiledModule(module)),
            _ => Err((status, report)),
        }
    }
}

impl Drop for Compiler {
    fn drop(&mut self) {
        // SAFETY: the compiler came from `wasmux_v8_compiler_new` and is freed once.
        unsafe { wasmux_v8_compiler_free(self.0.as_ptr()) }
    }
}

/// An owned `v8::CompiledWasmModule`.
#[derive(Debug)]
pub(crate) struct CompiledModule(NonNull<RawModule>);

// SAFETY: a CompiledWasmModule is immutable; it holds a shared pointer to V8's NativeModule,
// which V8 shares between isolates on any thread (that is how modules move between workers).
unsafe impl Send for CompiledModule {}
// SAFETY: as above; instantiation only reads it.
unsafe impl Sync for CompiledModule {}

impl CompiledModule {
    pub(crate) fn as_ptr(&self) -> *const RawModule {
        self.0.as_ptr()
    }
}

impl Drop for CompiledModule {
    fn drop(&mut self) {
        // SAFETY: the module came from `wasmux_v8_compile` and is freed once.
        unsafe { wasmux_v8_module_free(self.0.as_ptr()) }
    }
}

/// An isolate pointer for termination requests from other threads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IsolatePtr(pub(crate) NonNull<RawIsolate>);

// SAFETY: only `TerminateExecution` and `CancelTerminateExecution` are called through it, which
// V8 documents as callable from any thread; the watch that holds it drops it before the
// isolate can be disposed.
unsafe impl Send for IsolatePtr {}
// SAFETY: as above.
unsafe impl Sync for IsolatePtr {}
