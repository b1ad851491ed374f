//! A running instance: its store, resolved exports, deadlines and memory access.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmer::{AsStoreRef, Function, FunctionEnv, FunctionEnvMut, Global, Memory, Store, Value};
use wasmux_abi::deadline::{CallDeadline, CoarseClock};
use wasmux_abi::{FuncRef, HostState, Limits, OutOfBounds, Result, WasmInstance};

use crate::error::{self, Context, Stopped};
use crate::imports::{raw_to_val, val_to_raw};
use crate::module::{ExportTable, WasmerModule};
use crate::typed::TypedExport;
use crate::{INTERRUPT_CHECK, middleware};

/// What each instance's `FunctionEnv` holds.
pub(crate) struct StoreData {
    /// The ABI state of the instance.
    pub(crate) host: HostState,
    /// The module's function exports; `FuncRef.0` indexes it.
    table: Arc<ExportTable>,
    /// This instance's handles for each export of `table`.
    funcs: Box<[Slot]>,
    /// The `memory` export, if any.
    pub(crate) memory: Option<Memory>,
    /// The middleware's remaining-points global.
    points: Option<Global>,
    /// Memory growth policy and what it refused.
    pub(crate) limiter: Limiter,
    /// Deadline bookkeeping of the current top-level call.
    pub(crate) clock: Clock,
    /// The engine name, for errors.
    pub(crate) engine: &'static str,
    /// The module's own imported functions (where the middleware's imports start).
    imported: u32,
}

impl StoreData {
    fn context(&self) -> Context {
        Context { engine: self.engine, imported: self.imported, memory_denied: self.limiter.denied }
    }
}

/// An instance's handles for one function export: the function, made when
/// [`WasmInstance::lookup`] first finds it, and its typed handle, made on its first call.
#[derive(Default)]
struct Slot {
    func: Option<Function>,
    /// A typed handle for the common all-`i32` signatures.
    typed: Option<TypedExport>,
    /// Whether `typed` was made (or the signature found to have none).
    checked: bool,
}

/// The deadline of the running top-level call, the interrupt flag, and the metering slices
/// that pace their checks.
pub(crate) struct Clock {
    deadline: CallDeadline,
    /// Metering points per tick.
    rate: u64,
}

impl Clock {
    fn new(clock: CoarseClock, rate_per_ms: u64, deadline: Option<Duration>, interrupt: Arc<AtomicBool>) -> Self {
        let rate = u128::from(rate_per_ms) * clock.tick().as_nanos() / 1_000_000;
        let rate = u64::try_from(rate).unwrap_or(u64::MAX).max(1);
        Self { deadline: CallDeadline::new(clock, deadline, INTERRUPT_CHECK, interrupt), rate }
    }

    /// Starts a top-level call (a fresh deadline, stale interrupt requests dropped). Returns
    /// the first slice of points.
    fn start(&mut self) -> u64 {
        self.deadline.start();
        self.slice(0)
    }

    /// Points until the next check: the rest of the deadline, capped by [`INTERRUPT_CHECK`],
    /// and at least `required`.
    fn slice(&self, required: u64) -> u64 {
        self.deadline.next_check().saturating_mul(self.rate).max(required)
    }

    /// Whether the call must stop: interrupted, or past the deadline.
    pub(crate) fn check(&self) -> Result<(), Stopped> {
        self.deadline.check()
    }

    /// The metering points ran out: stop, or grant the next slice.
    pub(crate) fn refuel(&self, required: u64) -> Result<u64, Stopped> {
        self.check()?;
        Ok(self.slice(required))
    }
}

/// The memory and table limits, and what the memory limit refused.
pub(crate) struct Limiter {
    pub(crate) max_memory: u64,
    /// Elements over all tables of the instance.
    pub(crate) max_table_elements: u64,
    /// Memory growth was refused during the current top-level call.
    pub(crate) denied: bool,
}

/// A [`WasmInstance`] on wasmer.
pub struct WasmerInstance {
    store: Store,
    env: FunctionEnv<StoreData>,
    instance: wasmer::Instance,
    interrupt: Arc<AtomicBool>,
    engine: &'static str,
}

