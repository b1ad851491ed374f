//! A running instance: its store, resolved exports, fuel budget and memory access.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmi::{AsContext, AsContextMut, Func, Memory, ResourceLimiter, ResumableCall, Store, StoreContextMut, Val};
use wasmux_abi::{Error, FuncRef, HostState, Limits, OutOfBounds, Result, ValType, WasmInstance};

use crate::error::{self, Stopped};
use crate::imports::{from_wasmi, raw_to_val, val_to_raw};
use crate::typed::TypedExport;
use crate::{ENGINE_NAME, INTERRUPT_CHECK, Shared};

/// The most parameters or results an export may have to be callable through [`FuncRef`].
const MAX_VALUES: usize = 16;

/// What each wasmi store carries.
pub(crate) struct StoreData {
    /// The ABI state of the instance.
    pub(crate) host: HostState,
    /// Exports resolved by [`WasmInstance::lookup`]; `FuncRef.0` indexes this table.
    pub(crate) funcs: Vec<Export>,
    /// The `memory` export, if any.
    pub(crate) memory: Option<Memory>,
    /// Memory growth policy and what it refused.
    pub(crate) limiter: Limiter,
    /// Fuel bookkeeping of the current top-level call and the interrupt flag.
    pub(crate) budget: Budget,
    /// The error a host function raised, parked here while wasmi unwinds.
    pub(crate) raised: Option<Error>,
}

/// A resolved function export.
pub(crate) struct Export {
    name: Box<str>,
    func: Func,
    params: Box<[ValType]>,
    results: Box<[ValType]>,
    /// A typed handle for the common all-`i32` signatures.
    typed: Option<TypedExport>,
}

/// The fuel budget of the running top-level call, handed to the store one slice at a time.
pub(crate) struct Budget {
    /// Fuel for one top-level call (`u64::MAX` without a deadline).
    per_call: u64,
    /// The deadline as configured (for messages).
    deadline: Option<Duration>,
    /// [`INTERRUPT_CHECK`] in fuel: the most the store holds at once.
    slice: u64,
    /// Fuel of the current call not yet handed to the store.
    reserve: u64,
    interrupt: Arc<AtomicBool>,
}

impl Budget {
    /// Starts a top-level call: a fresh budget, and interrupt requests made before the call
    /// are dropped (the handle stops the running call only). Returns the first slice.
    fn start(&mut self) -> u64 {
        self.interrupt.store(false, Ordering::Release);
        self.reserve = self.per_call;
        let first = self.slice.min(self.reserve);
        self.reserve -= first;
        first
    }

    /// Whether the embedder asked to stop the running call.
    pub(crate) fn interrupted(&self) -> bool {
        self.interrupt.load(Ordering::Acquire)
    }

    /// The next slice of fuel, at least `required`, or why the call must stop instead.
    fn refill(&mut self, required: u64) -> Result<u64, Stopped> {
        if self.interrupted() {
            return Err(Stopped::Interrupted);
        }
        if self.reserve == 0 || self.reserve < required {
            return Err(Stopped::Deadline(self.deadline.unwrap_or(Duration::MAX)));
        }
        let grant = self.slice.max(required).min(self.reserve);
        self.reserve -= grant;
        Ok(grant)
    }
}

/// Refuels a call that ran out of fuel, or stops it with [`TrapKind::Deadline`](wasmux_abi::TrapKind).
pub(crate) fn refuel(cx: &mut StoreContextMut<'_, StoreData>, required: u64) -> Result<()> {
    let grant = cx.data_mut().budget.refill(required).map_err(error::stopped)?;
    let left = cx.get_fuel().unwrap_or(0);
    cx.set_fuel(left.saturating_add(grant)).map_err(|e| error::engine(&e))
}

/// Refuses memory growth beyond the configured limit and remembers that it did.
pub(crate) struct Limiter {
    max_memory: usize,
    /// Growth was refused during the current top-level call.
    pub(crate) denied: bool,
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
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> Result<bool, wasmi_core::LimiterError> {
        Ok(desired <= 1 << 20 && maximum.is_none_or(|max| desired <= max))
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
    instance: wasmi::Instance,
    interrupt: Arc<AtomicBool>,
}

impl std::fmt::Debug for WasmiInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmiInstance").finish_non_exhaustive()
    }
}

