//! The `proxy_*` host functions as native symbols, and the thread-local that finds the calling
//! instance.
//!
//! A native filter calls `proxy_log(...)` through a plain undefined symbol, which the dynamic
//! linker binds to the function of that name exported by the host executable. There is no
//! caller context in such a call, so the instance that is running on this thread is kept in a
//! thread-local for the duration of every call into a library ([`Current`]). It is the only
//! thread-local of the null engine, and it is unavoidable: the SDK's own state is per thread too.
//!
//! Every symbol has the C type the Rust SDK declares (`u32` for enums, ids and tokens, `usize`
//! for pointers and sizes, `i32` for the gRPC status, `u8` for the `bool` of `proxy_grpc_send`,
//! `u64`/`i64` for metric values), widens its arguments into the raw words the ABI layer expects
//! and runs the [`HOST_FUNCS`] entry of the same name. Nothing here implements the ABI.

use std::cell::Cell;
use std::sync::LazyLock;

use wasmux_abi::pairs::MAX_PAIRS_BYTES;
use wasmux_abi::{AbiVersion, Error, FuncRef, Guest, HOST_FUNCS, HostFunc, HostState, OutOfBounds, Status, ValType};

use crate::instance::{Inner, NullGuest, read, silent_env, write};
use crate::wide;

thread_local! {
    /// The instance whose call is running on this thread (null outside calls).
    static CURRENT: Cell<*mut Inner> = const { Cell::new(std::ptr::null_mut()) };
}

/// Makes an instance current on this thread for the life of the guard; restores the previous
/// one after (an embedder may drive another instance from inside a service callback).
pub(crate) struct Current {
    previous: *mut Inner,
}

impl Current {
    /// Makes `inner` current.
    pub(crate) fn enter(inner: *mut Inner) -> Self {
        let previous = CURRENT.try_with(|c| c.replace(inner)).unwrap_or(std::ptr::null_mut());
        Self { previous }
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        let _ = CURRENT.try_with(|c| c.set(self.previous));
    }
}

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current").finish_non_exhaustive()
    }
}

/// A native argument type, widened into the ABI layer's raw word (`i32` zero-extended, `i64`
/// as its bits).
trait Widen: Copy {
    /// The wasm type this parameter has in [`HOST_FUNCS`] (checked by the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    const WASM: ValType;
    fn widen(self) -> u64;
}

impl Widen for u32 {
    const WASM: ValType = ValType::I32;
    fn widen(self) -> u64 {
        u64::from(self)
    }
}

impl Widen for i32 {
    const WASM: ValType = ValType::I32;
    fn widen(self) -> u64 {
        u64::from(self as u32)
    }
}

impl Widen for u8 {
    const WASM: ValType = ValType::I32;
    fn widen(self) -> u64 {
        u64::from(self)
    }
}

/// Pointers and sizes: `i32` in wasm32, 64 bits natively.
impl Widen for usize {
    const WASM: ValType = ValType::I32;
    fn widen(self) -> u64 {
        self as u64
    }
}

impl Widen for u64 {
    const WASM: ValType = ValType::I64;
    fn widen(self) -> u64 {
        self
    }
}

impl Widen for i64 {
    const WASM: ValType = ValType::I64;
    fn widen(self) -> u64 {
        self as u64
    }
}

