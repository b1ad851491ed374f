//! Callback deadlines for engines that check them at points of their own choosing (wasmtime's
//! epochs, wasmer's metering slices, host calls): a coarse wall clock kept by a thread, and the
//! bookkeeping of one top-level call.
//!
//! Reading the clock is one atomic load, far cheaper than `Instant::now`, so an engine can
//! afford to look at it on every check. Deadlines are thus precise to about one tick.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::StopReason;

/// A wall clock counting ticks since it started, advanced by a background thread.
///
/// The thread ticks only while calls may need it: each top-level call asks it to go on for the
/// span of its deadline ([`Self::keep_ticking`]); past the last such span it parks, so an idle
/// engine costs no wake-ups, and the next call wakes it. Cheap to clone; the thread stops once
/// every clone is dropped.
#[derive(Debug, Clone)]
pub struct CoarseClock {
    shared: Arc<ClockShared>,
}

#[derive(Debug)]
struct ClockShared {
    /// Ticks since the start, as last published.
    now: AtomicU64,
    /// The thread ticks at least until this tick.
    busy_until: AtomicU64,
    /// The thread is parked (or about to): `now` may be stale.
    parked: AtomicBool,
    start: Instant,
    /// The tick in nanoseconds, at least 100,000.
    tick_nanos: u64,
    thread: std::sync::OnceLock<std::thread::Thread>,
}

impl ClockShared {
    /// Ticks since the start, read from the wall clock.
    fn elapsed(&self) -> u64 {
        // In u64 nanoseconds (enough for 584 years): every call start reads it, and a u128
        // division costs more than the clock read.
        let d = self.start.elapsed();
        let nanos = d.as_secs().saturating_mul(1_000_000_000).saturating_add(u64::from(d.subsec_nanos()));
        nanos / self.tick_nanos
    }

    /// Publishes the wall clock's tick count (never backwards); returns it.
    fn publish(&self) -> u64 {
        let ticks = self.elapsed();
        // Written only when behind: every call start publishes, and the workers' instances
        // share the clock, so an unconditional read-modify-write would bounce its cache line
        // between cores on every call.
        if self.now.load(Ordering::Acquire) < ticks {
            self.now.fetch_max(ticks, Ordering::AcqRel);
        }
        ticks
    }
}

/// How long a parked clock thread sleeps before it looks whether the clock is gone.
const PARKED_CHECK: Duration = Duration::from_secs(1);

