//! A running instance: its isolate (through the bridge), resolved exports, deadline watch and
//! guest-memory access.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use wasmux_abi::{Error, FuncRef, HostState, Limits, OutOfBounds, Result, WasmInstance};

use crate::error::{self, engine_msg};
use crate::ffi::{self, IsolatePtr, MemorySpec, OK, RawInstance, Report, TERMINATED};
use crate::module::ModuleData;
use crate::rewrite::{HOOK_TABLE, MEMORY_MODULE, MEMORY_NAME, START, TABLE_LIMIT};
use crate::watch::Watch;
use crate::{ENGINE_NAME, Shared};

/// Bytes in a wasm page.
const PAGE: u64 = 65536;
/// The most pages a 32-bit memory can have.
const MAX_PAGES: u32 = 65536;

/// Where linear memory was when last read. Growing memory changes its size and can move it,
/// so the view goes stale (`fresh == false`) when the growth hook reports a `memory.grow`
/// (every one of the module's goes through it, see [`crate::rewrite`]), and is read again on
/// first use.
pub(crate) struct MemoryView {
    base: *mut u8,
    len: usize,
    pub(crate) fresh: bool,
}

/// Everything the Rust side keeps per instance. Lives in a `Box` whose pointer the bridge
/// passes back to [`host_call`](crate::imports::host_call); accessed only through that raw
/// pointer, with borrows that never span a bridge call that can run guest code.
pub(crate) struct State {
    pub(crate) host: HostState,
    raw: *mut RawInstance,
    /// The module, whose export table `FuncRef.0` indexes.
    module: Arc<ModuleData>,
    /// Which exports of the table this instance has resolved (through the bridge).
    resolved: Box<[bool]>,
    pub(crate) memory: MemoryView,
    /// The error of a failed host function, which ends the current call.
    pub(crate) pending: Option<Error>,
    pub(crate) watch: Arc<Watch>,
    /// The instance's memory limit in bytes.
    pub(crate) max_memory: u64,
    /// Whether growth beyond the limit was refused during the current top-level call (reported
    /// by the growth hook).
    pub(crate) memory_denied: bool,
}

/// A [`WasmInstance`] on V8: one isolate and context, kept by the bridge.
pub struct V8Instance {
    state: NonNull<State>,
    raw: NonNull<RawInstance>,
    watch: Arc<Watch>,
    module: Arc<ModuleData>,
    _shared: Arc<Shared>,
}

// SAFETY: the instance owns its state and its isolate outright (nothing else points to either
// except the bridge's per-thread bookkeeping, which is synchronized by the instance's mutex).
// V8 allows an isolate to be used by one thread at a time from any thread; the bridge enters
// it on whichever thread calls (see the crate docs), sets the stack limit for that thread, and
// `&mut self` on every method excludes concurrent use.
unsafe impl Send for V8Instance {}

impl fmt::Debug for V8Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("V8Instance").finish_non_exhaustive()
    }
}