macro_rules! host_symbols {
    ($( $name:ident ( $($arg:ident : $t:ty),* ) ; )*) => {
        /// One variant per exported symbol, in table order.
        #[allow(non_camel_case_types, reason = "variants are named after the symbols")]
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(crate) enum Sym { $($name),* }

        /// Symbol names, indexed by [`Sym`].
        pub(crate) const NAMES: &[&str] = &[$(stringify!($name)),*];

        /// The wasm parameter types implied by each symbol's native parameters.
        #[cfg(test)]
        pub(crate) const PARAMS: &[&[ValType]] = &[$(&[$(<$t as Widen>::WASM),*]),*];

        /// The address of symbol `i` in this binary (also keeps every symbol referenced, so the
        /// linker cannot drop one).
        pub(crate) fn address(i: usize) -> Option<usize> {
            let addrs: &[usize] = &[$($name as extern "C" fn($($t),*) -> u32 as usize),*];
            addrs.get(i).copied()
        }

        $(
            #[doc = concat!("`", stringify!($name), "` for native filters: runs the ABI's implementation.")]
            #[unsafe(no_mangle)]
            pub(crate) extern "C" fn $name($($arg: $t),*) -> u32 {
                if Sym::$name.needs_dispatch() {
                    return dispatch(Sym::$name, &[$(Widen::widen($arg)),*]);
                }
                let Some(mut guest) = current() else {
                    return orphan(Sym::$name, |g| wasmux_abi::direct::$name::<dyn Guest>(g, $(Widen::widen($arg)),*));
                };
                // Compiled for `NullGuest`: no dynamic calls between the symbol and the ABI's code.
                let ret = wasmux_abi::direct::$name(&mut guest, $(Widen::widen($arg)),*);
                settle(&mut guest, ret)
            }
        )*
    };
}

// Native declarations of the proxy-wasm Rust SDK (0.1.x and 0.2.x `hostcalls.rs`), plus the
// functions of the spec that the SDK does not call, typed the same way.
host_symbols! {
    proxy_log(level: u32, msg: usize, len: usize);
    proxy_get_log_level(out: usize);
    proxy_get_current_time_nanoseconds(out: usize);
    proxy_set_tick_period_milliseconds(period: u32);
    proxy_set_effective_context(id: u32);
    proxy_done();
    proxy_get_configuration(out_ptr: usize, out_len: usize);
    proxy_get_buffer_bytes(ty: u32, start: usize, max: usize, out_ptr: usize, out_len: usize);
    proxy_set_buffer_bytes(ty: u32, start: usize, size: usize, ptr: usize, len: usize);
    proxy_get_buffer_status(ty: u32, out_len: usize, out_flags: usize);
    proxy_get_header_map_pairs(ty: u32, out_ptr: usize, out_len: usize);
    proxy_set_header_map_pairs(ty: u32, ptr: usize, len: usize);
    proxy_get_header_map_size(ty: u32, out: usize);
    proxy_get_header_map_value(ty: u32, key: usize, key_len: usize, out_ptr: usize, out_len: usize);
    proxy_add_header_map_value(ty: u32, key: usize, key_len: usize, val: usize, val_len: usize);
    proxy_replace_header_map_value(ty: u32, key: usize, key_len: usize, val: usize, val_len: usize);
    proxy_remove_header_map_value(ty: u32, key: usize, key_len: usize);
    proxy_continue_stream(ty: u32);
    proxy_close_stream(ty: u32);
    proxy_continue_request();
    proxy_continue_response();
    proxy_clear_route_cache();
    proxy_send_local_response(
        code: u32, details: usize, details_len: usize, body: usize, body_len: usize, headers: usize,
        headers_len: usize, grpc: i32
    );
    proxy_get_status(out_code: usize, out_ptr: usize, out_len: usize);
    proxy_http_call(
        up: usize, up_len: usize, hdr: usize, hdr_len: usize, body: usize, body_len: usize, trl: usize,
        trl_len: usize, timeout: u32, out: usize
    );
    proxy_grpc_call(
        up: usize, up_len: usize, svc: usize, svc_len: usize, method: usize, method_len: usize, md: usize,
        md_len: usize, msg: usize, msg_len: usize, timeout: u32, out: usize
    );
    proxy_grpc_stream(
        up: usize, up_len: usize, svc: usize, svc_len: usize, method: usize, method_len: usize, md: usize,
        md_len: usize, out: usize
    );
    proxy_grpc_send(token: u32, msg: usize, msg_len: usize, end: u8);
    proxy_grpc_cancel(token: u32);
    proxy_grpc_close(token: u32);
    proxy_get_shared_data(key: usize, key_len: usize, out_ptr: usize, out_len: usize, out_cas: usize);
    proxy_set_shared_data(key: usize, key_len: usize, val: usize, val_len: usize, cas: u32);
    proxy_register_shared_queue(name: usize, name_len: usize, out: usize);
    proxy_resolve_shared_queue(vm: usize, vm_len: usize, name: usize, name_len: usize, out: usize);
    proxy_enqueue_shared_queue(id: u32, val: usize, val_len: usize);
    proxy_dequeue_shared_queue(id: u32, out_ptr: usize, out_len: usize);
    proxy_define_metric(ty: u32, name: usize, name_len: usize, out: usize);
    proxy_increment_metric(id: u32, delta: i64);
    proxy_record_metric(id: u32, value: u64);
    proxy_get_metric(id: u32, out: usize);
    proxy_get_property(path: usize, path_len: usize, out_ptr: usize, out_len: usize);
    proxy_set_property(path: usize, path_len: usize, val: usize, val_len: usize);
    proxy_call_foreign_function(
        name: usize, name_len: usize, args: usize, args_len: usize, out_ptr: usize, out_len: usize
    );
}

