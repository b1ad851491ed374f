//! Callback deadlines and interrupts: a watchdog thread that calls `wasm_runtime_terminate`.
//!
//! Each instance has a [`Watch`]: one atomic word saying whether a top-level call is running,
//! since which tick, and whether its termination was requested. Starting and finishing a call
//! are one atomic store and one atomic swap.
//!
//! The engine's watchdog thread advances a coarse clock every tick and looks at the watches of
//! instances that have a deadline; a call past it is terminated. It ticks only while a call's
//! deadline may pass (`CoarseClock::keep_ticking`), and parks when the engine is idle. The race that matters is a
//! termination landing after the call it was meant for has finished, which would stop the
//! next call: a termination is only requested under the watch's mutex, and only while the word
//! still says "running, not yet requested" (a compare-and-swap); a call that finds the
//! "requested" bit when it finishes takes the same mutex, so the termination is complete
//! before the instance clears it.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use wamrx_sys as sys;
use wasmux_abi::deadline::CoarseClock;
use wasmux_abi::{Error, Result, StopReason};

use crate::ENGINE_NAME;

const RUNNING: u64 = 1;
const REQUESTED: u64 = 2;
const SHIFT: u32 = 2;

const REASON_DEADLINE: u8 = 1;
const REASON_INTERRUPT: u8 = 2;

/// A WAMR module instance that another thread may terminate.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target(pub(crate) sys::wasm_module_inst_t);

// SAFETY: the pointer is only used for `wasm_runtime_terminate`, which WAMR makes safe to call
// from any thread (it takes the cluster and exception locks), and only while the watch holds
// it, that is while the instance exists (it detaches itself before it is freed).
unsafe impl Send for Target {}

/// The deadline state of one instance.
#[derive(Debug)]
pub(crate) struct Watch {
    /// `start_tick << SHIFT | REQUESTED | RUNNING`, or 0 when idle.
    state: AtomicU64,
    clock: CoarseClock,
    /// The deadline in ticks (rounded up), and as configured.
    deadline: Option<(u64, Duration)>,
    /// Why the last termination was requested.
    reason: AtomicU8,
    target: Mutex<Option<Target>>,
}

impl Watch {
    fn lock(&self) -> MutexGuard<'_, Option<Target>> {
        self.target.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Attaches the instance once it exists, or detaches it before it goes away.
    pub(crate) fn set_target(&self, target: Option<Target>) {
        *self.lock() = target;
    }

    /// A top-level call starts: its deadline runs from now, and requests made before are gone.
    pub(crate) fn start(&self) {
        // The watchdog ticks through the deadline; without one it is not needed.
        let now = self.clock.keep_ticking(self.deadline.map_or(0, |(ticks, _)| ticks));
        self.state.store((now << SHIFT) | RUNNING, Ordering::Release);
    }

    /// The top-level call is over: no termination can be requested for it any more. Returns
    /// why one was, after waiting for it to complete; the caller then clears it.
    pub(crate) fn finish(&self) -> Option<StopReason> {
        let prev = self.state.swap(0, Ordering::AcqRel);
        if prev & REQUESTED == 0 {
            return None;
        }
        // The requester holds the lock from its compare-and-swap until the termination is
        // done; taking it orders the caller's clearing after it.
        drop(self.lock());
        Some(self.stopped())
    }

    /// Whether the running call's termination was requested (one atomic load, done by every
    /// host call).
    pub(crate) fn requested(&self) -> bool {
        self.state.load(Ordering::Acquire) & REQUESTED != 0
    }

    /// Why the current or last call was terminated.
    pub(crate) fn stopped(&self) -> StopReason {
        match (self.reason.load(Ordering::Relaxed), self.deadline) {
            (REASON_DEADLINE, Some((_, d))) => StopReason::Deadline(d),
            _ => StopReason::Interrupted,
        }
    }

    /// Terminates the running call if `pred` holds for its state word. Returns whether it did.
    fn terminate_if(&self, reason: u8, pred: impl Fn(u64) -> bool) -> bool {
        let guard = self.lock();
        let Some(target) = *guard else { return false };
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if s & RUNNING == 0 || s & REQUESTED != 0 || !pred(s) {
                return false;
            }
            // Only this function sets REQUESTED, under the lock: the reason can be stored
            // before the bit that publishes it.
            self.reason.store(reason, Ordering::Relaxed);
            match self.state.compare_exchange_weak(s, s | REQUESTED, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        // SAFETY: the instance is alive while the watch holds it (it detaches itself, under
        // this lock, before it is freed); `wasm_runtime_terminate` only sets the instance's
        // exception and its execution environment's termination flag, under WAMR's locks,
        // which is what it is meant for from another thread.
        unsafe { sys::wasm_runtime_terminate(target.0) };
        true
    }

    /// Stops the running call, if any (the interrupt handle).
    pub(crate) fn interrupt(&self) {
        self.terminate_if(REASON_INTERRUPT, |_| true);
    }

    /// Called by the watchdog: terminates a call past its deadline.
    fn check(&self) {
        let Some((ticks, _)) = self.deadline else { return };
        let now = self.clock.now();
        let late = |s: u64| s & RUNNING != 0 && s & REQUESTED == 0 && now.saturating_sub(s >> SHIFT) > ticks;
        // Most calls are on time: look without the lock first.
        if late(self.state.load(Ordering::Acquire)) {
            self.terminate_if(REASON_DEADLINE, late);
        }
    }

    /// The trap of a stopped call.
    pub(crate) fn trap(&self) -> Error {
        Error::new_trap(ENGINE_NAME, wasmux_abi::TrapKind::Deadline, self.stopped().to_string())
    }
}

/// The engine's watchdog: a coarse clock, and the watches that have a deadline.
#[derive(Debug)]
pub(crate) struct Watchdog {
    clock: CoarseClock,
    watches: Arc<Mutex<Vec<Weak<Watch>>>>,
}

impl Watchdog {
    /// Starts the watchdog thread; it stops once the watchdog is dropped.
    pub(crate) fn start(tick: Duration) -> Result<Self> {
        let watches: Arc<Mutex<Vec<Weak<Watch>>>> = Arc::default();
        let list = Arc::downgrade(&watches);
        let clock = CoarseClock::start("wasmux-wamr-watchdog", tick, move || {
            let Some(watches) = list.upgrade() else { return false };
            let mut watches = watches.lock().unwrap_or_else(PoisonError::into_inner);
            watches.retain(|w| w.upgrade().map(|watch| watch.check()).is_some());
            true
        })
        .map_err(|e| Error::Engine { engine: ENGINE_NAME, message: format!("cannot start the watchdog: {e}") })?;
        Ok(Self { clock, watches })
    }

    /// A new watch for calls limited to `deadline` (`None`: interrupts only).
    pub(crate) fn watch(&self, deadline: Option<Duration>) -> Arc<Watch> {
        let watch = Arc::new(Watch {
            state: AtomicU64::new(0),
            deadline: deadline.map(|d| (self.clock.ticks(d), d)),
            clock: self.clock.clone(),
            reason: AtomicU8::new(0),
            target: Mutex::new(None),
        });
        if deadline.is_some() {
            self.watches.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(&watch));
        }
        watch
    }
}
