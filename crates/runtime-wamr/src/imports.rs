//! The host functions: every entry of [`HOST_FUNCS`] registered once in WAMR's process-wide
//! native registry under every module name, one trampoline for all of them, and the [`Guest`]
//! view a host function gets of the calling instance.

use std::ffi::{CString, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

use wamrx_sys as sys;
use wasmux_abi::{Error, FuncRef, Guest, GuestMemory, HOST_FUNCS, HostFunc, HostState, OutOfBounds, Result};

use crate::instance::{self, State};
use crate::typed::{from_slot, signature};
use crate::{error, runtime};

/// The most parameters a host function may take (proxy-wasm's widest takes 12; WAMR's raw
/// convention passes up to 16 without allocating).
const MAX_ARGS: usize = 16;

/// Registers every host function with WAMR, once per process (from [`runtime::init`]).
///
/// WAMR keeps pointers to the symbol arrays and their strings for as long as they are
/// registered, which is for good: they are leaked on purpose (a few kilobytes, once).
pub(crate) fn register() -> Result<(), String> {
    let mut modules: Vec<&'static str> = Vec::new();
    for func in HOST_FUNCS {
        for &m in func.module_names() {
            if !modules.contains(&m) {
                modules.push(m);
            }
        }
    }
    for module in modules {
        let mut symbols = Vec::new();
        for func in HOST_FUNCS.iter().filter(|f| f.module_names().contains(&module)) {
            if func.params.len() > MAX_ARGS {
                return Err(format!("host function {func:?} takes too many parameters"));
            }
            let sig = signature(func.params, func.results)
                .ok_or_else(|| format!("host function {func:?} has a type WAMR cannot register"))?;
            let name = CString::new(func.name).map_err(|e| e.to_string())?;
            let sig = CString::new(sig).map_err(|e| e.to_string())?;
            symbols.push(sys::NativeSymbol {
                symbol: Box::leak(name.into_boxed_c_str()).as_ptr(),
                func_ptr: trampoline as *mut c_void,
                signature: Box::leak(sig.into_boxed_c_str()).as_ptr(),
                attachment: std::ptr::from_ref::<HostFunc>(func).cast_mut().cast(),
            });
        }
        let n = u32::try_from(symbols.len()).map_err(|e| e.to_string())?;
        let symbols: &'static mut [sys::NativeSymbol] = symbols.leak();
        let name: &'static std::ffi::CStr =
            Box::leak(CString::new(module).map_err(|e| e.to_string())?.into_boxed_c_str());
        // SAFETY: the module name and the symbol array (with its strings) are leaked, so they
        // outlive the registration as WAMR requires (it sorts the array in place and keeps
        // it); each symbol points at the raw-convention trampoline, with a `&'static HostFunc`
        // as attachment. Registration happens once, before any module is loaded.
        if !unsafe { sys::wasm_runtime_register_natives_raw(name.as_ptr(), symbols.as_mut_ptr(), n) } {
            return Err(format!("cannot register the host functions of `{module}`"));
        }
    }
    Ok(())
}

/// The one native function behind every host function (WAMR's raw convention: `argv` holds
/// one 64-bit slot per argument, and the result goes back in slot 0).
unsafe extern "C" fn trampoline(exec_env: sys::wasm_exec_env_t, argv: *mut u64) {
    // SAFETY: WAMR calls this with the live execution environment of the calling instance.
    let (attachment, module_inst) =
        unsafe { (sys::wasm_runtime_get_function_attachment(exec_env), sys::wasm_runtime_get_module_inst(exec_env)) };
    // SAFETY: as above, the instance is live.
    let state = unsafe { sys::wasm_runtime_get_custom_data(module_inst) }.cast::<State>();
    if attachment.is_null() || state.is_null() {
        // SAFETY: a live instance; the message is a static C string (WAMR copies it).
        unsafe { sys::wasm_runtime_set_exception(module_inst, c"wasmux: host function without its state".as_ptr()) };
        return;
    }
    // SAFETY: every symbol registered with this trampoline has a `&'static HostFunc` as its
    // attachment (see `register`).
    let func: &'static HostFunc = unsafe { &*attachment.cast::<HostFunc>() };
    let mut raw = [0u64; MAX_ARGS];
    let n = func.params.len().min(MAX_ARGS);
    for (i, (slot, &ty)) in raw.iter_mut().zip(func.params).enumerate().take(n) {
        // SAFETY: WAMR passes one slot per parameter of the import's type, which it checked
        // against this function's signature when it linked the import.
        *slot = from_slot(unsafe { *argv.add(i) }, ty);
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| invoke(state, exec_env, module_inst, func, &raw[..n])));
    let failed = match outcome {
        Ok(Ok(ret)) => {
            if !func.results.is_empty() {
                // SAFETY: slot 0 exists (WAMR always passes at least one) and takes the result.
                unsafe { *argv = ret };
            }
            return;
        }
        Ok(Err(e)) => e,
        Err(_) => error::engine_msg(format!("host function {func:?} panicked")),
    };
    // SAFETY: the host function has returned: nothing borrows the state.
    unsafe { (*state).raised = Some(failed) };
    // SAFETY: a live instance; the message is a static C string. WAMR unwinds the guest when
    // the trampoline returns.
    unsafe { sys::wasm_runtime_set_exception(module_inst, error::RAISED.as_ptr()) };
}

