//! The host-function linker: every entry of [`HOST_FUNCS`] under every module name (typed
//! trampolines where the signature allows, `func_new` otherwise), and the
//! [`Guest`] view a host function gets of the calling instance.

use wasmi::{Caller, Linker, Val};
use wasmux_abi::{Error, FuncRef, Guest, HOST_FUNCS, HostFunc, HostState, OutOfBounds, Result, ValType};

use crate::instance::{self, StoreData};
use crate::{error, typed};

/// The most parameters a host function may take (proxy-wasm's widest takes 12).
const MAX_ARGS: usize = 16;

/// Builds the engine's linker holding every host function.
pub(crate) fn linker(engine: &wasmi::Engine) -> Result<Linker<StoreData>> {
    let mut linker = Linker::new(engine);
    for func in HOST_FUNCS {
        let ty = func.ty();
        if ty.params.len() > MAX_ARGS {
            return Err(error::engine_msg(format!("host function {func:?} takes too many parameters")));
        }
        let wasm_ty = wasmi::FuncType::new(
            ty.params.iter().map(|&t| to_wasmi(t)).collect::<Result<Vec<_>>>()?,
            ty.results.iter().map(|&t| to_wasmi(t)).collect::<Result<Vec<_>>>()?,
        );
        let result = ty.results.first().copied();
        for module in func.module_names() {
            if typed::link_host(&mut linker, module, func).map_err(|e| error::engine_msg(e.to_string()))? {
                continue;
            }
            linker
                .func_new(module, func.name, wasm_ty.clone(), move |caller, params, results| {
                    let mut raw = [0u64; MAX_ARGS];
                    let args = &mut raw[..params.len()];
                    for (slot, val) in args.iter_mut().zip(params) {
                        *slot = val_to_raw(val);
                    }
                    let ret = invoke(caller, func, args)?;
                    if let (Some(slot), Some(ty)) = (results.first_mut(), result) {
                        *slot = raw_to_val(ret, ty);
                    }
                    Ok(())
                })
                .map_err(|e| error::engine_msg(e.to_string()))?;
        }
    }
    Ok(linker)
}

/// Runs a host function for the guest, unless the embedder asked to interrupt the call or its
/// deadline passed (one look at the coarse clock). An [`Error`] is parked in the store while
/// wasmi unwinds.
pub(crate) fn invoke(mut caller: Caller<'_, StoreData>, func: &HostFunc, args: &[u64]) -> Result<u64, wasmi::Error> {
    if let Err(stop) = caller.data().clock.check() {
        return Err(error::raise(caller.data_mut(), error::stopped(stop)));
    }
    let mut cx = Cx { caller };
    func.invoke(&mut cx, args).map_err(|e| error::raise(cx.caller.data_mut(), e))
}

/// Converts a proxy-wasm value type to wasmi's.
fn to_wasmi(ty: ValType) -> Result<wasmi::ValType> {
    Ok(match ty {
        ValType::I32 => wasmi::ValType::I32,
        ValType::I64 => wasmi::ValType::I64,
        ValType::F32 => wasmi::ValType::F32,
        ValType::F64 => wasmi::ValType::F64,
        _ => return Err(error::engine_msg(format!("host functions cannot use {ty} values"))),
    })
}

/// Converts wasmi's value type to the proxy-wasm one.
pub(crate) fn from_wasmi(ty: &wasmi::ValType) -> ValType {
    match ty {
        wasmi::ValType::I32 => ValType::I32,
        wasmi::ValType::I64 => ValType::I64,
        wasmi::ValType::F32 => ValType::F32,
        wasmi::ValType::F64 => ValType::F64,
        _ => ValType::Other,
    }
}

/// A wasm value as a raw word: `i32` zero-extended, everything else as its bits.
pub(crate) fn val_to_raw(val: &Val) -> u64 {
    match val {
        Val::I32(v) => u64::from(*v as u32),
        Val::I64(v) => *v as u64,
        Val::F32(v) => u64::from(v.to_bits()),
        Val::F64(v) => v.to_bits(),
        _ => 0,
    }
}

/// A raw word as a wasm value of type `ty` (the upper half is dropped for 32-bit types).
pub(crate) fn raw_to_val(raw: u64, ty: ValType) -> Val {
    match ty {
        ValType::I64 => Val::I64(raw as i64),
        ValType::F32 => Val::F32(wasmi::F32::from_bits(raw as u32)),
        ValType::F64 => Val::F64(wasmi::F64::from_bits(raw)),
        _ => Val::I32(raw as u32 as i32),
    }
}

/// The calling instance, as the ABI layer sees it from inside a host function.
struct Cx<'a> {
    caller: Caller<'a, StoreData>,
}

impl Guest for Cx<'_> {
    fn state(&mut self) -> &mut HostState {
        &mut self.caller.data_mut().host
    }

    fn memory_size(&mut self) -> u64 {
        self.caller.data().memory.map_or(0, |m| m.data_size(&self.caller) as u64)
    }

    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        instance::read(&self.caller, ptr, out)
    }

    fn write(&mut self, ptr: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        let memory = self.caller.data().memory.ok_or(OutOfBounds)?;
        let offset = usize::try_from(ptr).map_err(|_| OutOfBounds)?;
        memory.write(&mut self.caller, offset, data).map_err(|_| OutOfBounds)
    }

    fn call(&mut self, func: FuncRef, args: &[u64]) -> Result<Option<u64>, Error> {
        instance::call(&mut self.caller, func, args)
    }
}
