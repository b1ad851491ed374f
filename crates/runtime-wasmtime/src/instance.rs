//! A running instance: its store, resolved exports, deadlines and memory access.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use wasmtime::{AsContext, AsContextMut, Extern, Func, Memory, ResourceLimiter, Store, UpdateDeadline, Val};
use wasmux_abi::deadline::CallDeadline;
use wasmux_abi::{FuncRef, HostState, Limits, OutOfBounds, Result, WasmInstance};

use crate::error;
use crate::imports::{raw_to_val, val_to_raw};
use crate::module::ExportTable;
use crate::typed::TypedExport;
use crate::{ENGINE_NAME, INTERRUPT_CHECK, Shared};

/// The most parameters or results an export may have to be callable through [`FuncRef`].
const MAX_VALUES: usize = 16;

/// What each wasmtime store carries.
pub(crate) struct StoreData {
    /// The ABI state of the instance.
    pub(crate) host: HostState,
    /// The module's function exports; `FuncRef.0` indexes it.
    table: Arc<ExportTable>,
    /// This instance's handle for each export of `table`, made on its first call.
    funcs: Box<[Slot]>,
    /// The instance, once made.
    instance: Option<wasmtime::Instance>,
    /// The `memory` export, if any.
    pub(crate) memory: Option<Memory>,
    /// Memory growth policy and what it refused.
    pub(crate) limiter: Limiter,
    /// Deadline bookkeeping of the current top-level call.
    pub(crate) clock: CallDeadline,
}

/// An instance's handles for one function export, made on its first call.
#[derive(Default)]
struct Slot {
    func: Option<Func>,
    /// A typed handle for the common all-`i32` signatures.
    typed: Option<TypedExport>,
}

/// The epoch callback: trap when interrupted or past the deadline, otherwise re-arm for the
/// next check (the clock thread advances the epoch by one per tick).
///
/// The first check of a call comes only after [`CallDeadline::next_check`] ticks (up to
/// [`INTERRUPT_CHECK`](crate::INTERRUPT_CHECK)), not at the clock's next wake: a host callback
/// runs on the guest's stack, and a short call seldom needs one at all.
fn on_epoch(clock: &CallDeadline) -> wasmtime::Result<UpdateDeadline> {
    clock.check().map_err(wasmtime::Error::new)?;
    Ok(UpdateDeadline::Continue(clock.next_check()))
}

/// Refuses memory growth beyond the configured limit (and remembers that it did), and table
/// elements beyond the configured total.
pub(crate) struct Limiter {
    max_memory: usize,
    /// Growth was refused during the current top-level call.
    pub(crate) denied: bool,
    max_table_elements: u64,
    /// Table elements over all tables (initial sizes and growth).
    table_elements: u64,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            self.denied = true;
            return Ok(false);
        }
        Ok(maximum.is_none_or(|max| desired <= max))
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let total = self.table_elements.saturating_add(desired.saturating_sub(current) as u64);
        if total > self.max_table_elements || maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        self.table_elements = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        16
    }

    fn memories(&self) -> usize {
        1
    }
}

/// Native stack a top-level call needs besides the wasm stack limit: wasmtime's entry and
/// the host functions a guest calls from its deepest frame (debug builds included).
const HOST_STACK: usize = 512 << 10;

/// A [`WasmInstance`] on wasmtime.
pub struct WasmtimeInstance {
    store: Store<StoreData>,
    /// The native stack a top-level call needs: the engine's wasm stack limit and
    /// [`HOST_STACK`].
    stack_needed: usize,
}

/// Runs `f` (a top-level call into the guest) with at least `needed` bytes of native stack
/// left: on this thread's stack when it has them, else on a fresh stack segment.
///
/// wasmtime stops a guest at its own stack limit (`max_wasm_stack`, counted from where the
/// call entered), and only there: on a thread whose stack is smaller than that limit, a
/// recursing guest would run into the thread's guard page, an overflow wasmtime does not catch,
/// and the process would abort.
fn with_stack<R>(needed: usize, f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(needed, needed + HOST_STACK, f)
}

impl std::fmt::Debug for WasmtimeInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmtimeInstance").finish_non_exhaustive()
    }
}

impl WasmtimeInstance {
    /// Creates the store and instantiates `pre` in it.
    pub(crate) fn new(
        pre: &wasmtime::InstancePre<StoreData>,
        table: &Arc<ExportTable>,
        host: HostState,
        limits: &Limits,
        shared: &Shared,
    ) -> Result<Self> {
        let interrupt = Arc::new(AtomicBool::new(false));
        let data = StoreData {
            host,
            table: table.clone(),
            funcs: (0..table.funcs.len()).map(|_| Slot::default()).collect(),
            instance: None,
            memory: None,
            limiter: Limiter {
                max_memory: usize::try_from(limits.max_memory_bytes).unwrap_or(usize::MAX),
                denied: false,
                max_table_elements: limits.max_table_elements,
                table_elements: 0,
            },
            clock: CallDeadline::new(shared.clock.clone(), limits.callback_deadline, INTERRUPT_CHECK, interrupt),
        };
        let mut store = Store::new(pre.module().engine(), data);
        store.limiter(|data| &mut data.limiter);
        store.epoch_deadline_callback(|cx| on_epoch(&cx.data().clock));
        // Start-up (data segments, a `start` function) runs under the callback deadline too.
        store.data_mut().clock.start();
        store.set_epoch_deadline(store.data().clock.next_check());
        let stack_needed = shared.config.max_stack_bytes.saturating_add(HOST_STACK);
        let instance = with_stack(stack_needed, || pre.instantiate(&mut store)).map_err(|e| {
            let denied = store.data().limiter.denied;
            error::from_instantiate(e, denied)
        })?;
        let memory = table.memory.and_then(|m| instance.get_module_export(&mut store, &m)?.into_memory());
        let data = store.data_mut();
        data.instance = Some(instance);
        data.memory = memory;
        Ok(Self { store, stack_needed })
    }
}

