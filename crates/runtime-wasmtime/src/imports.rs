//! The host-function linker: every entry of [`HOST_FUNCS`] under every module name (typed
//! trampolines where the signature allows, `func_new` otherwise), and the
//! [`Guest`] view a host function gets of the calling instance.

use wasmtime::{Caller, Linker, Val};
use wasmux_abi::{Error, FuncRef, Guest, GuestMemory, HOST_FUNCS, HostFunc, HostState, OutOfBounds, Result, ValType};

use crate::instance::{self, StoreData};
use crate::{error, typed};

/// The most parameters a host function may take (proxy-wasm's widest takes 12).
const MAX_ARGS: usize = 16;

/// Builds the engine's linker holding every host function.
pub(crate) fn linker(engine: &wasmtime::Engine) -> Result<Linker<StoreData>> {
    let mut linker = Linker::new(engine);
    for func in HOST_FUNCS {
        let ty = func.ty();
        if ty.params.len() > MAX_ARGS {
            return Err(error::engine_msg(format!("host function {func:?} takes too many parameters")));
        }
        let wasm_ty = wasmtime::FuncType::new(
            engine,
            ty.params.iter().map(|&t| to_wasmtime(t)).collect::<Result<Vec<_>>>()?,
            ty.results.iter().map(|&t| to_wasmtime(t)).collect::<Result<Vec<_>>>()?,
        );
        let result = ty.results.first().copied();
        for module in func.module_names() {
            if typed::link_host(&mut linker, module, func).map_err(error::engine)? {
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
                .map_err(error::engine)?;
        }
    }
    Ok(linker)
}

/// Runs a host function for the guest; an [`Error`] travels through wasmtime as is.
pub(crate) fn invoke(caller: Caller<'_, StoreData>, func: &HostFunc, args: &[u64]) -> wasmtime::Result<u64> {
    func.invoke(&mut Cx { caller, memory_size: None }, args).map_err(wasmtime::Error::new)
}

/// Converts a proxy-wasm value type to wasmtime's.
fn to_wasmtime(ty: ValType) -> Result<wasmtime::ValType> {
    Ok(match ty {
        ValType::I32 => wasmtime::ValType::I32,
        ValType::I64 => wasmtime::ValType::I64,
        ValType::F32 => wasmtime::ValType::F32,
        ValType::F64 => wasmtime::ValType::F64,
        _ => return Err(error::engine_msg(format!("host functions cannot use {ty} values"))),
    })
}

/// Converts wasmtime's value type to the proxy-wasm one.
pub(crate) fn from_wasmtime(ty: &wasmtime::ValType) -> ValType {
    match ty {
        wasmtime::ValType::I32 => ValType::I32,
        wasmtime::ValType::I64 => ValType::I64,
        wasmtime::ValType::F32 => ValType::F32,
        wasmtime::ValType::F64 => ValType::F64,
        _ => ValType::Other,
    }
}

/// A wasm value as a raw word: `i32` zero-extended, everything else as its bits.
pub(crate) fn val_to_raw(val: &Val) -> u64 {
    match *val {
        Val::I32(v) => u64::from(v as u32),
        Val::I64(v) => v as u64,
        Val::F32(bits) => u64::from(bits),
        Val::F64(bits) => bits,
        _ => 0,
    }
}

/// A raw word as a wasm value of type `ty` (the upper half is dropped for 32-bit types).
pub(crate) fn raw_to_val(raw: u64, ty: ValType) -> Val {
    match ty {
        ValType::I64 => Val::I64(raw as i64),
        ValType::F32 => Val::F32(raw as u32),
        ValType::F64 => Val::F64(raw),
        _ => Val::I32(raw as u32 as i32),
    }
}

/// The calling instance, as the ABI layer sees it from inside a host function.
struct Cx<'a> {
    caller: Caller<'a, StoreData>,
    /// Memory size, cached for the duration of the host call; only guest code can grow memory,
    /// so it is forgotten after every re-entrant call.
    memory_size: Option<u64>,
}

impl Guest for Cx<'_> {
    fn state(&mut self) -> &mut HostState {
        &mut self.caller.data_mut().host
    }

    fn memory_size(&mut self) -> u64 {
        if let Some(size) = self.memory_size {
            return size;
        }
        let size = self.caller.data().memory.map_or(0, |m| m.data_size(&self.caller) as u64);
        self.memory_size = Some(size);
        size
    }

    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        instance::read(&self.caller, ptr, out)
    }

    fn write(&mut self, ptr: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        let memory = self.caller.data().memory.ok_or(OutOfBounds)?;
        let offset = usize::try_from(ptr).map_err(|_| OutOfBounds)?;
        memory.write(&mut self.caller, offset, data).map_err(|_| OutOfBounds)
    }

    fn memory_and_state(&mut self) -> (Option<GuestMemory<'_>>, &mut HostState) {
        match self.caller.data().memory {
            Some(memory) => {
                let (data, store) = memory.data_and_store_mut(&mut self.caller);
                self.memory_size = Some(data.len() as u64);
                (Some(GuestMemory::Linear(data)), &mut store.host)
            }
            None => (None, &mut self.caller.data_mut().host),
        }
    }

    fn call(&mut self, func: FuncRef, args: &[u64]) -> Result<Option<u64>, Error> {
        self.memory_size = None;
        instance::call(&mut self.caller, func, args)
    }
}