impl CoarseClock {
    /// Starts the clock thread (named `name`): every `tick` (at least 100 µs) while calls need
    /// it, it publishes the ticks elapsed since the start, then calls `on_tick`; it stops when
    /// `on_tick` returns `false` or the clock is dropped. The count follows the wall clock, so
    /// an oversleeping (or parked) thread does not slow it down.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn start(name: &str, tick: Duration, on_tick: impl Fn() -> bool + Send + 'static) -> std::io::Result<Self> {
        let tick = tick.max(Duration::from_micros(100));
        let shared = Arc::new(ClockShared {
            now: AtomicU64::new(0),
            busy_until: AtomicU64::new(0),
            parked: AtomicBool::new(false),
            start: Instant::now(),
            tick_nanos: u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX),
            thread: std::sync::OnceLock::new(),
        });
        let weak: Weak<ClockShared> = Arc::downgrade(&shared);
        let handle = std::thread::Builder::new().name(name.into()).spawn(move || {
            loop {
                std::thread::sleep(tick);
                let Some(s) = weak.upgrade() else { break };
                let ticks = s.publish();
                drop(s);
                if !on_tick() {
                    break;
                }
                let Some(s) = weak.upgrade() else { break };
                if ticks <= s.busy_until.load(Ordering::SeqCst) {
                    continue;
                }
                // Idle: park, unless a call asked for ticks since (it sees `parked` otherwise,
                // and unparks this thread).
                s.parked.store(true, Ordering::SeqCst);
                if ticks <= s.busy_until.load(Ordering::SeqCst) {
                    s.parked.store(false, Ordering::SeqCst);
                    continue;
                }
                drop(s);
                std::thread::park_timeout(PARKED_CHECK);
                let Some(s) = weak.upgrade() else { break };
                s.parked.store(false, Ordering::SeqCst);
                s.publish();
            }
        })?;
        // The thread only parks after this is set: it cannot reach a park before its first
        // tick, and nothing unparks it before a call, which needs the clock returned here.
        let _ = shared.thread.set(handle.thread().clone());
        Ok(Self { shared })
    }

    /// Ticks since the clock started (as of the last tick).
    #[inline]
    pub fn now(&self) -> u64 {
        self.shared.now.load(Ordering::Acquire)
    }

    /// The tick.
    pub fn tick(&self) -> Duration {
        Duration::from_nanos(self.shared.tick_nanos)
    }

    /// `d` in ticks, rounded up, at least one.
    pub fn ticks(&self, d: Duration) -> u64 {
        u64::try_from(d.as_nanos().div_ceil(u128::from(self.shared.tick_nanos))).unwrap_or(u64::MAX).max(1)
    }

    /// Keeps the clock ticking for at least `span` ticks from now (waking its thread if it
    /// parked), and returns the current tick. Call it when a call starts, with the span of its
    /// deadline: the clock then runs until the deadline can have passed.
    pub fn keep_ticking(&self, span: u64) -> u64 {
        let s = &self.shared;
        // The time now, not the last published tick: a thread that just woke from a park may not
        // have published yet, and a span counted from a stale tick could end before the thread's
        // next look at `busy_until`, which would park it again while this call runs.
        let mut now = s.publish();
        let until = now.saturating_add(span).saturating_add(2);
        if s.busy_until.load(Ordering::Relaxed) < until {
            s.busy_until.fetch_max(until, Ordering::SeqCst);
        }
        if s.parked.load(Ordering::SeqCst) {
            // The thread sleeps: the published count is stale.
            now = s.publish();
            s.busy_until.fetch_max(now.saturating_add(span).saturating_add(2), Ordering::SeqCst);
            if let Some(t) = s.thread.get() {
                t.unpark();
            }
        }
        now
    }

    /// Whether the clock thread is parked (no call has needed it for a while).
    pub fn is_parked(&self) -> bool {
        self.shared.parked.load(Ordering::SeqCst)
    }
}

/// The deadline of the running top-level call and the embedder's interrupt flag, for one
/// instance.
#[derive(Debug)]
pub struct CallDeadline {
    clock: CoarseClock,
    /// When the current top-level call started, in ticks.
    started: u64,
    /// The callback deadline, in ticks, and as configured (for messages).
    deadline: Option<(u64, Duration)>,
    /// The longest stretch between two checks, in ticks.
    check: u64,
    interrupt: Arc<AtomicBool>,
}

impl CallDeadline {
    /// Deadline bookkeeping for calls limited to `deadline` (`None`: no limit), checked at
    /// least every `check_every` so that `interrupt` is seen in time.
    pub fn new(
        clock: CoarseClock,
        deadline: Option<Duration>,
        check_every: Duration,
        interrupt: Arc<AtomicBool>,
    ) -> Self {
        let check = clock.ticks(check_every);
        let deadline = deadline.map(|d| (clock.ticks(d), d));
        Self { clock, started: 0, deadline, check, interrupt }
    }

    /// Starts a top-level call: a fresh deadline, and interrupt requests made before the call
    /// are dropped (the handle stops the running call only).
    pub fn start(&mut self) {
        // The clock ticks through the deadline (or one check interval without one).
        let span = self.deadline.map_or(self.check, |(ticks, _)| ticks.max(self.check));
        self.started = self.clock.keep_ticking(span);
        self.interrupt.store(false, Ordering::Release);
    }

