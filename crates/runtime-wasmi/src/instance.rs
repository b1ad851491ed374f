//! A running instance: its store, resolved exports, deadlines, limits and memory access.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmi::{AsContext, AsContextMut, Func, Memory, ResourceLimiter, ResumableCall, Store, StoreContextMut, Val};
use wasmux_abi::deadline::CallDeadline;
use wasmux_abi::{Error, FuncRef, HostState, Limits, OutOfBounds, Result, WasmInstance};

use crate::error;
use crate::imports::{raw_to_val, val_to_raw};
use crate::module::ExportTable;
use crate::typed::TypedExport;
use crate::{ENGINE_NAME, START_FUEL_PER_MS, Shared};

/// The most parameters or results an export may have to be callable through [`FuncRef`].
const MAX_VALUES: usize = 16;

/// What each wasmi store carries.
pub(crate) struct StoreData {
    /// The ABI state of the instance.
    pub(crate) host: HostState,
    /// The module's function exports; `FuncRef.0` indexes it.
    table: Arc<ExportTable>,
    /// This instance's handle for each export of `table`, made on its first call.
    funcs: Box<[Slot]>,
    /// The instance, once made.
    instance: Option<wasmi::Instance>,
    /// The `memory` export, if any.
    pub(crate) memory: Option<Memory>,
    /// Memory and table growth policy, and what it refused.
    pub(crate) limiter: Limiter,
    /// Deadline bookkeeping of the current top-level call, and the interrupt flag.
    pub(crate) clock: CallDeadline,
    /// Fuel per slice.
    slice: u64,
    /// The error a host function raised, parked here while wasmi unwinds.
    pub(crate) raised: Option<Error>,
}

/// An instance's handles for one function export, made on its first call.
#[derive(Default)]
struct Slot {
    func: Option<Func>,
    /// A typed handle for the common all-`i32` signatures.
    typed: Option<TypedExport>,
}

/// Gives a paused call its next slice of fuel (at least `required`), unless the embedder
/// interrupted it or its deadline passed: then it stops with
/// [`TrapKind::Deadline`](wasmux_abi::TrapKind).
pub(crate) fn refuel(cx: &mut StoreContextMut<'_, StoreData>, required: u64) -> Result<()> {
    let data = cx.data();
    data.clock.check().map_err(error::stopped)?;
    let grant = data.slice.max(required);
    let left = cx.get_fuel().unwrap_or(0);
    cx.set_fuel(left.saturating_add(grant)).map_err(|e| error::engine(&e))
}

/// The fuel a module's `start` function gets: it runs inside instantiation, which cannot be
/// paused, so it gets [`START_FUEL_PER_MS`] per millisecond of deadline in one piece.
fn start_fuel(deadline: Option<Duration>) -> u64 {
    deadline.map_or(u64::MAX, |d| {
        let fuel = d.as_nanos().saturating_mul(u128::from(START_FUEL_PER_MS)) / 1_000_000;
        u64::try_from(fuel).unwrap_or(u64::MAX).max(1)
    })
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
    /// Elements counted by the last table growth allowed, taken back if it fails after all.
    table_pending: u64,
    /// A `table.grow` ran out of fuel and was made to trap (see the crate docs).
    pub(crate) table_grow_out_of_fuel: bool,
}

impl Limiter {
    fn new(limits: &Limits) -> Self {
        Self {
            max_memory: usize::try_from(limits.max_memory_bytes).unwrap_or(usize::MAX),
            denied: false,
            max_table_elements: limits.max_table_elements,
            table_elements: 0,
            table_pending: 0,
            table_grow_out_of_fuel: false,
        }
    }

