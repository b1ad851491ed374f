//! The host functions of one store: every import of the module, made from its entry of
//! [`HOST_FUNCS`](wasmux_abi::HOST_FUNCS) (typed where the signature allows, dynamic
//! otherwise) or from the middleware's hidden imports, and the [`Guest`] view a host function
//! gets of the calling instance.

use wasmer::{AsStoreMut, Extern, Function, FunctionEnv, FunctionEnvMut, FunctionType, RuntimeError, Value};
use wasmux_abi::{Error, FuncRef, Guest, HostFunc, HostState, OutOfBounds, Result, ValType};

use crate::error::{self, raise};
use crate::instance::{self, StoreData};
use crate::module::Link;
use crate::typed;

/// The most parameters a host function may take (proxy-wasm's widest takes 12).
const MAX_ARGS: usize = 16;

/// Makes the externs of `links` (one per import of the module, in order) in `store`.
pub(crate) fn externs(
    store: &mut impl AsStoreMut,
    env: &FunctionEnv<StoreData>,
    links: &[Link],
    engine: &'static str,
) -> Result<Vec<Extern>> {
    links
        .iter()
        .map(|link| {
            let func = match link {
                Link::Host(func) => host(store, env, func)?,
                Link::Refuel => Function::new_typed_with_env(store, env, refuel),
                Link::GrowAllowed => Function::new_typed_with_env(store, env, grow_allowed),
                Link::TableGrowDelta => Function::new_typed_with_env(store, env, table_grow_delta),
                Link::Missing(what) => return Err(error::engine_msg(engine, format!("cannot instantiate: {what}"))),
            };
            Ok(Extern::Function(func))
        })
        .collect()
}

/// A host function from the table: typed if its signature allows, dynamic otherwise.
fn host(store: &mut impl AsStoreMut, env: &FunctionEnv<StoreData>, func: &'static HostFunc) -> Result<Function> {
    if let Some(f) = typed::host(store, env, func) {
        return Ok(f);
    }
    let engine = env.as_ref(store).engine;
    let ty = func.ty();
    if ty.params.len() > MAX_ARGS {
        return Err(error::engine_msg(engine, format!("host function {func:?} takes too many parameters")));
    }
    let wasm_ty = FunctionType::new(
        ty.params.iter().map(|&t| to_wasmer(t, engine)).collect::<Result<Vec<_>>>()?,
        ty.results.iter().map(|&t| to_wasmer(t, engine)).collect::<Result<Vec<_>>>()?,
    );
    let result = ty.results.first().copied();
    Ok(Function::new_with_env(store, env, wasm_ty, move |env, params: &[Value]| {
        let mut raw = [0u64; MAX_ARGS];
        let args = &mut raw[..params.len()];
        for (slot, val) in args.iter_mut().zip(params) {
            *slot = val_to_raw(val);
        }
        let ret = invoke(env, func, args)?;
        Ok(result.map(|ty| raw_to_val(ret, ty)).into_iter().collect())
    }))
}

/// Runs a host function for the guest, unless the call must stop (interrupt or deadline: host
/// time counts). An [`Error`] travels through wasmer as is.
pub(crate) fn invoke(env: FunctionEnvMut<'_, StoreData>, func: &HostFunc, args: &[u64]) -> Result<u64, RuntimeError> {
    env.data().clock.check().map_err(raise)?;
    func.invoke(&mut Cx { env, memory_size: None }, args).map_err(raise)
}

/// The hidden `refuel` import: the next slice of metering points, or the end of the call.
fn refuel(env: FunctionEnvMut<'_, StoreData>, required: i64) -> Result<i64, RuntimeError> {
    let grant = env.data().clock.refuel(required.cast_unsigned()).map_err(raise)?;
    Ok(i64::try_from(grant).unwrap_or(i64::MAX))
}

