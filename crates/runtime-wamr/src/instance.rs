//! A running instance: the WAMR module instance and execution environment, the state host
//! functions reach, calls, limits and memory access.

use std::fmt;
use std::ptr::NonNull;
use std::sync::Arc;

use wamrx_sys as sys;
use wasmux_abi::{Error, FuncRef, HostState, Limits, OutOfBounds, Result, WasmInstance};

use crate::module::{ExportTable, Loaded};
use crate::typed::{MAX_CELLS, MAX_VALUES, cell_count, from_cells, to_cells};
use crate::watch::{Target, Watch};
use crate::{ENGINE_NAME, Shared, error, runtime};

/// One wasm page.
const PAGE: u64 = 65536;

/// What host functions reach through the WAMR instance's custom data, and the top-level calls
/// through [`WamrInstance`]. Only ever borrowed for one step at a time, from the raw pointer:
/// host functions run while a call of the same instance is in progress further up the stack.
pub(crate) struct State {
    /// The ABI state of the instance.
    pub(crate) host: HostState,
    /// The module's function exports; `FuncRef.0` indexes it.
    table: Arc<ExportTable>,
    /// This instance's handle for each export of `table` (null until its first call).
    funcs: Box<[sys::wasm_function_inst_t]>,
    /// The error a host function raised, parked here while WAMR unwinds.
    pub(crate) raised: Option<Error>,
    /// A memory growth was refused by the host's limit during the current top-level call.
    pub(crate) denied: bool,
    /// The host's memory limit, in bytes.
    max_memory: u64,
    /// The memory the host sees (the `memory` export), or null.
    memory: sys::wasm_memory_inst_t,
    /// Deadline and interrupt state.
    pub(crate) watch: Arc<Watch>,
}

/// A [`WasmInstance`] on WAMR.
pub struct WamrInstance {
    /// The state, owned (from `Box::into_raw`); WAMR holds the same pointer as custom data.
    state: NonNull<State>,
    module_inst: sys::wasm_module_inst_t,
    exec_env: sys::wasm_exec_env_t,
    watch: Arc<Watch>,
    /// Keeps the module loaded while the instance exists.
    _loaded: Arc<Loaded>,
    /// Keeps the engine's watchdog running while the instance exists.
    _shared: Arc<Shared>,
}

// SAFETY: the instance owns its WAMR module instance, execution environment and state, and
// uses them from one thread at a time (`&mut self` for every call). WAMR allows that thread
// to change between calls: without hardware bound checks, `wasm_call_function` records the
// calling thread and its native stack bounds at the start of each call, and the thread's WAMR
// environment is set up on first use (`runtime::ensure_thread_env`). The host state is `Send`.
unsafe impl Send for WamrInstance {}

impl fmt::Debug for WamrInstance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WamrInstance").finish_non_exhaustive()
    }
}

/// Frees an instance's WAMR objects and state (on drop, or when instantiation fails halfway).
struct Parts {
    state: NonNull<State>,
    module_inst: sys::wasm_module_inst_t,
    exec_env: sys::wasm_exec_env_t,
}

impl Parts {
    /// # Safety
    /// Each pointer is null or live and owned by the caller, and nothing uses them afterwards.
    unsafe fn free(self) {
        runtime::ensure_thread_env();
        // SAFETY: per the contract: live, owned, unused afterwards. The execution environment
        // goes first, then the instance, then the state WAMR pointed to.
        unsafe {
            if !self.exec_env.is_null() {
                sys::wasm_runtime_destroy_exec_env(self.exec_env);
            }
            if !self.module_inst.is_null() {
                sys::wasm_runtime_deinstantiate(self.module_inst);
            }
            drop(Box::from_raw(self.state.as_ptr()));
        }
    }
}

