//! CPU deadlines and interrupts: a watchdog thread that calls `Isolate::TerminateExecution`.
//!
//! Each instance has a [`Watch`]: one atomic word that says whether a top-level call is running,
//! since which tick, and whether a termination was requested for it. Starting and finishing a
//! call are one atomic store and one atomic swap; no lock on the fast path.
//!
//! The engine's watchdog thread ticks (1 ms by default), publishes a coarse clock and scans
//! the registered watches; a running call past its deadline is terminated. It ticks only while
//! a call's deadline may pass (`CoarseClock::keep_ticking`), and parks when the engine is idle. The race that
//! matters is a termination landing after the call it was meant for has finished, which would
//! kill the next call: a termination is requested only under the watch's mutex and only while
//! the word still says "running, not yet requested" (a compare-and-swap), and a call that
//! finds the "requested" bit when it finishes takes the same mutex (so the request is complete)
//! and cancels it with `CancelTerminateExecution`, leaving the isolate usable.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use wasmux_abi::deadline::CoarseClock;

pub(crate) use wasmux_abi::StopReason as Stopped;
use wasmux_abi::{Error, Result};

use crate::ENGINE_NAME;
use crate::ffi::{self, IsolatePtr};

const RUNNING: u64 = 1;
const REQUESTED: u64 = 2;
const SHIFT: u32 = 2;

const REASON_DEADLINE: u8 = 1;
const REASON_INTERRUPT: u8 = 2;

/// The deadline state of one instance.
#[derive(Debug)]
pub(crate) struct Watch {
    /// `start_tick << SHIFT | REQUESTED | RUNNING`, or 0 when idle.
    state: AtomicU64,
    /// The engine's coarse clock.
    clock: CoarseClock,
    /// The deadline, in ticks (rounded up) and as configured.
    deadline: Option<(u64, Duration)>,
    /// Why the last termination was requested.
    reason: AtomicU8,
    /// The isolate, until the instance is dropped.
    isolate: Mutex<Option<IsolatePtr>>,
}

impl Watch {
    pub(crate) fn new(clock: CoarseClock, deadline: Option<Duration>) -> Self {
        Self {
            state: AtomicU64::new(0),
            deadline: deadline.map(|d| (clock.ticks(d), d)),
            clock,
            reason: AtomicU8::new(0),
            isolate: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<IsolatePtr>> {
        self.isolate.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Attaches the isolate (after creation) or detaches it (before it goes away).
    pub(crate) fn set_isolate(&self, isolate: Option<IsolatePtr>) {
        *self.lock() = isolate;
    }

    /// A top-level call starts: its deadline runs from now.
    pub(crate) fn start(&self) {
        // The watchdog ticks through the deadline; without one it is not needed.
        let now = self.clock.keep_ticking(self.deadline.map_or(0, |(ticks, _)| ticks));
        self.state.store((now << SHIFT) | RUNNING, Ordering::Release);
    }

    /// The top-level call is over. Cancels a termination requested for it, if any, so the
    /// next call starts clean; returns why it was requested.
    pub(crate) fn finish(&self) -> Option<Stopped> {
        let prev = self.state.swap(0, Ordering::AcqRel);
        if prev & REQUESTED == 0 {
            return None;
        }
        // The requester holds the lock from its compare-and-swap until TerminateExecution
        // returns; taking it here orders our cancel after that call.
        let guard = self.lock();
        if let Some(isolate) = *guard {
            // SAFETY: the isolate is alive while the watch holds it (the instance detaches it
            // before freeing the isolate); CancelTerminateExecution is thread-safe.
            unsafe { ffi::wasmux_v8_cancel_terminate(isolate.0.as_ptr()) };
        }
        Some(self.stopped())
    }

    /// Whether a termination was requested for the running call (one atomic load: the host
    /// trampoline asks on every host call). Acquire, so that [`Self::trap`] sees the reason.
    pub(crate) fn requested(&self) -> bool {
        self.state.load(Ordering::Acquire) & REQUESTED != 0
    }

    /// Why the current or last call was terminated.
    pub(crate) fn stopped(&self) -> Stopped {
        match (self.reason.load(Ordering::Relaxed), self.deadline) {
            (REASON_DEADLINE, Some((_, d))) => Stopped::Deadline(d),
            _ => Stopped::Interrupted,
        }
    }

    /// Terminates the running call if `pred` holds for its state word. Returns whether it did.
    fn terminate_if(&self, reason: u8, pred: impl Fn(u64) -> bool) -> bool {
        let guard = self.lock();
        let Some(isolate) = *guard else { return false };
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            if s & RUNNING == 0 || s & REQUESTED != 0 || !pred(s) {
                return false;
            }
            // Only this function sets REQUESTED, under the lock, so no other request is in
            // flight: the reason can be stored before the bit that publishes it.
            self.reason.store(reason, Ordering::Relaxed);
            match self.state.compare_exchange_weak(s, s | REQUESTED, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        // SAFETY: the isolate is alive while the watch holds it, and the lock is held;
        // TerminateExecution is thread-safe.
        unsafe { ffi::wasmux_v8_terminate(isolate.0.as_ptr()) };
        true
    }

    /// Stops the running call, if any (an interrupt handle).
    pub(crate) fn interrupt(&self) {
        self.terminate_if(REASON_INTERRUPT, |_| true);
    }

    /// Called by the watchdog: terminates a call that ran past its deadline.
    fn check(&self) {
        let Some((ticks, _)) = self.deadline else { return };
        let now = self.clock.now();
        self.terminate_if(REASON_DEADLINE, |s| now.saturating_sub(s >> SHIFT) >= ticks);
    }

    /// The trap for a terminated call.
    pub(crate) fn trap(&self) -> Error {
        Error::new_trap(ENGINE_NAME, wasmux_abi::TrapKind::Deadline, self.stopped().to_string())
    }
}

/// The engine's watchdog: a coarse clock and the watches to check.
#[derive(Debug)]
pub(crate) struct Watchdog {
    pub(crate) clock: CoarseClock,
    watches: Arc<Mutex<Vec<Weak<Watch>>>>,
}

impl Watchdog {
    /// Starts the watchdog thread; it stops once the returned value is dropped.
    pub(crate) fn start(tick: Duration) -> Result<Self> {
        let watches: Arc<Mutex<Vec<Weak<Watch>>>> = Arc::default();
        let weak = Arc::downgrade(&watches);
        let clock = CoarseClock::start("wasmux-v8-watchdog", tick, move || {
            let Some(watches) = weak.upgrade() else { return false };
            let mut list = watches.lock().unwrap_or_else(PoisonError::into_inner);
            list.retain(|w| match w.upgrade() {
                Some(watch) => {
                    watch.check();
                    true
                }
                None => false,
            });
            true
        })
        .map_err(|e| Error::Engine { engine: ENGINE_NAME, message: format!("cannot start the watchdog: {e}") })?;
        Ok(Self { clock, watches })
    }

    /// A new watch, checked by this watchdog.
    pub(crate) fn watch(&self, deadline: Option<Duration>) -> Arc<Watch> {
        let watch = Arc::new(Watch::new(self.clock.clone(), deadline));
        if deadline.is_some() {
            self.watches.lock().unwrap_or_else(PoisonError::into_inner).push(Arc::downgrade(&watch));
        }
        watch
    }
}