    /// Starts a top-level call.
    fn start(&mut self) {
        self.denied = false;
        self.table_grow_out_of_fuel = false;
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, wasmi_core::LimiterError> {
        if desired > self.max_memory {
            self.denied = true;
            return Ok(false);
        }
        Ok(maximum.is_none_or(|max| desired <= max))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, wasmi_core::LimiterError> {
        let delta = desired.saturating_sub(current) as u64;
        let total = self.table_elements.saturating_add(delta);
        if total > self.max_table_elements || maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        self.table_elements = total;
        self.table_pending = delta;
        Ok(true)
    }

    /// wasmi allowed a growth and then could not do it (out of fuel or host memory): the
    /// elements are taken back. Running out of fuel would pause the call in a state wasmi
    /// 2.0.0 cannot resume correctly (it replays guest code), so that becomes a trap.
    fn table_grow_failed(&mut self, error: &wasmi::errors::TableError) -> Result<(), wasmi_core::LimiterError> {
        self.table_elements = self.table_elements.saturating_sub(std::mem::take(&mut self.table_pending));
        if matches!(error, wasmi::errors::TableError::OutOfFuel { .. }) {
            self.table_grow_out_of_fuel = true;
            return Err(wasmi_core::LimiterError::ResourceLimiterDeniedAllocation);
        }
        Ok(())
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

/// A [`WasmInstance`] on wasmi.
pub struct WasmiInstance {
    store: Store<StoreData>,
    interrupt: Arc<AtomicBool>,
}

impl std::fmt::Debug for WasmiInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmiInstance").finish_non_exhaustive()
    }
}

impl WasmiInstance {
    /// Creates the store and instantiates `module` in it.
    pub(crate) fn new(
        module: &wasmi::Module,
        table: &Arc<ExportTable>,
        host: HostState,
        limits: &Limits,
        shared: &Shared,
    ) -> Result<Self> {
        let interrupt = Arc::new(AtomicBool::new(false));
        let data = StoreData {
            host,
            table: table.clone(),
            funcs: (0..table.len()).map(|_| Slot::default()).collect(),
            instance: None,
            memory: None,
            limiter: Limiter::new(limits),
            clock: CallDeadline::new(
                shared.clock.clone(),
                limits.callback_deadline,
                shared.clock.tick(),
                interrupt.clone(),
            ),
            slice: shared.config.fuel_slice,
            raised: None,
        };
        let mut store = Store::new(&shared.engine, data);
        store.limiter(|data| &mut data.limiter);
        // Start-up (a `start` function) runs under the callback deadline too, in one piece.
        store.data_mut().clock.start();
        store.set_fuel(start_fuel(limits.callback_deadline)).map_err(|e| error::engine(&e))?;
        let instance = shared
            .linker
            .instantiate_and_start(&mut store, module)
            .map_err(|e| error::from_instantiate(&e, store.data_mut()))?;
        let memory = instance.get_memory(&store, "memory");
        let data = store.data_mut();
        data.instance = Some(instance);
        data.memory = memory;
        Ok(Self { store, interrupt })
    }
}

impl WasmInstance for WasmiInstance {
    fn engine(&self) -> &'static str {
        ENGINE_NAME
    }

    fn state(&mut self) -> &mut HostState {
        &mut self.store.data_mut().host
    }

    fn lookup(&mut self, name: &str) -> Option<FuncRef> {
        self.store.data().table.find(name)
    }

    fn call(&mut self, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
        let data = self.store.data_mut();
        data.limiter.start();
        data.raised = None;
        data.clock.start();
        let slice = data.slice;
        self.store.set_fuel(slice).map_err(|e| error::engine(&e))?;
        call(&mut self.store, func, args)
    }

    fn memory_size(&mut self) -> u64 {
        self.store.data().memory.map_or(0, |m| m.data_size(&self.store) as u64)
    }

    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        read(&self.store, ptr, out)
    }

    fn global(&mut self, name: &str, _ty: wasmux_abi::ValType) -> Option<u64> {
        let instance = self.store.data().instance?;
        match instance.get_global(&self.store, name)?.get(&self.store) {
            Val::I32(v) => Some(u64::from(v as u32)),
            Val::I64(v) => Some(v as u64),
            Val::F32(v) => Some(u64::from(v.to_bits())),
            Val::F64(v) => Some(v.to_bits()),
            _ => None,
        }
    }