impl WamrInstance {
    /// Instantiates `loaded` with its own memory, state and execution environment, then runs
    /// its start function, if any, as a top-level call.
    pub(crate) fn new(shared: &Arc<Shared>, loaded: &Arc<Loaded>, host: HostState, limits: &Limits) -> Result<Self> {
        if let Some(reason) = &loaded.link_error {
            return Err(error::engine_msg(format!("cannot instantiate: {reason}")));
        }
        if let Some(memory) = loaded.memory {
            if memory.initial.saturating_mul(PAGE) > limits.max_memory_bytes {
                return Err(error::engine_msg(format!(
                    "cannot instantiate: initial memory of {} pages is over the limit of {} bytes",
                    memory.initial, limits.max_memory_bytes
                )));
            }
            if limits.max_memory_bytes < PAGE {
                return Err(error::engine_msg(format!(
                    "cannot instantiate: a memory limit of {} bytes is below one page, which WAMR cannot express",
                    limits.max_memory_bytes
                )));
            }
        }
        if loaded.table_elements > limits.max_table_elements {
            return Err(error::engine_msg(format!(
                "cannot instantiate: tables of {} elements, over the limit of {}",
                loaded.table_elements, limits.max_table_elements
            )));
        }
        let max_pages = u32::try_from((limits.max_memory_bytes / PAGE).min(65536)).unwrap_or(65536);
        let stack = u32::try_from(limits.max_stack_bytes).unwrap_or(u32::MAX);
        let watch = shared.watchdog.watch(limits.callback_deadline);
        let state = NonNull::from(Box::leak(Box::new(State {
            host,
            table: loaded.table.clone(),
            funcs: vec![std::ptr::null_mut(); loaded.table.len()].into(),
            raised: None,
            denied: false,
            max_memory: limits.max_memory_bytes,
            memory: std::ptr::null_mut(),
            watch: watch.clone(),
        })));
        let mut parts = Parts { state, module_inst: std::ptr::null_mut(), exec_env: std::ptr::null_mut() };
        runtime::ensure_thread_env();
        match instantiate(loaded, &mut parts, stack, max_pages) {
            Ok(()) => {}
            Err(e) => {
                // SAFETY: `parts` holds what `instantiate` made (null for what it did not) and
                // nothing else refers to it: the watch has no target yet.
                unsafe { parts.free() };
                return Err(e);
            }
        }
        let memory = if loaded.memory_exported {
            // SAFETY: `module_inst` is live; its default memory is the module's only memory
            // (multi-memory is refused at validation), at a stable address for its lifetime.
            unsafe { sys::wasm_runtime_get_default_memory(parts.module_inst) }
        } else {
            std::ptr::null_mut()
        };
        // SAFETY: the state is live and not borrowed anywhere (no call has started).
        unsafe { (*state.as_ptr()).memory = memory };
        watch.set_target(Some(Target(parts.module_inst)));
        let mut instance = Self {
            state,
            module_inst: parts.module_inst,
            exec_env: parts.exec_env,
            watch,
            _loaded: loaded.clone(),
            _shared: shared.clone(),
        };
        if loaded.start {
            let start = loaded
                .table
                .unlisted()
                .filter(|&start| resolve(instance.state.as_ptr(), instance.module_inst, start).is_some())
                .ok_or_else(|| error::engine_msg("cannot instantiate: the start function was not found"))?;
            instance.call(start, &[])?;
        }
        Ok(instance)
    }

    /// The state, for one step outside any call.
    fn state_mut(&mut self) -> &mut State {
        // SAFETY: the state is live for the instance's lifetime, and `&mut self` means no
        // call of this instance is running, so nothing else borrows it.
        unsafe { &mut *self.state.as_ptr() }
    }
}