    /// An interrupt handle for engines that see interrupts only at clock ticks (wasmtime's
    /// epochs): it sets the flag and keeps the clock ticking for a check interval, so a parked
    /// clock cannot leave the request unseen.
    pub fn interrupter(&self) -> impl Fn() + Send + Sync + 'static {
        let (clock, interrupt, check) = (self.clock.clone(), self.interrupt.clone(), self.check);
        move || {
            interrupt.store(true, Ordering::Release);
            clock.keep_ticking(check);
        }
    }

    /// Ticks since the call started.
    #[inline]
    pub fn elapsed(&self) -> u64 {
        self.clock.now().saturating_sub(self.started)
    }

    /// Ticks until the next check: the rest of the deadline, capped by the check interval, at
    /// least one.
    pub fn next_check(&self) -> u64 {
        let rest = self.deadline.map_or(u64::MAX, |(ticks, _)| (ticks + 1).saturating_sub(self.elapsed()));
        rest.min(self.check).max(1)
    }

    /// Whether the call must stop now: interrupted, or past its deadline.
    ///
    /// The clock lags real time by up to one tick, so the call's start may have been up to a
    /// tick later than the clock said: the deadline passes one tick after `ticks` have been
    /// counted, and a call never stops before its time.
    ///
    /// # Errors
    /// The reason to stop.
    #[inline]
    pub fn check(&self) -> Result<(), StopReason> {
        if self.interrupt.load(Ordering::Acquire) {
            return Err(StopReason::Interrupted);
        }
        match self.deadline {
            Some((ticks, deadline)) if self.elapsed() > ticks => Err(StopReason::Deadline(deadline)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_passes_with_the_clock() {
        let clock = CoarseClock::start("test-clock", Duration::from_millis(1), || true).unwrap();
        let interrupt = Arc::new(AtomicBool::new(false));
        let mut call = CallDeadline::new(
            clock.clone(),
            Some(Duration::from_millis(5)),
            Duration::from_millis(10),
            interrupt.clone(),
        );
        assert_eq!(clock.ticks(Duration::from_micros(1500)), 2);
        call.start();
        assert!(call.check().is_ok());
        assert!((1..=6).contains(&call.next_check()));
        while call.check().is_ok() {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(call.check(), Err(StopReason::Deadline(Duration::from_millis(5))));
        // A new call starts afresh; an interrupt stops it; the next start clears the interrupt.
        call.start();
        interrupt.store(true, Ordering::Release);
        assert_eq!(call.check(), Err(StopReason::Interrupted));
        call.start();
        assert!(call.check().is_ok());
    }

    /// Waits (bounded) until `f` holds.
    fn eventually(f: impl Fn() -> bool) -> bool {
        let until = Instant::now() + Duration::from_secs(10);
        while !f() {
            if Instant::now() > until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    #[test]
    fn an_idle_clock_parks_and_a_call_wakes_it() {
        let clock = CoarseClock::start("test-clock", Duration::from_millis(1), || true).unwrap();
        // No call has asked for ticks: the thread parks after its first tick.
        assert!(eventually(|| clock.is_parked()));
        let parked_at = clock.now();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(clock.now(), parked_at, "a parked clock publishes nothing");
        // A call starts: the count is fresh at once (no stale start), the thread ticks again,
        // and the call's deadline passes as it would on a clock that never slept.
        let interrupt = Arc::new(AtomicBool::new(false));
        let mut call =
            CallDeadline::new(clock.clone(), Some(Duration::from_millis(5)), Duration::from_millis(2), interrupt);
        call.start();
        assert!(clock.now() >= parked_at + 20, "{} after {parked_at}", clock.now());
        assert!(call.check().is_ok());
        assert!(eventually(|| call.check().is_err()), "the deadline never passed");
        assert_eq!(call.check(), Err(StopReason::Deadline(Duration::from_millis(5))));
        // Idle again past the deadline's span: parked again.
        assert!(eventually(|| clock.is_parked()));
        // An interrupter wakes it too.
        call.start();
        let interrupt = call.interrupter();
        assert!(eventually(|| clock.is_parked()));
        interrupt();
        assert!(!clock.is_parked() || eventually(|| !clock.is_parked()));
        assert_eq!(call.check(), Err(StopReason::Interrupted));
    }

    #[test]
    fn clock_thread_stops_when_told() {
        let clock = CoarseClock::start("test-clock", Duration::from_micros(10), || false).unwrap();
        assert_eq!(clock.tick(), Duration::from_micros(100));
        std::thread::sleep(Duration::from_millis(5));
        let stopped = clock.now();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.now(), stopped);
    }
}