/// Runs a host function for the guest, unless the running call's termination was requested.
fn invoke(
    state: *mut State,
    exec_env: sys::wasm_exec_env_t,
    module_inst: sys::wasm_module_inst_t,
    func: &HostFunc,
    args: &[u64],
) -> Result<u64> {
    {
        // SAFETY: the state is live; a short shared borrow, no host code runs meanwhile.
        let watch = unsafe { &(*state).watch };
        if watch.requested() {
            return Err(watch.trap(crate::ENGINE_NAME));
        }
    }
    let mut cx = Cx { state, exec_env, module_inst };
    func.invoke(&mut cx, args)
}

/// The calling instance, as the ABI layer sees it from inside a host function. It holds raw
/// pointers only: each method borrows the state for its own duration, so a re-entrant call
/// (which runs host functions of its own) never overlaps a borrow.
struct Cx {
    state: *mut State,
    exec_env: sys::wasm_exec_env_t,
    module_inst: sys::wasm_module_inst_t,
}

impl Cx {
    fn st(&mut self) -> &mut State {
        // SAFETY: the state outlives the host call; `&mut self` ties the borrow to this `Cx`,
        // and the only way back into the guest (`Guest::call`) also takes `&mut self`, so no
        // borrow handed out here is live while guest code (and a nested host call) runs.
        unsafe { &mut *self.state }
    }
}

impl Guest for Cx {
    fn state(&mut self) -> &mut HostState {
        &mut self.st().host
    }

    fn memory_size(&mut self) -> u64 {
        instance::memory(self.st()).map_or(0, |(_, len)| len as u64)
    }

    fn read(&mut self, ptr: u64, out: &mut [u8]) -> Result<(), OutOfBounds> {
        instance::read(self.st(), ptr, out)
    }

    fn write(&mut self, ptr: u64, data: &[u8]) -> Result<(), OutOfBounds> {
        instance::write(self.st(), ptr, data)
    }

    fn memory_and_state(&mut self) -> (Option<GuestMemory<'_>>, &mut HostState) {
        let st = self.st();
        let memory = instance::memory(st).map(|(base, len)| {
            // SAFETY: `base..base + len` is the instance's linear memory right now; the guest
            // is suspended in this host call and cannot grow or touch it until the borrow of
            // `self` ends (calling back into the guest needs `&mut self`). The state lives in
            // host memory, so the two borrows are disjoint.
            GuestMemory::Linear(unsafe { std::slice::from_raw_parts_mut(base, len) })
        });
        (memory, &mut st.host)
    }

    fn call(&mut self, func: FuncRef, args: &[u64]) -> Result<Option<u64>, Error> {
        let result = instance::call(self.state, self.exec_env, self.module_inst, func, args);
        if result.is_err() && !self.st().watch.requested() {
            // The failed call left its exception behind; the host function decides whether
            // the outer call fails too (by returning the error). A termination stays: the
            // outer call must stop.
            runtime::ensure_thread_env();
            // SAFETY: a live instance, suspended in this host call.
            unsafe { sys::wasm_runtime_clear_exception(self.module_inst) };
        }
        result
    }
}