/// The hidden `grow_allowed` import: whether memory may grow from `pages` by `delta` pages.
fn grow_allowed(mut env: FunctionEnvMut<'_, StoreData>, pages: i32, delta: i32) -> i32 {
    let limiter = &mut env.data_mut().limiter;
    let bytes = (u64::from(pages.cast_unsigned()) + u64::from(delta.cast_unsigned())) * wasmer::WASM_PAGE_SIZE as u64;
    if bytes > limiter.max_memory {
        limiter.denied = true;
        return 0;
    }
    1
}

/// The hidden `table_grow_delta` import: the delta a `table.grow` of `delta` elements goes on
/// with, given `elements` over all tables: `delta`, or -1 (`u32::MAX`, a growth no table can
/// make under the store's tunables) when the total would exceed the limit.
fn table_grow_delta(env: FunctionEnvMut<'_, StoreData>, elements: i64, delta: i32) -> i32 {
    let total = elements.cast_unsigned().saturating_add(u64::from(delta.cast_unsigned()));
    if total > env.data().limiter.max_table_elements { -1 } else { delta }
}

/// Converts a proxy-wasm value type to wasmer's.
fn to_wasmer(ty: ValType, engine: &'static str) -> Result<wasmer::Type> {
    Ok(match ty {
        ValType::I32 => wasmer::Type::I32,
        ValType::I64 => wasmer::Type::I64,
        ValType::F32 => wasmer::Type::F32,
        ValType::F64 => wasmer::Type::F64,
        _ => return Err(error::engine_msg(engine, format!("host functions cannot use {ty} values"))),
    })
}

/// Converts wasmer's value type to the proxy-wasm one.
pub(crate) fn from_wasmer(ty: &wasmer::Type) -> ValType {
    match ty {
        wasmer::Type::I32 => ValType::I32,
        wasmer::Type::I64 => ValType::I64,
        wasmer::Type::F32 => ValType::F32,
        wasmer::Type::F64 => ValType::F64,
        _ => ValType::Other,
    }
}

/// A wasm value as a raw word: `i32` zero-extended, everything else as its bits.
pub(crate) fn val_to_raw(val: &Value) -> u64 {
    match *val {
        Value::I32(v) => u64::from(v.cast_unsigned()),
        Value::I64(v) => v.cast_unsigned(),
        Value::F32(v) => u64::from(v.to_bits()),
        Value::F64(v) => v.to_bits(),
        _ => 0,
    }
}

/// A raw word as a wasm value of type `ty` (the upper half is dropped for 32-bit types).
pub(crate) fn raw_to_val(raw: u64, ty: ValType) -> Value {
    match ty {
        ValType::I64 => Value::I64(raw.cast_signed()),
        ValType::F32 => Value::F32(f32::from_bits(raw as u32)),
        ValType::F64 => Value::F64(f64::from_bits(raw)),
        _ => Value::I32((raw as u32).cast_signed()),
    }
}

/// The calling instance, as the ABI layer sees it from inside a host function.
struct Cx<'a> {
    env: FunctionEnvMut<'a, StoreData>,
    /// Memory size, cached for the duration of the host call; only guest code can grow memory,
    /// so it is forgotten after every re-entrant call.
    memory_size: Option<u64>,
}

impl Guest for Cx<'_> {
    fn state(&mut self) -> &mut HostState {
        &mut self.env.data_mut().host
    }

    fn memory_size(&mut self) -> u64 {
        if let Some(size) = self.memory_size {
            return size;
        }
        let size = self.env.data().memory.as_ref().map_or(0, |m| m.view(&self.env).data_size());
        self.memory_size = Some(size);
        size
    }

    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        instance::read(self.env.data().memory.as_ref(), &self.env, ptr, out)
    }

    fn write(&mut self, ptr: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        let memory = self.env.data().memory.as_ref().ok_or(OutOfBounds)?;
        memory.view(&self.env).write(ptr, data).map_err(|_| OutOfBounds)
    }

    fn call(&mut self, func: FuncRef, args: &[u64]) -> Result<Option<u64>, Error> {
        self.memory_size = None;
        instance::call(&mut self.env, func, args)
    }
}
