//! Callback deadlines and interrupts for engines stopped from another thread (V8's
//! `TerminateExecution`, WAMR's `wasm_runtime_terminate`): a watchdog thread on a
//! [`CoarseClock`], and one [`Watch`] per instance.
//!
//! A watch is one atomic word that says whether a top-level call is running, since which tick,
//! and whether its termination was requested; starting and finishing a call are one atomic
//! store and one atomic swap, with no lock. The watchdog ticks only while a call's deadline may
//! pass (it parks when the engine is idle; every tick for a short deadline, at the coarse pace
//! of [`CoarseClock`] otherwise) and terminates a call past its deadline.
//!
//! The race that matters is a termination landing after the call it was meant for has
//! finished, which would stop the next call. A termination is requested only under the watch's
//! mutex, and only while the word still says "running, not yet requested" (a
//! compare-and-swap); a call that finds the "requested" bit when it finishes takes the same
//! mutex, so the termination is complete before the engine clears it
//! ([`Terminate::cancel`]).

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use crate::deadline::CoarseClock;
use crate::{Error, StopReason, TrapKind};

const RUNNING: u64 = 1;
const REQUESTED: u64 = 2;
const SHIFT: u32 = 2;

const REASON_DEADLINE: u8 = 1;
const REASON_INTERRUPT: u8 = 2;

/// An engine's handle to an instance that another thread may stop.
///
/// A [`Watch`] calls these only while the handle is attached ([`Watch::set_target`]) and
/// under the watch's lock; an engine detaches the handle before the instance goes away, so an
/// implementation may rely on the instance being alive.
pub trait Terminate: Copy + Send + 'static {
    /// Asks the engine to stop the instance's running call.
    fn terminate(self);

    /// The call a termination was requested for has finished: undo what the request left on
    /// the instance, if the engine needs it (V8: `CancelTerminateExecution`).
    fn cancel(self) {}
}

/// The deadline state of one instance.
#[derive(Debug)]
pub struct Watch<T> {
    /// `start_tick << SHIFT | REQUESTED | RUNNING`, or 0 when no call runs.
    state: AtomicU64,
    clock: CoarseClock,
    /// The deadline in ticks (rounded up), and as configured.
    deadline: Option<(u64, Duration)>,
    /// Why the last termination was requested.
    reason: AtomicU8,
    target: Mutex<Option<T>>,
}

impl<T: Terminate> Watch<T> {
    fn lock(&self) -> MutexGuard<'_, Option<T>> {
        self.target.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Attaches the instance once it exists, or detaches it before it goes away.
    pub fn set_target(&self, target: Option<T>) {
        *self.lock() = target;
    }

    /// A top-level call starts: its deadline runs from now.
    pub fn start(&self) {
        // The watchdog ticks through the deadline (every tick for a short one); without one it
        // is not needed.
        let now = match self.deadline {
            Some((ticks, _)) => self.clock.keep_ticking_through(ticks, 0),
            None => self.clock.keep_ticking(0),
        };
        self.state.store((now << SHIFT) | RUNNING, Ordering::Release);
    }

    /// The top-level call is over: no termination can be requested for it any more. Returns
    /// why one was, once it is complete and cancelled ([`Terminate::cancel`]).
    pub fn finish(&self) -> Option<StopReason> {
        let prev = self.state.swap(0, Ordering::AcqRel);
        if prev & REQUESTED == 0 {
            return None;
        }
        // The requester holds the lock from its compare-and-swap until the termination is
        // requested: taking it orders the cancel after it.
        if let Some(target) = *self.lock() {
            target.cancel();
        }
        Some(self.stopped())
    }

    /// Whether the running call's termination was requested (one atomic load, cheap enough
    /// for every host call). Acquire, so that [`Self::stopped`] sees the reason.
    pub fn requested(&self) -> bool {
        self.state.load(Ordering::Acquire) & REQUESTED != 0
    }