/// Instantiates into `parts`: the module instance (with the state as custom data), then the
/// execution environment, whose auxiliary stack is then made whole again.
fn instantiate(loaded: &Loaded, parts: &mut Parts, stack: u32, max_pages: u32) -> Result<()> {
    let mut args: *mut sys::InstantiationArgs2 = std::ptr::null_mut();
    // SAFETY: `args` is a valid out-pointer.
    if !unsafe { sys::wasm_runtime_instantiation_args_create(&mut args) } || args.is_null() {
        return Err(error::engine_msg("cannot instantiate: out of memory"));
    }
    let mut message: [std::ffi::c_char; 256] = [0; 256];
    // SAFETY: `args` is live until destroyed below; the module is live (the caller holds it);
    // the custom data is the state, which outlives the instance; the error buffer is writable
    // for its length.
    parts.module_inst = unsafe {
        sys::wasm_runtime_instantiation_args_set_default_stack_size(args, stack);
        sys::wasm_runtime_instantiation_args_set_host_managed_heap_size(args, 0);
        sys::wasm_runtime_instantiation_args_set_max_memory_pages(args, max_pages);
        sys::wasm_runtime_instantiation_args_set_custom_data(args, parts.state.as_ptr().cast());
        let inst = sys::wasm_runtime_instantiate_ex2(loaded.raw, args, message.as_mut_ptr(), message.len() as u32);
        sys::wasm_runtime_instantiation_args_destroy(args);
        inst
    };
    if parts.module_inst.is_null() {
        // SAFETY: WAMR wrote a NUL-terminated message into the zeroed buffer (truncated to fit).
        let text = unsafe { std::ffi::CStr::from_ptr(message.as_ptr()) }.to_string_lossy().into_owned();
        return Err(error::engine_msg(format!("cannot instantiate: {text}")));
    }
    // SAFETY: `module_inst` is live; WAMR allocates an interpreter stack of `stack` bytes.
    parts.exec_env = unsafe { sys::wasm_runtime_create_exec_env(parts.module_inst, stack) };
    if parts.exec_env.is_null() {
        return Err(error::engine_msg("cannot instantiate: cannot create the execution environment"));
    }
    let (mut top, mut size) = (0u64, 0u32);
    // SAFETY: `exec_env` is live and belongs to `module_inst`; the out-pointers are valid.
    // `get` reads the module's whole auxiliary stack (from its load-time layout), `set` makes
    // it this environment's again and resets the stack pointer global to its top, where it
    // already is (no guest code has run). See the crate docs.
    unsafe {
        if runtime::wasm_exec_env_get_aux_stack(parts.exec_env, &mut top, &mut size)
            && !runtime::wasm_exec_env_set_aux_stack(parts.exec_env, top, size)
        {
            return Err(error::engine_msg("cannot instantiate: cannot set up the auxiliary stack"));
        }
    }
    Ok(())
}

impl Drop for WamrInstance {
    fn drop(&mut self) {
        // No termination may target the instance once it starts going away.
        self.watch.set_target(None);
        let parts = Parts { state: self.state, module_inst: self.module_inst, exec_env: self.exec_env };
        // SAFETY: the instance owns all three, no call is running (`&mut self`), and the watch
        // no longer refers to them.
        unsafe { parts.free() };
    }
}

impl WasmInstance for WamrInstance {
    fn engine(&self) -> &'static str {
        ENGINE_NAME
    }

    fn state(&mut self) -> &mut HostState {
        &mut self.state_mut().host
    }

    fn lookup(&mut self, name: &str) -> Option<FuncRef> {
        self.state_mut().table.find(name)
    }

    fn call(&mut self, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
        runtime::ensure_thread_env();
        let state = self.state_mut();
        state.raised = None;
        state.denied = false;
        self.watch.start();
        let result = call(self.state.as_ptr(), self.exec_env, self.module_inst, func, args);
        let stopped = self.watch.finish();
        if result.is_err() || stopped.is_some() {
            // The exception (and the termination flag) would fail the next call.
            // SAFETY: `module_inst` is live; no call is running and no termination can be
            // requested any more (`finish`), so the clearing is final.
            unsafe { sys::wasm_runtime_clear_exception(self.module_inst) };
        }
        result
    }

    fn memory_size(&mut self) -> u64 {
        memory(self.state_mut()).map_or(0, |(_, len)| len as u64)
    }

    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        read(self.state_mut(), ptr, out)
    }

    fn global(&mut self, name: &str, _ty: wasmux_abi::ValType) -> Option<u64> {
        let name = std::ffi::CString::new(name).ok()?;
        let mut global = sys::wasm_global_inst_t { kind: 0, is_mutable: false, global_data: std::ptr::null_mut() };
        // SAFETY: `module_inst` is live and no call is running (`&mut self`); WAMR fills
        // `global` with the kind of the export and a pointer to its value inside the instance.
        let found = unsafe { sys::wasm_runtime_get_export_global_inst(self.module_inst, name.as_ptr(), &mut global) };
        if !found || global.global_data.is_null() {
            return None;
        }
        let data = global.global_data.cast_const();
        // SAFETY: `global_data` points at the global's value, of the type `kind` says, inside the
        // live instance; WAMR does not align globals, hence the unaligned reads.
        unsafe {
            match u32::from(global.kind) {
                sys::WASM_I32 | sys::WASM_F32 => Some(u64::from(data.cast::<u32>().read_unaligned())),
                sys::WASM_I64 | sys::WASM_F64 => Some(data.cast::<u64>().read_unaligned()),
                _ => None,
            }
        }
    }

    /// The returned handle terminates the running call at once
    /// ([`TrapKind::Deadline`](wasmux_abi::TrapKind)): WAMR notices at the next branch or host
    /// call return. A request made while no call runs does nothing.
    fn interrupt_handle(&self) -> Arc<dyn Fn() + Send + Sync> {
        let watch = self.watch.clone();
        Arc::new(move || watch.interrupt())
    }
}

