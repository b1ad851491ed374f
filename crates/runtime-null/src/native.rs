//! The native signatures of the guest exports the host calls, and one typed caller per shape.
//!
//! In wasm every export parameter is an `i32`; natively the Rust SDK declares context ids and
//! tokens as `u32`, sizes as `usize` and end-of-stream flags as `bool`, and returns `bool`,
//! `Action` (`#[repr(u32)]`) or a pointer. A foreign function must be called through a pointer of
//! its exact C type, so each export name maps to a caller generated for its declaration in the
//! SDK (`proxy-wasm` 0.1.x and 0.2.x `dispatcher.rs`, `allocator.rs`, `lib.rs`). The ABI layer's
//! raw `u64` words are narrowed here: `i32` values were zero-extended, so `as u32` is exact, and a
//! size is at most `usize::MAX` on the 64-bit targets this crate supports.

use std::ffi::c_void;

use wasmux_abi::AbiVersion;

/// Calls the function at `addr` with raw arguments; `None` when it returns nothing.
///
/// # Safety
/// `addr` is the address of an `extern "C"` function of exactly the shape the caller was made
/// for, and `args` has one word per parameter.
pub(crate) type Caller = unsafe fn(addr: *const c_void, args: &[u64]) -> Option<u64>;

/// The native calling shape of one export.
#[derive(Clone, Copy)]
pub(crate) struct Native {
    /// Number of parameters.
    pub(crate) arity: usize,
    /// Whether the function returns a value.
    pub(crate) returns: bool,
    /// The typed caller.
    pub(crate) call: Caller,
}

impl std::fmt::Debug for Native {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Native").field("arity", &self.arity).field("returns", &self.returns).finish_non_exhaustive()
    }
}

/// A parameter type narrowed from a raw word.
trait FromRaw {
    fn from_raw(raw: u64) -> Self;
}

impl FromRaw for u32 {
    fn from_raw(raw: u64) -> Self {
        raw as Self
    }
}

impl FromRaw for usize {
    fn from_raw(raw: u64) -> Self {
        raw as Self
    }
}

impl FromRaw for bool {
    fn from_raw(raw: u64) -> Self {
        raw != 0
    }
}

/// A result type widened into a raw word.
trait IntoRaw {
    const RETURNS: bool;
    fn into_raw(self) -> Option<u64>;
}

impl IntoRaw for () {
    const RETURNS: bool = false;
    fn into_raw(self) -> Option<u64> {
        None
    }
}

impl IntoRaw for u32 {
    const RETURNS: bool = true;
    fn into_raw(self) -> Option<u64> {
        Some(u64::from(self))
    }
}

#[allow(clippy::use_self, reason = "RETURNS is a flag, not a value of the type")]
impl IntoRaw for bool {
    const RETURNS: bool = true;
    fn into_raw(self) -> Option<u64> {
        Some(u64::from(self))
    }
}

impl IntoRaw for *mut u8 {
    const RETURNS: bool = true;
    fn into_raw(self) -> Option<u64> {
        Some(self.expose_provenance() as u64)
    }
}

/// Counts identifiers (the arity of a shape).
macro_rules! count {
    () => { 0 };
    ($head:ty $(, $tail:ty)*) => { 1 + count!($($tail),*) };
}

/// A [`Native`] for `extern "C" fn(params) -> ret`.
macro_rules! shape {
    (( $($t:ty),* ) -> $r:ty) => {{
        unsafe fn call(addr: *const c_void, args: &[u64]) -> Option<u64> {
            // SAFETY: the `Caller` contract: `addr` is an `extern "C"` function of this type.
            let f = unsafe { std::mem::transmute::<*const c_void, extern "C" fn($($t),*) -> $r>(addr) };
            #[allow(unused_mut, unused_variables, reason = "zero-argument shapes")]
            let mut args = args.iter().copied();
            #[allow(clippy::unused_unit, reason = "unit-returning shapes")]
            let r: $r = f($(<$t as FromRaw>::from_raw(args.next().unwrap_or(0))),*);
            IntoRaw::into_raw(r)
        }
        Native { arity: count!($($t),*), returns: <$r as IntoRaw>::RETURNS, call }
    }};
}

