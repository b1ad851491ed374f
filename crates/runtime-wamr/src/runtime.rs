//! The process-wide WAMR runtime: initialized once, never torn down; the per-thread
//! environment; and the two WAMR functions `wamrx-sys` does not bind.

use std::sync::OnceLock;

use wamrx_sys as sys;
use wasmux_abi::{Error, Result};

use crate::{ENGINE_NAME, imports, instance};

/// WAMR functions outside `wasm_export.h`, exported by the static library all the same
/// (declared in `core/iwasm/common/wasm_runtime_common.h`, WAMR 2.4.3, built with the thread
/// manager).
mod internal {
    use wamrx_sys::wasm_exec_env_t;

    unsafe extern "C" {
        /// The module's whole auxiliary stack: its top (`start_offset`) and size.
        pub(crate) fn wasm_exec_env_get_aux_stack(
            exec_env: wasm_exec_env_t,
            start_offset: *mut u64,
            size: *mut u32,
        ) -> bool;
        /// Sets the auxiliary stack of `exec_env` (and the stack pointer global to its top).
        pub(crate) fn wasm_exec_env_set_aux_stack(exec_env: wasm_exec_env_t, start_offset: u64, size: u32) -> bool;
        /// Copies the instance's exception (at most 128 bytes, NUL-terminated) under WAMR's
        /// exception lock; returns whether there is one.
        pub(crate) fn wasm_runtime_copy_exception(
            module_inst: wamrx_sys::wasm_module_inst_t,
            exception_buf: *mut core::ffi::c_char,
        ) -> bool;
    }
}

pub(crate) use internal::{wasm_exec_env_get_aux_stack, wasm_exec_env_set_aux_stack, wasm_runtime_copy_exception};

/// The size of WAMR's exception buffer (`EXCEPTION_BUF_LEN`).
pub(crate) const EXCEPTION_BUF_LEN: usize = 128;

/// The outcome of the one-time initialization.
static RUNTIME: OnceLock<Result<(), String>> = OnceLock::new();

/// Initializes WAMR for the process, once: the runtime, the host functions, the memory
/// growth callback. Later calls return the first outcome.
pub(crate) fn init() -> Result<()> {
    RUNTIME
        .get_or_init(|| {
            let mut args = sys::RuntimeInitArgs {
                mem_alloc_type: sys::Alloc_With_System_Allocator,
                // The thread manager splits auxiliary stacks between `max_thread_num + 1`
                // threads; 0 is not accepted (it keeps WAMR's default of 4), so ask for the
                // least. The instance gets its whole stack back (see `instance`).
                max_thread_num: 1,
                ..Default::default()
            };
            // SAFETY: `args` is a fully initialized `RuntimeInitArgs` (no native symbols, the
            // system allocator); WAMR serializes initialization behind its own lock and counts
            // references, so this is sound even if other code in the process initializes it too.
            if !unsafe { sys::wasm_runtime_full_init(&mut args) } {
                return Err("wasm_runtime_full_init failed".to_string());
            }
            // SAFETY: plain setters of process-wide settings, after initialization. The
            // callback is an `extern "C"` function that lives as long as the process.
            unsafe {
                // Failures are reported through the API (error buffers, exceptions); WAMR's
                // own log lines would only duplicate them on stdout.
                sys::wasm_runtime_set_log_level(sys::WASM_LOG_LEVEL_FATAL);
                sys::wasm_runtime_set_enlarge_mem_error_callback(Some(instance::growth_failed), std::ptr::null_mut());
            }
            imports::register()
        })
        .clone()
        .map_err(|message| Error::Engine { engine: ENGINE_NAME, message: format!("cannot initialize WAMR: {message}") })
}

/// Runs WAMR's per-thread set-up once on the current thread, and its teardown at thread exit.
pub(crate) fn ensure_thread_env() {
    struct ThreadEnv;

    impl Drop for ThreadEnv {
        fn drop(&mut self) {
            // SAFETY: pairs with the `wasm_runtime_init_thread_env` below, on the same thread,
            // at its exit (no WAMR call of this thread can be running then).
            unsafe { sys::wasm_runtime_destroy_thread_env() };
        }
    }

    thread_local! {
        static ENV: ThreadEnv = {
            // SAFETY: the runtime is initialized (every caller holds an engine, module or
            // instance, all made after `init`). WAMR sets up this thread's environment (a
            // no-op on Linux without hardware bound checks; signal and thread state elsewhere).
            unsafe { sys::wasm_runtime_init_thread_env() };
            ThreadEnv
        };
    }
    ENV.with(|_| {});
}