    /// The returned handle sets a flag; the running call traps with
    /// [`TrapKind::Deadline`](wasmux_abi::TrapKind) at its next host call or when its current
    /// fuel slice ([`WasmiConfig::fuel_slice`](crate::WasmiConfig::fuel_slice)) runs out,
    /// whichever comes first. A request made while no call runs is dropped when the next
    /// top-level call starts.
    fn interrupt_handle(&self) -> Arc<dyn Fn() + Send + Sync> {
        let flag = self.interrupt.clone();
        Arc::new(move || flag.store(true, Ordering::Release))
    }
}

/// Reads guest memory through any store context.
pub(crate) fn read(cx: impl AsContext<Data = StoreData>, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
    let memory = cx.as_context().data().memory.ok_or(OutOfBounds)?;
    let offset = usize::try_from(ptr).map_err(|_| OutOfBounds)?;
    memory.read(&cx, offset, out).map_err(|_| OutOfBounds)
}

/// Calls a resolved export with raw arguments; used for top-level and re-entrant calls alike
/// (neither touches the deadline here: a re-entrant call runs under the outer call's). A trap
/// leaving this call gets the export's name appended to its backtrace.
pub(crate) fn call(mut cx: impl AsContextMut<Data = StoreData>, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
    let mut store = cx.as_context_mut();
    let result = call_inner(&mut store, func, args);
    result.map_err(|mut e| {
        if let (Error::Trap(trap), Some(export)) = (&mut e, store.data().table.get(func)) {
            trap.backtrace.push(export.name.to_string());
        }
        e
    })
}

/// Makes this instance's handles for `func` (once: on its first call).
fn resolve(store: &mut StoreContextMut<'_, StoreData>, func: FuncRef) -> Result<()> {
    let unknown = || error::engine_msg(format!("unknown function reference {}", func.0));
    let data = store.data();
    let export = data.table.get(func).ok_or_else(unknown)?;
    let instance = data.instance.ok_or_else(unknown)?;
    // wasmi looks exports up by name only (a map lookup, no allocation).
    let f = instance.get_func(&*store, &export.name).ok_or_else(unknown)?;
    let typed = TypedExport::new(&*store, f, &export.params, &export.results);
    *store.data_mut().funcs.get_mut(func.0 as usize).ok_or_else(unknown)? = Slot { func: Some(f), typed };
    Ok(())
}

fn call_inner(store: &mut StoreContextMut<'_, StoreData>, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
    if store.data().funcs.get(func.0 as usize).is_none_or(|h| h.func.is_none()) {
        resolve(store, func)?;
    }
    let data = store.data();
    let (Some(export), Some(handle)) = (data.table.get(func), data.funcs.get(func.0 as usize)) else {
        return Err(error::engine_msg(format!("unknown function reference {}", func.0)));
    };
    // Fast path: a typed handle (also for re-entrant calls such as the allocator).
    if export.params.len() == args.len()
        && let Some(typed) = handle.typed.clone()
    {
        return typed.call(store, args);
    }
    let Some(f) = handle.func else {
        return Err(error::engine_msg(format!("unknown function reference {}", func.0)));
    };
    const ZERO: Val = Val::I32(0);
    let mut params = [ZERO; MAX_VALUES];
    let mut results = [ZERO; MAX_VALUES];
    let (n_params, n_results, result_ty) = {
        let Some(export) = store.data().table.get(func) else {
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
    let mut step = f.call_resumable(&mut *store, &params[..n_params], &mut results[..n_results]);
    loop {
        step = match step {
            Ok(ResumableCall::Finished) => return Ok(result_ty.map(|_| val_to_raw(&results[0]))),
            Ok(ResumableCall::OutOfFuel(paused)) => {
                refuel(store, paused.required_fuel())?;
                paused.resume(&mut *store, &mut results[..n_results])
            }
            Ok(ResumableCall::HostTrap(paused)) => return Err(error::from_call(paused.host_error(), store.data_mut())),
            Err(e) => return Err(error::from_call(&e, store.data_mut())),
        };
    }
}