/// The native shape of an export the host may call, for a module of ABI `abi`. `None` for
/// names the null engine does not call (`main`, `__main_void`, anything unknown).
pub(crate) fn native(name: &str, abi: AbiVersion) -> Option<Native> {
    Some(match name {
        "_initialize" | "_start" => shape!(() -> ()),
        n if n.starts_with("proxy_abi_version_") => shape!(() -> ()),
        "proxy_on_memory_allocate" | "malloc" => shape!((usize) -> *mut u8),
        "proxy_on_context_create"
        | "proxy_on_queue_ready"
        | "proxy_on_downstream_connection_close"
        | "proxy_on_upstream_connection_close" => shape!((u32, u32) -> ()),
        "proxy_on_vm_start" | "proxy_on_configure" => shape!((u32, usize) -> bool),
        "proxy_on_tick" | "proxy_on_log" | "proxy_on_delete" => shape!((u32) -> ()),
        "proxy_on_done" => shape!((u32) -> bool),
        "proxy_on_new_connection" => shape!((u32) -> u32),
        "proxy_on_request_headers" | "proxy_on_response_headers" if abi == AbiVersion::V0_1_0 => {
            shape!((u32, usize) -> u32)
        }
        "proxy_on_request_headers"
        | "proxy_on_response_headers"
        | "proxy_on_request_body"
        | "proxy_on_response_body"
        | "proxy_on_downstream_data"
        | "proxy_on_upstream_data" => shape!((u32, usize, bool) -> u32),
        "proxy_on_request_trailers" | "proxy_on_response_trailers" => shape!((u32, usize) -> u32),
        "proxy_on_http_call_response" => shape!((u32, u32, usize, usize, usize) -> ()),
        "proxy_on_grpc_receive_initial_metadata"
        | "proxy_on_grpc_receive_trailing_metadata"
        | "proxy_on_grpc_close" => {
            shape!((u32, u32, u32) -> ())
        }
        "proxy_on_grpc_receive" | "proxy_on_foreign_function" => shape!((u32, u32, usize) -> ()),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmux_abi::Callback;

    /// Every callback the ABI layer calls has a native shape with the same arity and result,
    /// in every version that has it.
    #[test]
    fn shapes_match_the_abi_callbacks() {
        for cb in Callback::ALL {
            if matches!(cb, Callback::Main | Callback::MainVoid) {
                assert!(native(cb.name(), AbiVersion::V0_2_1).is_none());
                continue;
            }
            for v in AbiVersion::ALL {
                if !cb.versions().contains(v) {
                    continue;
                }
                let sig = cb.signature(v);
                let n = native(cb.name(), v).unwrap_or_else(|| panic!("{} has no native shape", cb.name()));
                assert_eq!(n.arity, sig.params.len(), "{} {v:?}", cb.name());
                assert_eq!(n.returns, !sig.results.is_empty(), "{} {v:?}", cb.name());
            }
        }
        assert!(native("proxy_abi_version_0_2_1", AbiVersion::V0_2_1).is_some_and(|n| n.arity == 0));
        assert!(native("proxy_on_unknown", AbiVersion::V0_2_1).is_none());
    }

    extern "C" fn add3(a: u32, b: usize, c: bool) -> u32 {
        a + b as u32 + u32::from(c)
    }

    extern "C" fn alloc(size: usize) -> *mut u8 {
        std::ptr::without_provenance_mut(size * 2)
    }

    #[test]
    fn callers_narrow_and_widen() {
        let n = native("proxy_on_request_body", AbiVersion::V0_2_1).unwrap();
        // SAFETY: `add3` has exactly the (u32, usize, bool) -> u32 shape.
        let r = unsafe { (n.call)(add3 as *const c_void, &[40, 1, 1]) };
        assert_eq!(r, Some(42));
        let n = native("proxy_on_memory_allocate", AbiVersion::V0_2_1).unwrap();
        // SAFETY: `alloc` has exactly the (usize) -> *mut u8 shape.
        let r = unsafe { (n.call)(alloc as *const c_void, &[1 << 40]) };
        assert_eq!(r, Some(1 << 41));
    }
}