impl V8Instance {
    /// Creates the isolate and instantiates the module in it.
    pub(crate) fn new(
        shared: &Arc<Shared>,
        module: &Arc<ModuleData>,
        host: HostState,
        limits: &Limits,
    ) -> Result<Self> {
        let linked = module.linked.as_ref().map_err(|reason| engine_msg(format!("cannot link module: {reason}")))?;
        if module.table_elements > limits.max_table_elements {
            return Err(engine_msg(format!(
                "cannot instantiate: the module's tables start with {} elements, over the limit of {}",
                module.table_elements, limits.max_table_elements
            )));
        }
        let limit = u32::try_from(limits.max_memory_bytes / PAGE).unwrap_or(u32::MAX).min(MAX_PAGES);
        let mut memory = MemorySpec::default();
        if let Some(decl) = module.memory {
            if decl.initial > limit {
                return Err(engine_msg(format!(
                    "cannot instantiate: initial memory of {} pages exceeds the limit of {} bytes",
                    decl.initial, limits.max_memory_bytes
                )));
            }
            let declared = decl.maximum.unwrap_or(MAX_PAGES).min(MAX_PAGES);
            memory = MemorySpec { present: 1, initial: decl.initial, maximum: declared.min(limit) };
        }

        let watch = shared.watchdog.watch(limits.callback_deadline);
        let state = Box::new(State {
            host,
            raw: std::ptr::null_mut(),
            module: module.clone(),
            resolved: vec![false; module.table.len()].into(),
            memory: MemoryView { base: std::ptr::null_mut(), len: 0, fresh: false },
            pending: None,
            watch: watch.clone(),
            max_memory: limits.max_memory_bytes,
            memory_denied: false,
        });
        let state = NonNull::from(Box::leak(state));
        let mut raw = std::ptr::null_mut();
        let mut isolate = std::ptr::null_mut();
        // SAFETY: V8 is initialized (the engine exists); the out pointers are writable. The
        // state pointer stays valid until the instance is dropped, after which the bridge
        // never calls back (no call can run without the instance).
        let status = unsafe {
            ffi::wasmux_v8_instance_new(
                state.as_ptr().cast(),
                limits.max_stack_bytes,
                heap_limit(limits, module),
                &mut raw,
                &mut isolate,
            )
        };
        let (Some(raw), Some(isolate), OK) = (NonNull::new(raw), NonNull::new(isolate), status) else {
            // SAFETY: the state came from `Box::leak` above and nothing else refers to it.
            drop(unsafe { Box::from_raw(state.as_ptr()) });
            return Err(engine_msg("cannot create a V8 isolate"));
        };
        // SAFETY: nothing else refers to the state yet.
        unsafe { (*state.as_ptr()).raw = raw.as_ptr() };
        watch.set_target(Some(IsolatePtr(isolate)));
        // From here on, `Drop` cleans up.
        let instance = Self { state, raw, watch, module: module.clone(), _shared: shared.clone() };

        let imports: Vec<ffi::ImportSpec> = linked
            .iter()
            .map(|i| ffi::ImportSpec {
                module: i.module.as_ptr(),
                module_len: i.module.len(),
                name: i.name.as_ptr(),
                name_len: i.name.len(),
                host_func: i.host_func,
                params: i.params.as_ptr(),
                n_params: i.params.len() as u32,
                results: i.results.as_ptr(),
                n_results: i.results.len() as u32,
            })
            .collect();
        let name = |present: bool, name: &'static str| if present { name } else { "" };
        let (hook, table_limit, start) =
            (name(module.grow_hook, HOOK_TABLE), name(module.table_limit, TABLE_LIMIT), name(module.start, START));
        let hooks = ffi::HookSpec {
            grow_table: hook.as_ptr(),
            grow_table_len: hook.len(),
            table_limit: table_limit.as_ptr(),
            table_limit_len: table_limit.len(),
            table_limit_value: u32::try_from(limits.max_table_elements).unwrap_or(u32::MAX),
            start: start.as_ptr(),
            start_len: start.len(),
        };
        let mut report = Report::default();
        // Start-up (the start function, which the bridge runs once the hooks are in place) runs
        // under the callback deadline too.
        instance.watch.start();
        // SAFETY: the instance and module are alive; `imports` and the strings it points to
        // outlive the call; the report is writable. Host functions may run (a start function)
        // and use the state, to which no reference is alive.
        let status = unsafe {
            ffi::wasmux_v8_instance_link(
                raw.as_ptr(),
                module.compiled.as_ptr(),
                imports.as_ptr(),
                imports.len(),
                MEMORY_MODULE.as_ptr(),
                MEMORY_MODULE.len(),
                MEMORY_NAME.as_ptr(),
                MEMORY_NAME.len(),
                memory,
                hooks,
                report.as_sink(),
                ffi::report_sink,
            )
        };
        instance.watch.finish();
        // SAFETY: the bridge call is over; no other reference to the state is alive.
        let pending = unsafe { (*state.as_ptr()).pending.take() };
        if let Some(e) = pending {
            return Err(e);
        }
        match status {
            OK => {
                // SAFETY: as above.
                unsafe { (*state.as_ptr()).memory.fresh = false };
                Ok(instance)
            }
            TERMINATED => Err(instance.watch.trap(ENGINE_NAME)),
            _ => Err(error::from_instantiate(status, &report)),
        }
    }

    fn state(&mut self) -> &mut State {
        // SAFETY: `&mut self` excludes any other use of the state; no bridge call is running.
        unsafe { self.state.as_mut() }
    }
}