impl WasmiInstance {
    /// Creates the store and instantiates `module` in it.
    pub(crate) fn new(module: &wasmi::Module, host: HostState, limits: &Limits, shared: &Shared) -> Result<Self> {
        let interrupt = Arc::new(AtomicBool::new(false));
        let config = &shared.config;
        let data = StoreData {
            host,
            funcs: Vec::new(),
            memory: None,
            limiter: Limiter {
                max_memory: usize::try_from(limits.max_memory_bytes).unwrap_or(usize::MAX),
                denied: false,
            },
            budget: Budget {
                per_call: limits.callback_deadline.map_or(u64::MAX, |d| config.fuel_for(d)),
                deadline: limits.callback_deadline,
                slice: config.fuel_for(INTERRUPT_CHECK),
                reserve: 0,
                interrupt: interrupt.clone(),
            },
            raised: None,
        };
        let mut store = Store::new(&shared.engine, data);
        store.limiter(|data| &mut data.limiter);
        // Start-up (a `start` function) runs under the callback deadline too, in one piece.
        let budget = store.data().budget.per_call;
        store.set_fuel(budget).map_err(|e| error::engine(&e))?;
        let instance = shared
            .linker
            .instantiate_and_start(&mut store, module)
            .map_err(|e| error::from_instantiate(&e, store.data_mut()))?;
        let memory = instance.get_memory(&store, "memory");
        store.data_mut().memory = memory;
        Ok(Self { store, instance, interrupt })
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
        if let Some(i) = self.store.data().funcs.iter().position(|f| &*f.name == name) {
            return Some(FuncRef(i as u32));
        }
        let func = self.instance.get_func(&self.store, name)?;
        let ty = func.ty(&self.store);
        let params: Box<[ValType]> = ty.params().iter().map(from_wasmi).collect();
        let results: Box<[ValType]> = ty.results().iter().map(from_wasmi).collect();
        let typed = TypedExport::new(&self.store, func, &params, &results);
        let funcs = &mut self.store.data_mut().funcs;
        funcs.push(Export { name: name.into(), func, params, results, typed });
        Some(FuncRef(u32::try_from(funcs.len() - 1).ok()?))
    }

    fn call(&mut self, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
        let data = self.store.data_mut();
        data.limiter.denied = false;
        data.raised = None;
        let first = data.budget.start();
        self.store.set_fuel(first).map_err(|e| error::engine(&e))?;
        call(&mut self.store, func, args)
    }

    fn memory_size(&mut self) -> u64 {
        self.store.data().memory.map_or(0, |m| m.data_size(&self.store) as u64)
    }

    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        read(&self.store, ptr, out)
    }

    /// The returned handle sets a flag; the running call traps with
    /// [`TrapKind::Deadline`](wasmux_abi::TrapKind) at its next host call or when its current
    /// fuel slice ([`INTERRUPT_CHECK`]) runs out, whichever comes first. A request made while
    /// no call runs is dropped when the next top-level call starts.
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
/// (neither resets the budget here: a re-entrant call draws on the outer call's). A trap
/// leaving this call gets the export's name appended to its backtrace.
pub(crate) fn call(mut cx: impl AsContextMut<Data = StoreData>, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
    let mut store = cx.as_context_mut();
    let result = call_inner(&mut store, func, args);
    result.map_err(|mut e| {
        if let (Error::Trap(trap), Some(export)) = (&mut e, store.data().funcs.get(func.0 as usize)) {
            trap.backtrace.push(export.name.to_string());
        }
        e
    })
}

fn call_inner(store: &mut StoreContextMut<'_, StoreData>, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
    // Fast path: a cached typed handle (also for re-entrant calls such as the allocator).
    if let Some(export) = store.data().funcs.get(func.0 as usize)
        && export.params.len() == args.len()
        && let Some(typed) = export.typed.clone()
    {
        return typed.call(store, args);
    }
    const ZERO: Val = Val::I32(0);
    let mut params = [ZERO; MAX_VALUES];
    let mut results = [ZERO; MAX_VALUES];
    let (f, n_params, n_results, result_ty) = {
        let Some(export) = store.data().funcs.get(func.0 as usize) else {
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
        (export.func, args.len(), export.results.len(), export.results.first().copied())
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
