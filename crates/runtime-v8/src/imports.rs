//! Host functions: the trampoline the bridge calls for every guest import, and the [`Guest`]
//! view a host function gets of the calling instance.
//!
//! The bridge links one `FunctionTemplate` callback per function import of the module, each
//! naming its entry of [`HOST_FUNCS`]. The callback converts the guest's arguments to raw words
//! and calls [`host_call`] with the instance's state. A host function that fails (a trap in a
//! re-entrant call, for instance) leaves its error in the state; the bridge then throws a JS
//! exception to unwind the guest, and the outer call returns that same error.

use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};

use wasmux_abi::{Error, FuncRef, Guest, HOST_FUNCS, HostState, OutOfBounds, Result};

use crate::error;
use crate::ffi::GROW_NOTE;
use crate::instance::{self, State};

/// The [`HostFn`](crate::ffi::HostFn) the bridge calls when the guest calls an import.
/// Returns 0 with the result in `result`, or 1 with the error kept in the state.
///
/// # Safety
/// `state` is the state pointer of an instance that is running a call on this thread (the
/// bridge passes the one it was given at instantiation, only during calls the instance makes),
/// and no Rust reference into that state is alive; `args` holds `nargs` words and `result` is
/// writable.
pub(crate) unsafe extern "C" fn host_call(
    state: *mut c_void,
    func: u32,
    args: *const u64,
    nargs: u32,
    result: *mut u64,
) -> i32 {
    let state = state.cast::<State>();
    if func == GROW_NOTE && nargs == 3 {
        // SAFETY: three words (guaranteed by the caller), and no reference into the state is
        // alive; this one ends with the block.
        unsafe {
            let (delta, result, pages) = (*args, *args.add(1), *args.add(2));
            let s = &mut *state;
            s.memory.fresh = false;
            if result == u64::from(u32::MAX) {
                // Refused: was it the host's limit (as the other engines count it)?
                s.memory_denied |= (pages + delta) * 65536 > s.max_memory;
            }
        }
        return 0;
    }
    // A call past its deadline runs no more host functions. V8 stops the guest at its next
    // loop header or function entry; this stops it at its next host call too, which is sooner
    // when the guest spends its time in the host. One atomic load.
    // SAFETY: no reference into the state is alive (guaranteed by the caller); this one ends
    // with the block.
    unsafe {
        let s = &mut *state;
        if s.watch.requested() {
            s.pending = Some(s.watch.trap(crate::ENGINE_NAME));
            return 1;
        }
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let Some(func) = HOST_FUNCS.get(func as usize) else {
            return Err(error::engine_msg(format!("unknown host function {func}")));
        };
        let args = if nargs == 0 {
            &[][..]
        } else {
            // SAFETY: the bridge passes `nargs` initialized words (guaranteed by the caller).
            unsafe { std::slice::from_raw_parts(args, nargs as usize) }
        };
        func.invoke(&mut Cx { state }, args)
    }));
    let outcome = outcome.unwrap_or_else(|_| Err(error::engine_msg("a host function panicked")));
    match outcome {
        Ok(value) => {
            // SAFETY: `result` is writable (guaranteed by the caller).
            unsafe { result.write(value) };
            0
        }
        Err(e) => {
            // SAFETY: as above, no reference into the state is alive any more.
            unsafe { (*state).pending = Some(e) };
            1
        }
    }
}

/// The calling instance, as the ABI layer sees it from inside a host function. Holds the raw
/// state pointer and borrows from it only for the duration of each method, so a re-entrant
/// call (the guest allocator) can use the state in turn.
struct Cx {
    state: *mut State,
}

impl Guest for Cx {
    fn state(&mut self) -> &mut HostState {
        // SAFETY: the state is alive during the host call; the returned borrow is tied to
        // `&mut self`, so no re-entrant call can run while it is alive.
        unsafe { &mut (*self.state).host }
    }

    fn memory_size(&mut self) -> u64 {
        // SAFETY: the state is alive and not otherwise borrowed during the host call.
        unsafe { instance::memory_size(self.state) }
    }

    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        // SAFETY: as above.
        unsafe { instance::read(self.state, ptr, out) }
    }

    fn write(&mut self, ptr: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        // SAFETY: as above.
        unsafe { instance::write(self.state, ptr, data) }
    }

    fn call(&mut self, func: FuncRef, args: &[u64]) -> Result<Option<u64>, Error> {
        // SAFETY: as above; `instance::call` keeps no borrow across the bridge call.
        unsafe { instance::call(self.state, func, args) }
    }
}