/// The [`HOST_FUNCS`] entry of each symbol, indexed by [`Sym`].
static TABLE: LazyLock<Vec<Option<&'static HostFunc>>> =
    LazyLock::new(|| NAMES.iter().map(|n| HOST_FUNCS.iter().find(|f| f.name == *n)).collect());

impl Sym {
    /// Whether the symbol needs more than the ABI's implementation, and so goes through
    /// [`dispatch`]: the functions that take serialized maps, which a 0.1.x SDK may encode with
    /// 8-byte integers (see `wide`); the callouts among them also hand out tokens the instance
    /// tracks. The others run [`wasmux_abi::direct`] at once.
    const fn needs_dispatch(self) -> bool {
        !wide::map_args(self).is_empty()
    }
}

/// The guest of the instance whose call is running on this thread, if any.
#[inline(always)]
fn current() -> Option<NullGuest> {
    let inner = CURRENT.try_with(Cell::get).unwrap_or(std::ptr::null_mut());
    (!inner.is_null()).then(|| NullGuest::new(inner))
}

/// A host function's raw result for the native guest. Never panics (a panic here would abort
/// the process: these are `extern "C"` functions).
#[inline(always)]
fn settle(guest: &mut NullGuest, ret: wasmux_abi::Result<u64>) -> u32 {
    match ret {
        Ok(raw) => raw as u32,
        Err(e) => {
            // The guest cannot be unwound natively: it gets INTERNAL_FAILURE now, and the
            // error ends the top-level call once the guest returns.
            guest.fail(e);
            Status::InternalFailure as u32
        }
    }
}

/// A host call outside any call from the host: a destructor at thread exit, or a thread the
/// filter started. There is no instance to act on; the call runs against a scratch state whose
/// services go nowhere, so the SDK gets ordinary answers (OK for a log line) instead of
/// panicking, which would abort the process.
#[cold]
fn orphan(sym: Sym, call: impl FnOnce(&mut dyn Guest) -> wasmux_abi::Result<u64>) -> u32 {
    let name = NAMES.get(sym as usize).copied().unwrap_or("?");
    tracing::debug!(target: "wasmux::null", "{name} called outside a call from the host: ignored");
    let mut orphan = Orphan { state: HostState::new(AbiVersion::V0_2_1, silent_env()) };
    call(&mut orphan).map_or(Status::InternalFailure as u32, |raw| raw as u32)
}