    /// Why the current or last call was stopped.
    pub fn stopped(&self) -> StopReason {
        match (self.reason.load(Ordering::Relaxed), self.deadline) {
            (REASON_DEADLINE, Some((_, d))) => StopReason::Deadline(d),
            _ => StopReason::Interrupted,
        }
    }

    /// The trap of a stopped call, for engine `engine`.
    pub fn trap(&self, engine: &'static str) -> Error {
        Error::new_trap(engine, TrapKind::Deadline, self.stopped().to_string())
    }

    /// Stops the running call, if any (an interrupt handle).
    pub fn interrupt(&self) {
        self.terminate_if(REASON_INTERRUPT, |_| true);
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
        target.terminate();
        drop(guard);
        true
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
}

/// An engine's watchdog: a coarse clock, and the watches that have a deadline.
#[derive(Debug)]
pub struct Watchdog<T> {
    clock: CoarseClock,
    watches: Arc<Mutex<Vec<Weak<Watch<T>>>>>,
}

impl<T: Terminate> Watchdog<T> {
    /// Starts the watchdog thread (named `name`, ticking every `tick` while needed); it stops
    /// once the watchdog is dropped.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn start(name: &str, tick: Duration) -> std::io::Result<Self> {
        let watches: Arc<Mutex<Vec<Weak<Watch<T>>>>> = Arc::default();
        let list = Arc::downgrade(&watches);
        let clock = CoarseClock::start(name, tick, move |_| {
            let Some(watches) = list.upgrade() else { return false };
            let mut watches = watches.lock().unwrap_or_else(PoisonError::into_inner);
            watches.retain(|w| w.upgrade().map(|watch| watch.check()).is_some());
            true
        })?;
        Ok(Self { clock, watches })
    }

    /// The watchdog's clock.
    pub fn clock(&self) -> &CoarseClock {
        &self.clock
    }

    /// A new watch for calls limited to `deadline` (`None`: interrupts only).
    pub fn watch(&self, deadline: Option<Duration>) -> Arc<Watch<T>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::time::Instant;

    /// A target that counts terminations and cancels.
    #[derive(Debug, Clone, Copy)]
    struct Counter(&'static AtomicUsize, &'static AtomicUsize);

    impl Terminate for Counter {
        fn terminate(self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn cancel(self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_late_call_is_terminated_once_and_cancelled_at_its_end() {
        static TERMINATED: AtomicUsize = AtomicUsize::new(0);
        static CANCELLED: AtomicUsize = AtomicUsize::new(0);
        let dog: Watchdog<Counter> = Watchdog::start("test-watchdog", Duration::from_millis(1)).unwrap();
        let watch = dog.watch(Some(Duration::from_millis(5)));
        // Not attached: nothing to terminate.
        watch.start();
        watch.interrupt();
        assert!(!watch.requested());
        assert_eq!(watch.finish(), None);
        watch.set_target(Some(Counter(&TERMINATED, &CANCELLED)));
        // On time: nothing happens.
        watch.start();
        assert_eq!(watch.finish(), None);
        // Late: the watchdog terminates it, once.
        watch.start();
        let until = Instant::now() + Duration::from_secs(10);
        while !watch.requested() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(watch.requested(), "the deadline never fired");
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(TERMINATED.load(Ordering::SeqCst), 1);
        assert_eq!(watch.finish(), Some(StopReason::Deadline(Duration::from_millis(5))));
        assert_eq!(CANCELLED.load(Ordering::SeqCst), 1);
        // An interrupt stops a running call; after the call, it is dropped.
        watch.start();
        watch.interrupt();
        assert_eq!(watch.finish(), Some(StopReason::Interrupted));
        watch.interrupt();
        assert_eq!(TERMINATED.load(Ordering::SeqCst), 2);
        assert_eq!(watch.trap("test").trap().map(|t| t.kind), Some(TrapKind::Deadline));
    }
}
