//! Typed fast paths for the signatures proxy-wasm actually uses: only `i32` parameters and
//! one `i32` result (or none, for exports).
//!
//! Wasmer's dynamic paths (`Function::new_with_env`, `Function::call` with `Value`s) check and
//! convert every value and allocate on every call; a statically typed function skips that.
//! Anything else falls back to the dynamic path, so this is purely an optimization.

use wasmer::{AsStoreMut, AsStoreRef, Function, FunctionEnv, FunctionEnvMut, RuntimeError, TypedFunction};
use wasmux_abi::{HostFunc, ValType};

use crate::imports::invoke;
use crate::instance::StoreData;

macro_rules! host_arities {
    ($($n:literal ($($a:ident)*);)*) => {
        /// A typed host function for `func` if its signature is `(i32, ...) -> i32` with at most
        /// 12 parameters.
        pub(crate) fn host(
            store: &mut impl AsStoreMut,
            env: &FunctionEnv<StoreData>,
            func: &'static HostFunc,
        ) -> Option<Function> {
            let ty = func.ty();
            if ty.results != [ValType::I32] || ty.params.iter().any(|&t| t != ValType::I32) {
                return None;
            }
            match ty.params.len() {
                $($n => Some(Function::new_typed_with_env(
                    store,
                    env,
                    move |env: FunctionEnvMut<'_, StoreData>, $($a: i32),*| -> Result<i32, RuntimeError> {
                        invoke(env, func, &[$(u64::from($a as u32)),*]).map(|r| r as u32 as i32)
                    },
                )),)*
                _ => None,
            }
        }
    };
}

host_arities! {
    0 (); 1 (a); 2 (a b); 3 (a b c); 4 (a b c d); 5 (a b c d e); 6 (a b c d e f);
    7 (a b c d e f g); 8 (a b c d e f g h); 9 (a b c d e f g h i); 10 (a b c d e f g h i j);
    11 (a b c d e f g h i j k); 12 (a b c d e f g h i j k l);
}

macro_rules! export_arities {
    ($($ret:ident $unit:ident $n:literal ($($a:ident)*) $args:ty;)*) => {
        /// A guest export taking `i32`s and returning one `i32` or nothing, with its typed
        /// handle.
        #[derive(Clone)]
        pub(crate) enum TypedExport {
            $(
                $ret(TypedFunction<$args, i32>),
                $unit(TypedFunction<$args, ()>),
            )*
        }

        impl TypedExport {
            /// The typed handle of `func`, if its signature has one.
            pub(crate) fn new(store: &impl AsStoreRef, func: &Function, params: &[ValType], results: &[ValType]) -> Option<Self> {
                if params.iter().any(|&t| t != ValType::I32) {
                    return None;
                }
                match (params.len(), results) {
                    $(
                        ($n, [ValType::I32]) => func.typed(store).ok().map(Self::$ret),
                        ($n, []) => func.typed(store).ok().map(Self::$unit),
                    )*
                    _ => None,
                }
            }

            /// Calls with raw arguments; `args` has the right length (checked by the caller).
            pub(crate) fn call(&self, store: &mut impl AsStoreMut, args: &[u64]) -> Result<Option<u64>, RuntimeError> {
                match self {
                    $(
                        Self::$ret(f) => {
                            let &[$($a),*] = args else { return Err(RuntimeError::new("wrong number of arguments")) };
                            f.call(store, $($a as u32 as i32),*).map(|r| Some(u64::from(r as u32)))
                        }
                        Self::$unit(f) => {
                            let &[$($a),*] = args else { return Err(RuntimeError::new("wrong number of arguments")) };
                            f.call(store, $($a as u32 as i32),*).map(|()| None)
                        }
                    )*
                }
            }
        }
    };
}

// Wasmer spells one parameter `i32`, not `(i32,)`.
export_arities! {
    R0 U0 0 () (); R1 U1 1 (a) i32; R2 U2 2 (a b) (i32, i32); R3 U3 3 (a b c) (i32, i32, i32);
    R4 U4 4 (a b c d) (i32, i32, i32, i32); R5 U5 5 (a b c d e) (i32, i32, i32, i32, i32);
    R6 U6 6 (a b c d e f) (i32, i32, i32, i32, i32, i32);
}