impl Drop for V8Instance {
    fn drop(&mut self) {
        // No termination request may reach the isolate once the bridge may dispose it.
        self.watch.set_target(None);
        // SAFETY: the handle came from `wasmux_v8_instance_new` and is freed once; the bridge
        // disposes the isolate now or, if another thread still has it entered, when that
        // thread lets go (it never calls back into the state after this).
        unsafe { ffi::wasmux_v8_instance_free(self.raw.as_ptr()) };
        // SAFETY: the state came from `Box::leak` and nothing refers to it any more.
        drop(unsafe { Box::from_raw(self.state.as_ptr()) });
    }
}

impl WasmInstance for V8Instance {
    fn engine(&self) -> &'static str {
        ENGINE_NAME
    }

    fn state(&mut self) -> &mut HostState {
        &mut self.state().host
    }

    fn lookup(&mut self, name: &str) -> Option<FuncRef> {
        let func = self.module.table.find(name)?;
        let slot = func.0 as usize;
        if *self.state().resolved.get(slot)? {
            return Some(func);
        }
        let export = self.module.table.get(func)?;
        let n_slots = u32::try_from(self.module.table.len()).ok()?;
        // SAFETY: the instance is alive; the name and type codes are readable for the call.
        // Resolving an export runs no guest code, and no call is running (`&mut self`), so the
        // bridge may size its table.
        let index = unsafe {
            ffi::wasmux_v8_lookup(
                self.raw.as_ptr(),
                func.0,
                n_slots,
                export.name.as_ptr(),
                export.name.len(),
                export.params.as_ptr(),
                export.params.len(),
                export.results.as_ptr(),
                export.results.len(),
            )
        };
        if u32::try_from(index).ok()? != func.0 {
            return None;
        }
        self.state().resolved[slot] = true;
        Some(func)
    }

    fn call(&mut self, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
        let state = self.state();
        state.pending = None;
        state.memory_denied = false;
        self.watch.start();
        // SAFETY: `&mut self` excludes other uses of the state, and no borrow of it is alive.
        let result = unsafe { call(self.state.as_ptr(), func, args) };
        self.watch.finish();
        result
    }

    fn memory_size(&mut self) -> u64 {
        // SAFETY: as in `call`.
        unsafe { memory_size(self.state.as_ptr()) }
    }

    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        // SAFETY: as in `call`.
        unsafe { read(self.state.as_ptr(), ptr, out) }
    }

    fn global(&mut self, name: &str, ty: wasmux_abi::ValType) -> Option<u64> {
        let ty = ffi::type_code(ty);
        if ty == ffi::OTHER {
            return None;
        }
        let mut bits = 0u64;
        // SAFETY: as in `call`; reading a global runs no guest code. `name` is valid for
        // `name.len()` bytes and `bits` is writable.
        let ok = unsafe { ffi::wasmux_v8_global((*self.state.as_ptr()).raw, name.as_ptr(), name.len(), ty, &mut bits) };
        (ok == OK).then_some(bits)
    }

    fn interrupt_handle(&self) -> Arc<dyn Fn() + Send + Sync> {
        let watch = self.watch.clone();
        Arc::new(move || watch.interrupt())
    }
}

/// Calls a resolved export with raw arguments; used for top-level and re-entrant calls alike
/// (neither touches the deadline here).
///
/// # Safety
/// `state` is a live instance state, used on this thread only, with no reference into it
/// alive.
pub(crate) unsafe fn call(state: *mut State, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
    let (raw, has_result) = {
        // SAFETY: guaranteed by the caller; the borrow ends with this block.
        let s = unsafe { &*state };
        let (Some(f), Some(true)) = (s.module.table.get(func), s.resolved.get(func.0 as usize).copied()) else {
            return Err(engine_msg(format!("unknown function reference {}", func.0)));
        };
        if args.len() != f.params.len() {
            return Err(engine_msg(format!(
                "`{}` takes {} arguments, called with {}",
                f.name,
                f.params.len(),
                args.len()
            )));
        }
        (s.raw, !f.results.is_empty())
    };
    let mut out = 0u64;
    let mut report = Report::default();
    // SAFETY: the instance is alive; `args` is readable for its length (at most MAX_VALUES,
    // checked against the export's arity); `out` and the report are writable. Host functions
    // called by the guest use the state through the raw pointer; no reference is alive here.
    let status = unsafe {
        ffi::wasmux_v8_call(raw, func.0, args.as_ptr(), args.len() as u32, &mut out, report.as_sink(), ffi::report_sink)
    };
    // SAFETY: the bridge call is over; guaranteed by the caller otherwise.
    let s = unsafe { &mut *state };
    if let Some(e) = s.pending.take() {
        return Err(e);
    }
    match status {
        OK => Ok(has_result.then_some(out)),
        TERMINATED => Err(s.watch.trap(ENGINE_NAME)),
        _ => Err(error::from_call(status, &report, s.memory_denied)),
    }
}