/// Runs a host function for the native guest that is current on this thread, with the extra
/// work of [`Sym::needs_dispatch`]. Never panics.
fn dispatch(sym: Sym, args: &[u64]) -> u32 {
    let Some(func) = TABLE.get(sym as usize).copied().flatten() else {
        return Status::InternalFailure as u32;
    };
    let Some(mut guest) = current() else {
        return orphan(sym, |guest| func.invoke(guest, args));
    };
    let wide_maps = if guest.state().abi() == AbiVersion::V0_1_0 { wide::map_args(sym) } else { &[] };
    let ret = if wide_maps.is_empty() {
        func.invoke(&mut guest, args)
    } else {
        invoke_wide(func, &mut guest, args, wide_maps)
    };
    if ret.as_ref().is_ok_and(|&raw| raw == Status::Ok as u64) {
        match sym {
            Sym::proxy_http_call => guest.issued(false, args.last().copied()),
            Sym::proxy_grpc_call | Sym::proxy_grpc_stream => guest.issued(true, args.last().copied()),
            _ => {}
        }
    }
    settle(&mut guest, ret)
}

/// Runs a host function whose map arguments may come from a 0.1.x SDK filter with 8-byte
/// integers (see `wide`): `maps` names the (pointer, length) argument pairs, which are
/// re-encoded into copies that live for the call.
#[cold]
fn invoke_wide(
    func: &HostFunc,
    guest: &mut NullGuest,
    args: &[u64],
    maps: &[(usize, usize)],
) -> wasmux_abi::Result<u64> {
    let mut local = [0u64; 16];
    let Some(local) = local.get_mut(..args.len()) else { return func.invoke(guest, args) };
    local.copy_from_slice(args);
    let mut held: Vec<Vec<u8>> = Vec::new();
    for &(p, l) in maps {
        let Some(len) = usize::try_from(local[l]).ok().filter(|&n| n <= 2 * MAX_PAIRS_BYTES) else { continue };
        let mut buf = vec![0; len];
        if guest.read(local[p], &mut buf).is_err() {
            continue;
        }
        if let Some(narrow) = wide::narrow(&buf) {
            local[p] = narrow.as_ptr().expose_provenance() as u64;
            local[l] = narrow.len() as u64;
            held.push(narrow);
        }
    }
    let ret = func.invoke(guest, local);
    drop(held);
    ret
}

/// The guest of a host call made outside any call from the host: native memory, no instance.
struct Orphan {
    state: HostState,
}

impl Guest for Orphan {
    fn state(&mut self) -> &mut HostState {
        &mut self.state
    }

    fn word_size(&self) -> usize {
        8
    }

    fn memory_size(&mut self) -> u64 {
        u64::MAX
    }

    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        read(ptr, out)
    }

    fn write(&mut self, ptr: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        write(ptr, data)
    }

    fn call(&mut self, _func: FuncRef, _args: &[u64]) -> wasmux_abi::Result<Option<u64>> {
        Err(Error::Engine { engine: crate::ENGINE_NAME, message: "no instance is running on this thread".into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One symbol per `proxy_*` host function, with parameter types that match the table.
    #[test]
    fn symbols_cover_every_proxy_function() {
        let proxy: Vec<&str> = HOST_FUNCS.iter().filter(|f| f.is_proxy()).map(|f| f.name).collect();
        let mut names = NAMES.to_vec();
        names.sort_unstable();
        let mut want = proxy.clone();
        want.sort_unstable();
        assert_eq!(names, want);
        for (i, name) in NAMES.iter().enumerate() {
            let f = TABLE[i].unwrap();
            assert_eq!(f.params, PARAMS[i], "{name}");
            assert_eq!(f.results, &[ValType::I32], "{name}");
            assert!(address(i).is_some_and(|a| a != 0));
        }
    }

    #[test]
    fn outside_a_call_the_sdk_gets_ordinary_answers() {
        let msg = b"from a destructor";
        assert_eq!(proxy_log(2, msg.as_ptr() as usize, msg.len()), Status::Ok as u32);
        let key = b":path";
        let (mut ptr, mut len) = (0usize, 0usize);
        let r = proxy_get_header_map_value(
            0,
            key.as_ptr() as usize,
            key.len(),
            &raw mut ptr as usize,
            &raw mut len as usize,
        );
        assert_eq!(r, Status::NotFound as u32);
        assert_eq!(proxy_log(2, 0, 5), Status::InvalidMemoryAccess as u32);
    }
}
