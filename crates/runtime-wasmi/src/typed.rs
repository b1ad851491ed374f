//! Typed fast paths for the signatures proxy-wasm actually uses: only `i32` parameters and
//! one `i32` result (or none, for exports).
//!
//! wasmi's dynamic paths (`Linker::func_new`, `Func::call_resumable` with `Val`s) type-check
//! and convert every value on every call; a statically typed trampoline skips that. Anything
//! else falls back to the dynamic path, so this is purely an optimization.

use wasmi::{AsContext, Caller, Func, Linker, StoreContextMut, TypedFunc, TypedResumableCall, WasmResults};
use wasmux_abi::{HostFunc, Result, ValType};

use crate::error;
use crate::imports::invoke;
use crate::instance::{StoreData, refuel};

macro_rules! i32_of {
    ($a:ident) => {
        i32
    };
}

macro_rules! host_arities {
    ($($n:literal ($($a:ident)*);)*) => {
        /// Links `func` under `module` with a typed trampoline if its signature is
        /// `(i32, ...) -> i32` with at most 12 parameters. Returns `false` when it is not.
        pub(crate) fn link_host(
            linker: &mut Linker<StoreData>,
            module: &str,
            func: &'static HostFunc,
        ) -> Result<bool, wasmi::errors::LinkerError> {
            let ty = func.ty();
            if ty.results != [ValType::I32] || ty.params.iter().any(|&t| t != ValType::I32) {
                return Ok(false);
            }
            match ty.params.len() {
                $($n => linker.func_wrap(module, func.name, move |caller: Caller<'_, StoreData>, $($a: i32),*| {
                    invoke(caller, func, &[$(u64::from($a as u32)),*]).map(|r| r as u32 as i32)
                })?,)*
                _ => return Ok(false),
            };
            Ok(true)
        }
    };
}

host_arities! {
    0 (); 1 (a); 2 (a b); 3 (a b c); 4 (a b c d); 5 (a b c d e); 6 (a b c d e f);
    7 (a b c d e f g); 8 (a b c d e f g h); 9 (a b c d e f g h i); 10 (a b c d e f g h i j);
    11 (a b c d e f g h i j k); 12 (a b c d e f g h i j k l);
}

/// Runs a typed resumable call to its end: refuels it slice by slice, or stops it, and maps
/// its error.
fn drive<R: WasmResults>(
    cx: &mut StoreContextMut<'_, StoreData>,
    mut step: Result<TypedResumableCall<R>, wasmi::Error>,
) -> Result<R> {
    loop {
        step = match step {
            Ok(TypedResumableCall::Finished(r)) => return Ok(r),
            Ok(TypedResumableCall::OutOfFuel(paused)) => {
                refuel(cx, paused.required_fuel())?;
                paused.resume(&mut *cx)
            }
            Ok(TypedResumableCall::HostTrap(paused)) => {
                return Err(error::from_call(paused.host_error(), cx.data_mut()));
            }
            Err(e) => return Err(error::from_call(&e, cx.data_mut())),
        };
    }
}

macro_rules! export_arities {
    ($($ret:ident $unit:ident $n:literal ($($a:ident)*);)*) => {
        /// A guest export taking `i32`s and returning one `i32` or nothing, with its typed
        /// handle.
        #[derive(Clone)]
        pub(crate) enum TypedExport {
            $(
                $ret(TypedFunc<($(i32_of!($a),)*), i32>),
                $unit(TypedFunc<($(i32_of!($a),)*), ()>),
            )*
        }

        impl TypedExport {
            /// The typed handle of `func`, if its signature has one.
            pub(crate) fn new(store: impl AsContext, func: Func, params: &[ValType], results: &[ValType]) -> Option<Self> {
                if params.iter().any(|&t| t != ValType::I32) {
                    return None;
                }
                match (params.len(), results) {
                    $(
                        ($n, [ValType::I32]) => func.typed(&store).ok().map(Self::$ret),
                        ($n, []) => func.typed(&store).ok().map(Self::$unit),
                    )*
                    _ => None,
                }
            }

            /// Calls with raw arguments; `args` has the right length (checked by the caller).
            pub(crate) fn call(&self, cx: &mut StoreContextMut<'_, StoreData>, args: &[u64]) -> Result<Option<u64>> {
                match self {
                    $(
                        Self::$ret(f) => {
                            let &[$($a),*] = args else { return Err(error::engine_msg("wrong number of arguments")) };
                            let step = f.call_resumable(&mut *cx, ($($a as u32 as i32,)*));
                            drive(cx, step).map(|r| Some(u64::from(r as u32)))
                        }
                        Self::$unit(f) => {
                            let &[$($a),*] = args else { return Err(error::engine_msg("wrong number of arguments")) };
                            let step = f.call_resumable(&mut *cx, ($($a as u32 as i32,)*));
                            drive(cx, step).map(|()| None)
                        }
                    )*
                }
            }
        }
    };
}

export_arities! {
    R0 U0 0 (); R1 U1 1 (a); R2 U2 2 (a b); R3 U3 3 (a b c); R4 U4 4 (a b c d); R5 U5 5 (a b c d e);
    R6 U6 6 (a b c d e f);
}