/// Reads the memory view again if memory grew since it was read.
///
/// # Safety
/// As for [`call`].
unsafe fn view(state: *mut State) -> (*mut u8, usize) {
    // SAFETY: guaranteed by the caller; reading the memory runs no guest code, so the bridge
    // does not call back while this borrow is alive.
    let s = unsafe { &mut *state };
    if !s.memory.fresh {
        let (mut base, mut len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the instance is alive; the out pointers are writable.
        if unsafe { ffi::wasmux_v8_memory(s.raw, &mut base, &mut len) } == OK {
            s.memory = MemoryView { base, len, fresh: true };
        } else {
            s.memory = MemoryView { base: std::ptr::null_mut(), len: 0, fresh: false };
        }
    }
    (s.memory.base, s.memory.len)
}

/// The size of linear memory in bytes.
///
/// # Safety
/// As for [`call`].
pub(crate) unsafe fn memory_size(state: *mut State) -> u64 {
    // SAFETY: guaranteed by the caller.
    unsafe { view(state) }.1 as u64
}

/// The memory range `[ptr, ptr + n)` as an offset, if it lies inside memory of `len` bytes.
fn range(ptr: u64, n: usize, len: usize) -> Result<usize, OutOfBounds> {
    let start = usize::try_from(ptr).map_err(|_| OutOfBounds)?;
    let end = start.checked_add(n).ok_or(OutOfBounds)?;
    if end > len {
        return Err(OutOfBounds);
    }
    Ok(start)
}

/// Copies guest memory out.
///
/// # Safety
/// As for [`call`].
pub(crate) unsafe fn read(state: *mut State, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
    // SAFETY: guaranteed by the caller.
    let (base, len) = unsafe { view(state) };
    let start = range(ptr, out.len(), len)?;
    if out.is_empty() {
        return Ok(());
    }
    // SAFETY: `[start, start + out.len())` lies inside the memory, whose `len` bytes at `base`
    // are mapped and stay in place while no guest code runs; `out` is a distinct Rust buffer.
    unsafe { std::ptr::copy_nonoverlapping(base.add(start), out.as_mut_ptr(), out.len()) };
    Ok(())
}

/// Copies data into guest memory.
///
/// # Safety
/// As for [`call`].
pub(crate) unsafe fn write(state: *mut State, ptr: u64, data: &[u8]) -> Result<(), OutOfBounds> {
    // SAFETY: guaranteed by the caller.
    let (base, len) = unsafe { view(state) };
    let start = range(ptr, data.len(), len)?;
    if data.is_empty() {
        return Ok(());
    }
    // SAFETY: as in `read`; guest memory is not shared, and only this thread runs the isolate.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(start), data.len()) };
    Ok(())
}

/// The JS heap an instance's isolate may use. V8 answers an exhausted heap by aborting the
/// process, so the limit leaves room for everything a guest within its limits can make V8 keep
/// there: a base for the wrappers (the instance, its exports and imports, errors), the
/// tables the limits allow (about 30 bytes per element in V8 10.2, counting the dispatch table
/// and the copy made when a table grows), and an object per function, import, export and
/// global (a function reference, made by `ref.func` or `table.get`, takes about 300 bytes).
/// It is a limit, not a reservation: the heap grows only as far as the guest makes it.
fn heap_limit(limits: &Limits, module: &ModuleData) -> usize {
    const BASE: u64 = 64 << 20;
    const PER_ELEMENT: u64 = 64;
    const PER_ITEM: u64 = 512;
    // V8 wants the sizes it derives from this aligned to its pages.
    const ALIGN: u64 = 16 << 20;
    let tables = limits.max_table_elements.min(wasmux_abi::validate::MAX_TABLE_ELEMENTS);
    let items = module.heap_items.min(16 << 20);
    usize::try_from((BASE + tables * PER_ELEMENT + items * PER_ITEM).next_multiple_of(ALIGN)).unwrap_or(usize::MAX)
}
