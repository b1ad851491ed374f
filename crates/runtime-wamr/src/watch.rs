//! Callback deadlines and interrupts: the shared watchdog ([`wasmux_abi::watchdog`]) stopping
//! an instance with `wasm_runtime_terminate`.

use std::time::Duration;

use wamrx_sys as sys;
use wasmux_abi::{Error, Result};

use crate::ENGINE_NAME;

/// A WAMR module instance that another thread may terminate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target(pub(crate) sys::wasm_module_inst_t);

// SAFETY: the pointer is only used for `wasm_runtime_terminate`, which WAMR makes safe to call
// from any thread (it takes the cluster and exception locks), and only while the watch holds
// it, that is while the instance exists (it detaches itself before it is freed).
unsafe impl Send for Target {}

impl wasmux_abi::watchdog::Terminate for Target {
    fn terminate(self) {
        // SAFETY: the watch calls this only while the instance is attached, under its lock; the
        // instance detaches itself (under the same lock) before it is freed.
        // `wasm_runtime_terminate` only sets the instance's exception and its execution
        // environment's termination flag, under WAMR's locks, which is what it is for.
        unsafe { sys::wasm_runtime_terminate(self.0) };
    }
}

/// The deadline state of one instance.
pub(crate) type Watch = wasmux_abi::watchdog::Watch<Target>;

/// The engine's watchdog.
pub(crate) type Watchdog = wasmux_abi::watchdog::Watchdog<Target>;

/// Starts the engine's watchdog (ticking every `tick` while a deadline may pass).
pub(crate) fn start(tick: Duration) -> Result<Watchdog> {
    Watchdog::start("wasmux-wamr-watchdog", tick)
        .map_err(|e| Error::Engine { engine: ENGINE_NAME, message: format!("cannot start the watchdog: {e}") })
}