/// Linear memory as `(base, length)`: the `memory` export, wherever WAMR has it now (growth
/// may move it). `None` when the module exports no memory.
pub(crate) fn memory(state: &State) -> Option<(*mut u8, usize)> {
    if state.memory.is_null() {
        return None;
    }
    // SAFETY: `memory` belongs to the live instance; these read its current base and size.
    let (base, pages, page) = unsafe {
        (
            sys::wasm_memory_get_base_address(state.memory).cast::<u8>(),
            sys::wasm_memory_get_cur_page_count(state.memory),
            sys::wasm_memory_get_bytes_per_page(state.memory),
        )
    };
    let len = usize::try_from(pages.saturating_mul(page)).ok()?;
    if base.is_null() { Some((NonNull::dangling().as_ptr(), 0)) } else { Some((base, len)) }
}

/// The byte range `[ptr, ptr + len)` inside linear memory, as a start offset.
fn in_bounds(memory_len: usize, ptr: u64, len: usize) -> Result<usize, OutOfBounds> {
    let start = usize::try_from(ptr).map_err(|_| OutOfBounds)?;
    let end = start.checked_add(len).ok_or(OutOfBounds)?;
    if end > memory_len { Err(OutOfBounds) } else { Ok(start) }
}

/// Reads guest memory.
pub(crate) fn read(state: &State, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
    let (base, len) = memory(state).ok_or(OutOfBounds)?;
    let start = in_bounds(len, ptr, out.len())?;
    // SAFETY: `[start, start + out.len())` is inside linear memory (checked), which no one
    // else touches while the instance is used from this thread; `out` is host memory, so the
    // ranges do not overlap.
    unsafe { std::ptr::copy_nonoverlapping(base.add(start), out.as_mut_ptr(), out.len()) };
    Ok(())
}

/// Writes guest memory.
pub(crate) fn write(state: &State, ptr: u64, data: &[u8]) -> Result<(), OutOfBounds> {
    let (base, len) = memory(state).ok_or(OutOfBounds)?;
    let start = in_bounds(len, ptr, data.len())?;
    // SAFETY: as in `read`, the other way round.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), base.add(start), data.len()) };
    Ok(())
}

/// This instance's handle for `func`, looked up by its WAMR name on its first call. `None`
/// when `func` is not in the table or WAMR does not know it.
///
/// `state` is the instance's state and `module_inst` its WAMR instance; no reference to the
/// state may be live across this call.
fn resolve(
    state: *mut State,
    module_inst: sys::wasm_module_inst_t,
    func: FuncRef,
) -> Option<sys::wasm_function_inst_t> {
    let i = func.0 as usize;
    let name = {
        // SAFETY: the state is live (the instance is); this shared borrow ends before the
        // mutable one below, and WAMR's lookup runs no guest code.
        let st = unsafe { &*state };
        let f = *st.funcs.get(i)?;
        if !f.is_null() {
            return Some(f);
        }
        st.table.get(func)?.extra.as_ptr()
    };
    // SAFETY: `module_inst` is live; `name` is NUL-terminated and lives in the module's table,
    // which the state holds.
    let f = unsafe { sys::wasm_runtime_lookup_function(module_inst, name) };
    if f.is_null() {
        return None;
    }
    // SAFETY: as above; no other reference to the state is live.
    unsafe { (*state).funcs[i] = f };
    Some(f)
}

