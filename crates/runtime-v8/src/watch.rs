//! CPU deadlines and interrupts: the shared watchdog ([`wasmux_abi::watchdog`]) stopping an
//! isolate with `Isolate::TerminateExecution`; a termination that outlived its call is undone
//! with `CancelTerminateExecution`, leaving the isolate usable.

use std::time::Duration;

use wasmux_abi::{Error, Result};

use crate::ENGINE_NAME;
use crate::ffi::{self, IsolatePtr};

/// The deadline state of one instance.
pub(crate) type Watch = wasmux_abi::watchdog::Watch<IsolatePtr>;

/// The engine's watchdog.
pub(crate) type Watchdog = wasmux_abi::watchdog::Watchdog<IsolatePtr>;

impl wasmux_abi::watchdog::Terminate for IsolatePtr {
    fn terminate(self) {
        // SAFETY: the watch calls this only while the isolate is attached, under its lock; the
        // instance detaches it before disposing of the isolate. TerminateExecution is
        // thread-safe.
        unsafe { ffi::wasmux_v8_terminate(self.0.as_ptr()) };
    }

    fn cancel(self) {
        // SAFETY: as above; CancelTerminateExecution is thread-safe.
        unsafe { ffi::wasmux_v8_cancel_terminate(self.0.as_ptr()) };
    }
}

/// Starts the engine's watchdog (ticking every `tick` while a deadline may pass).
pub(crate) fn start(tick: Duration) -> Result<Watchdog> {
    Watchdog::start("wasmux-v8-watchdog", tick)
        .map_err(|e| Error::Engine { engine: ENGINE_NAME, message: format!("cannot start the watchdog: {e}") })
}