// SAFETY: wasmer 7 no longer declares `Store` `Send` (wasmer 6.1 did, `unsafe impl Send for
// Store`), because its V8 backend ties a store to the thread that made it (wasmerio/wasmer#6546,
// #7001). This crate builds only the `sys` backend, whose store has no such tie: the raw
// pointers that make its objects `!Send` point into allocations the store itself owns (instance
// contexts, tables, globals, memories) or into compiled code the engine keeps alive and never
// changes. The thread-local state wasmer uses (the active store context, trap handling, the
// cached wasm stack) is installed when a call starts and removed before it returns on the same
// thread, and a call cannot move threads mid-way: it borrows the instance mutably throughout.
// What the store holds of ours is `Send`: wasmer requires it of function environments and host
// function closures. The one non-`Send` thing a store can hold, an `on_called` handler, is
// never set here, and wasmer's signal-based `experimental-host-interrupt` (which registers
// threads) is not enabled. Moving the whole instance, store and handles together, to another
// thread between calls is therefore what wasmer 6.1 allowed, and all this crate does.
#[allow(unsafe_code, reason = "wasmer 7's Store is not Send; see the SAFETY comment")]
unsafe impl Send for WasmerInstance {}

impl std::fmt::Debug for WasmerInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmerInstance").field("engine", &self.engine).finish_non_exhaustive()
    }
}

impl WasmerInstance {
    /// Creates the store and instantiates `module` in it.
    pub(crate) fn new(module: &WasmerModule, host: HostState, limits: &Limits) -> Result<Self> {
        let shared = module.shared();
        let engine = shared.name;
        let max_memory = limits.max_memory_bytes;
        if let Some(min) = module.initial_memory().filter(|&min| min > max_memory) {
            return Err(error::engine_msg(
                engine,
                format!("cannot instantiate: initial memory of {min} bytes exceeds the limit of {max_memory} bytes"),
            ));
        }
        let tables = module.initial_table_elements();
        let max_tables = limits.max_table_elements;
        if tables > max_tables {
            return Err(error::engine_msg(
                engine,
                format!(
                    "cannot instantiate: initial tables of {tables} elements exceed the limit of {max_tables} elements"
                ),
            ));
        }
        let mut store = Store::new(module.store_engine(limits));
        let interrupt = Arc::new(AtomicBool::new(false));
        let mut clock =
            Clock::new(shared.clock.clone(), shared.config.rate(), limits.callback_deadline, interrupt.clone());
        // Start-up (a `start` function) runs under the callback deadline too.
        clock.start();
        let data = StoreData {
            host,
            table: module.table().clone(),
            funcs: (0..module.table().len()).map(|_| Slot::default()).collect(),
            memory: None,
            points: None,
            limiter: Limiter { max_memory, max_table_elements: max_tables, denied: false },
            clock,
            engine,
            imported: module.imported_functions(),
        };
        let env = FunctionEnv::new(&mut store, data);
        let externs = crate::imports::externs(&mut store, &env, module.links(), engine)?;
        let instance = wasmer::Instance::new_by_index(&mut store, module.wasmer(), &externs)
            .map_err(|e| error::from_instantiate(e, env.as_ref(&store).context()))?;
        let memory = instance.exports.get_memory("memory").ok().cloned();
        let points = instance.exports.get_global(middleware::POINTS_EXPORT).ok().cloned();
        let data = env.as_mut(&mut store);
        data.memory = memory;
        data.points = points;
        Ok(Self { store, env, instance, interrupt, engine })
    }
}