/// Calls a resolved export with raw arguments, on `exec_env`; used for top-level and
/// re-entrant calls alike (neither touches the deadline here: a re-entrant call runs under the
/// outer call's). A trap leaving this call gets the export's name appended to its backtrace.
///
/// `state` is the instance's state; no reference to it may be live across this call.
pub(crate) fn call(
    state: *mut State,
    exec_env: sys::wasm_exec_env_t,
    module_inst: sys::wasm_module_inst_t,
    func: FuncRef,
    args: &[u64],
) -> Result<Option<u64>> {
    let Some(f) = resolve(state, module_inst, func) else {
        return Err(error::engine_msg(format!("unknown function reference {}", func.0)));
    };
    let mut cells = [0u32; MAX_CELLS];
    let (n_cells, result) = {
        // SAFETY: the state is live (the instance is); this shared borrow ends before WAMR
        // runs guest code, which may re-enter the host and borrow the state mutably.
        let st = unsafe { &*state };
        let Some(export) = st.table.get(func) else {
            return Err(error::engine_msg(format!("unknown function reference {}", func.0)));
        };
        if args.len() != export.params.len() || args.len() > MAX_VALUES || export.results.len() > MAX_VALUES {
            return Err(error::engine_msg(format!(
                "`{}` takes {} arguments and returns {} results, called with {}",
                export.name,
                export.params.len(),
                export.results.len(),
                args.len()
            )));
        }
        debug_assert!(cell_count(&export.params) <= MAX_CELLS && cell_count(&export.results) <= MAX_CELLS);
        let n = to_cells(args, &export.params, &mut cells);
        (n, export.results.first().copied())
    };
    // SAFETY: `exec_env` and `f` belong to the live instance; `cells` holds the arguments as
    // the function's parameter cells (count checked against its type) and has room for its
    // result cells; WAMR checks the count against the function's own type again.
    let ok = unsafe { sys::wasm_runtime_call_wasm(exec_env, f, n_cells as u32, cells.as_mut_ptr()) };
    if ok {
        return Ok(result.map(|ty| from_cells(&cells, ty)));
    }
    // SAFETY: the call is over: nothing else borrows the state.
    let st = unsafe { &mut *state };
    let mut e = error::from_call(st, module_inst);
    if let (Error::Trap(trap), Some(export)) = (&mut e, st.table.get(func)) {
        trap.backtrace.push(export.name.to_string());
    }
    Err(e)
}

/// WAMR's callback for every failed `memory.grow` (process-wide): marks the call of the
/// instance when the host's limit refused the growth.
pub(crate) unsafe extern "C" fn growth_failed(
    inc_page_count: u32,
    current_memory_size: u64,
    _memory_index: u32,
    _reason: sys::enlarge_memory_error_reason_t,
    instance: sys::wasm_module_inst_t,
    _exec_env: sys::wasm_exec_env_t,
    _user_data: *mut std::ffi::c_void,
) {
    if instance.is_null() {
        return;
    }
    // SAFETY: WAMR passes the live instance whose growth failed.
    let state = unsafe { sys::wasm_runtime_get_custom_data(instance) }.cast::<State>();
    if state.is_null() {
        return;
    }
    let requested = current_memory_size.saturating_add(u64::from(inc_page_count).saturating_mul(PAGE));
    // SAFETY: every instance this crate makes has its live state as custom data (custom data
    // of instances made elsewhere in the process would not be a `State`: this crate is the
    // only user of WAMR in wasmux). The guest is running `memory.grow`, so no host code
    // borrows the state; these are two field accesses through the raw pointer.
    unsafe {
        if requested > (*state).max_memory {
            (*state).denied = true;
        }
    }
}