impl WasmInstance for WasmtimeInstance {
    fn engine(&self) -> &'static str {
        ENGINE_NAME
    }

    fn state(&mut self) -> &mut HostState {
        &mut self.store.data_mut().host
    }

    fn lookup(&mut self, name: &str) -> Option<FuncRef> {
        self.store.data().table.funcs.find(name)
    }

    fn call(&mut self, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
        let data = self.store.data_mut();
        data.limiter.denied = false;
        data.clock.start();
        let check = data.clock.next_check();
        self.store.set_epoch_deadline(check);
        with_stack(self.stack_needed, || call(&mut self.store, func, args))
    }

    fn memory_size(&mut self) -> u64 {
        self.store.data().memory.map_or(0, |m| m.data_size(&self.store) as u64)
    }

    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        read(&self.store, ptr, out)
    }

    fn global(&mut self, name: &str, _ty: wasmux_abi::ValType) -> Option<u64> {
        let instance = self.store.data().instance?;
        let value = instance.get_global(&mut self.store, name)?.get(&mut self.store);
        match value {
            Val::I32(v) => Some(u64::from(v as u32)),
            Val::I64(v) => Some(v as u64),
            Val::F32(bits) => Some(u64::from(bits)),
            Val::F64(bits) => Some(bits),
            _ => None,
        }
    }

    fn interrupt_handle(&self) -> Arc<dyn Fn() + Send + Sync> {
        // Seen at the next epoch tick: the handle wakes the clock if it parked.
        Arc::new(self.store.data().clock.interrupter())
    }
}

/// Reads guest memory through any store context.
pub(crate) fn read(cx: impl AsContext<Data = StoreData>, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
    let memory = cx.as_context().data().memory.ok_or(OutOfBounds)?;
    let offset = usize::try_from(ptr).map_err(|_| OutOfBounds)?;
    memory.read(&cx, offset, out).map_err(|_| OutOfBounds)
}

/// Makes this instance's handles for `func` (once: on its first call).
fn resolve(store: &mut wasmtime::StoreContextMut<'_, StoreData>, func: FuncRef) -> Result<Func> {
    let unknown = || error::engine_msg(format!("unknown function reference {}", func.0));
    let table = store.data().table.clone();
    let export = table.funcs.get(func).ok_or_else(unknown)?;
    let instance = store.data().instance.ok_or_else(unknown)?;
    let f = instance.get_module_export(&mut *store, &export.extra).and_then(Extern::into_func).ok_or_else(unknown)?;
    let typed = TypedExport::new(&*store, f, &export.params, &export.results);
    *store.data_mut().funcs.get_mut(func.0 as usize).ok_or_else(unknown)? = Slot { func: Some(f), typed };
    Ok(f)
}

/// Calls a resolved export with raw arguments; used for top-level and re-entrant calls alike
/// (neither touches the deadline here).
pub(crate) fn call(mut cx: impl AsContextMut<Data = StoreData>, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
    let mut store = cx.as_context_mut();
    let slot = func.0 as usize;
    let Some(handle) = store.data().funcs.get(slot) else {
        return Err(error::engine_msg(format!("unknown function reference {}", func.0)));
    };
    let existing = handle.func;
    let f = match existing {
        Some(f) => f,
        None => resolve(&mut store, func)?,
    };
    // Fast path: a typed handle (also for re-entrant calls such as the allocator). The handle
    // is moved out for the call and put back after it: cloning it costs more than the call
    // itself. A recursive re-entry of the same export finds it absent and takes the dynamic
    // path below.
    let data = store.data_mut();
    if data.table.funcs.get(func).is_some_and(|e| e.params.len() == args.len())
        && let Some(typed) = data.funcs[slot].typed.take()
    {
        let r = typed.call(&mut store, args);
        store.data_mut().funcs[slot].typed = Some(typed);
        return r.map_err(|e| {
            let denied = store.data().limiter.denied;
            error::from_call(e, denied)
        });
    }
    let mut params = [Val::I32(0); MAX_VALUES];
    let mut results = [Val::I32(0); MAX_VALUES];
    let (n_params, n_results, result_ty) = {
        let Some(export) = store.data().table.funcs.get(func) else {
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
        for ((slot, &raw), &ty) in params.iter_mut().zip(args).zip(export.params.iter()) {
            *slot = raw_to_val(raw, ty);
        }
        (args.len(), export.results.len(), export.results.first().copied())
    };
    match f.call(&mut store, &params[..n_params], &mut results[..n_results]) {
        Ok(()) => Ok(result_ty.map(|_| val_to_raw(&results[0]))),
        Err(e) => {
            let denied = store.data().limiter.denied;
            Err(error::from_call(e, denied))
        }
    }
}