impl WasmInstance for WasmerInstance {
    fn engine(&self) -> &'static str {
        self.engine
    }

    fn state(&mut self) -> &mut HostState {
        &mut self.env.as_mut(&mut self.store).host
    }

    fn lookup(&mut self, name: &str) -> Option<FuncRef> {
        let data = self.env.as_ref(&self.store);
        let func = data.table.find(name)?;
        if data.funcs.get(func.0 as usize)?.func.is_none() {
            let f = self.instance.exports.get_function(name).ok()?.clone();
            self.env.as_mut(&mut self.store).funcs.get_mut(func.0 as usize)?.func = Some(f);
        }
        Some(func)
    }

    fn call(&mut self, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
        // An export this instance has not looked up yet (a reference from another instance
        // of the module): resolve it now.
        if self.env.as_ref(&self.store).funcs.get(func.0 as usize).is_some_and(|s| s.func.is_none()) {
            let table = self.env.as_ref(&self.store).table.clone();
            if let Some(export) = table.get(func) {
                self.lookup(&export.name);
            }
        }
        let mut env = self.env.clone().into_mut(&mut self.store);
        let data = env.data_mut();
        data.limiter.denied = false;
        let first = data.clock.start();
        if let Some(points) = data.points.clone() {
            let first = Value::I64(i64::try_from(first).unwrap_or(i64::MAX));
            points.set(&mut env, first).map_err(|e| error::engine_msg(self.engine, e.message()))?;
        }
        call(&mut env, func, args)
    }

    fn memory_size(&mut self) -> u64 {
        let data = self.env.as_ref(&self.store);
        data.memory.as_ref().map_or(0, |m| m.view(&self.store).data_size())
    }

    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        read(self.env.as_ref(&self.store).memory.as_ref(), &self.store, ptr, out)
    }

    fn global(&mut self, name: &str, _ty: wasmux_abi::ValType) -> Option<u64> {
        match self.instance.exports.get_global(name).ok()?.get(&mut self.store) {
            Value::I32(v) => Some(u64::from(v as u32)),
            Value::I64(v) => Some(v as u64),
            Value::F32(v) => Some(u64::from(v.to_bits())),
            Value::F64(v) => Some(v.to_bits()),
            _ => None,
        }
    }

    /// The returned handle sets a flag; the running call traps with
    /// [`TrapKind::Deadline`](wasmux_abi::TrapKind) at its next host call or at the end of its
    /// current metering slice ([`INTERRUPT_CHECK`]), whichever comes first. A request made
    /// while no call runs is dropped when the next top-level call starts.
    fn interrupt_handle(&self) -> Arc<dyn Fn() + Send + Sync> {
        let flag = self.interrupt.clone();
        Arc::new(move || flag.store(true, Ordering::Release))
    }
}

/// Reads guest memory.
pub(crate) fn read(
    memory: Option<&Memory>,
    store: &impl AsStoreRef,
    ptr: u64,
    out: &mut [u8],
) -> Result<(), OutOfBounds> {
    memory.ok_or(OutOfBounds)?.view(store).read(ptr, out).map_err(|_| OutOfBounds)
}

/// Calls a resolved export with raw arguments; used for top-level and re-entrant calls alike
/// (neither touches the deadline here).
pub(crate) fn call(env: &mut FunctionEnvMut<'_, StoreData>, func: FuncRef, args: &[u64]) -> Result<Option<u64>> {
    let slot = func.0 as usize;
    let data = env.data();
    let (Some(export), Some(Slot { func: Some(f), typed, checked })) = (data.table.get(func), data.funcs.get(slot))
    else {
        return Err(error::engine_msg(data.engine, format!("unknown function reference {}", func.0)));
    };
    if args.len() != export.params.len() {
        return Err(error::engine_msg(
            data.engine,
            format!(
                "`{}` takes {} arguments and returns {} results, called with {}",
                export.name,
                export.params.len(),
                export.results.len(),
                args.len()
            ),
        ));
    }
    // Fast path: a typed handle (also for re-entrant calls such as the allocator), made on the
    // first call.
    let typed = if *checked {
        typed.clone()
    } else {
        let typed = TypedExport::new(&*env, f, &export.params, &export.results);
        let entry = &mut env.data_mut().funcs[slot];
        entry.typed.clone_from(&typed);
        entry.checked = true;
        typed
    };
    if let Some(typed) = typed {
        return typed.call(env, args).map_err(|e| error::from_call(e, env.data().context()));
    }
    let data = env.data();
    let (Some(export), Some(Slot { func: Some(f), .. })) = (data.table.get(func), data.funcs.get(slot)) else {
        return Err(error::engine_msg(data.engine, format!("unknown function reference {}", func.0)));
    };
    let f = f.clone();
    let params: Vec<Value> = args.iter().zip(export.params.iter()).map(|(&raw, &ty)| raw_to_val(raw, ty)).collect();
    match f.call(env, &params) {
        Ok(results) => Ok(results.first().map(val_to_raw)),
        Err(e) => Err(error::from_call(e, env.data().context())),
    }
}
