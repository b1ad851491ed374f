//! Callback deadlines for engines that check them at points of their own choosing (wasmtime's
//! epochs, wasmer's metering slices, host calls): a coarse wall clock kept by a thread, and the
//! bookkeeping of one top-level call.
//!
//! Reading the clock is one atomic load, far cheaper than `Instant::now`, so an engine can
//! afford to look at it on every check. The thread wakes every tick while a call with a short
//! deadline runs, and at the [`COARSE_PACE`] while the calls in flight all have long ones
//! ([`FINE_DEADLINES`]): a deadline is thus kept to about a tick, or to 1 % of it when it is
//! long, and an engine with the default one-second deadline wakes its thread 100 times a
//! second under load instead of 1,000.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::StopReason;

/// The thread's period while no call in flight has a short deadline: at least a tick. Also
/// about the longest an interrupt request waits to be seen.
pub const COARSE_PACE: Duration = Duration::from_millis(10);

/// Deadlines shorter than this many [`COARSE_PACE`]s are short: while a call with one runs, the
/// clock thread wakes every tick (the coarse pace would be more than 1 % of the deadline).
pub const FINE_DEADLINES: u32 = 100;

/// A wall clock counting ticks since it started, advanced by a background thread.
///
/// The thread ticks only while calls may need it: each top-level call asks it to go on for the
/// span of its deadline ([`Self::keep_ticking`]); past the last such span it parks, so an idle
/// engine costs no wake-ups, and the next call wakes it. While it runs it wakes every tick if a
/// call asked for fine ticks ([`Self::keep_ticking_through`] a short deadline),
/// otherwise at the [`COARSE_PACE`]; its count follows the wall clock either way. Cheap to
/// clone; the thread stops once every clone is dropped.
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
    /// The thread wakes every tick (not at the coarse pace) at least until this tick.
    fine_until: AtomicU64,
    /// The thread sleeps at the coarse pace (or is about to): a call that needs fine ticks
    /// wakes it.
    coarse: AtomicBool,
    /// The thread is parked (or about to): `now` may be stale.
    parked: AtomicBool,
    start: Instant,
    /// The tick in nanoseconds, at least 100,000.
    tick_nanos: u64,
    /// The coarse pace in ticks, at least one.
    coarse_ticks: u64,
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

    /// Whether the thread may sleep at the coarse pace now: no call asked for fine ticks up to
    /// this tick. When it may, `coarse` is set, so that such a call wakes it.
    fn may_coarsen(&self) -> bool {
        let now = self.elapsed();
        if now <= self.fine_until.load(Ordering::SeqCst) {
            return false;
        }
        self.coarse.store(true, Ordering::SeqCst);
        // A call that extended `fine_until` before seeing `coarse` set is seen here.
        if now <= self.fine_until.load(Ordering::SeqCst) {
            self.coarse.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }
}

/// How long a parked clock thread sleeps before it looks whether the clock is gone.
const PARKED_CHECK: Duration = Duration::from_secs(1);

impl CoarseClock {
    /// Starts the clock thread (named `name`): every `tick` (at least 100 µs), or every
    /// [`COARSE_PACE`], while calls need it, it publishes the ticks elapsed since the start,
    /// then calls `on_tick` with that count; it stops when `on_tick` returns `false` or the
    /// clock is dropped.
    /// The count follows the wall clock, so an oversleeping (or parked) thread does not slow it
    /// down.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn start(name: &str, tick: Duration, on_tick: impl Fn(u64) -> bool + Send + 'static) -> std::io::Result<Self> {
        let tick = tick.max(Duration::from_micros(100));
        let coarse = COARSE_PACE.max(tick);
        let tick_nanos = u64::try_from(tick.as_nanos()).unwrap_or(u64::MAX);
        let shared = Arc::new(ClockShared {
            now: AtomicU64::new(0),
            busy_until: AtomicU64::new(0),
            fine_until: AtomicU64::new(0),
            coarse: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            start: Instant::now(),
            tick_nanos,
            coarse_ticks: u64::try_from(coarse.as_nanos() / u128::from(tick_nanos)).unwrap_or(u64::MAX).max(1),
            thread: std::sync::OnceLock::new(),
        });
        let weak: Weak<ClockShared> = Arc::downgrade(&shared);
        let handle = std::thread::Builder::new().name(name.into()).spawn(move || {
            loop {
                let Some(s) = weak.upgrade() else { break };
                if s.may_coarsen() {
                    drop(s);
                    // Unparked early by a call that needs fine ticks.
                    std::thread::park_timeout(coarse);
                    let Some(s) = weak.upgrade() else { break };
                    s.coarse.store(false, Ordering::SeqCst);
                } else {
                    drop(s);
                    std::thread::sleep(tick);
                }
                let Some(s) = weak.upgrade() else { break };
                let ticks = s.publish();
                drop(s);
                if !on_tick(ticks) {
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
        self.keep(span, false)
    }

    /// Keeps the clock ticking through a call's deadline of `deadline` ticks (and at least
    /// `span` ticks), as [`Self::keep_ticking`]; while the deadline is short (the coarse pace
    /// would be more than 1/[`FINE_DEADLINES`] of it) the thread wakes every tick, not at the
    /// coarse pace.
    pub fn keep_ticking_through(&self, deadline: u64, span: u64) -> u64 {
        self.keep(deadline.max(span), self.is_short(deadline))
    }

    fn is_short(&self, ticks: u64) -> bool {
        ticks < self.shared.coarse_ticks.saturating_mul(u64::from(FINE_DEADLINES))
    }

    fn keep(&self, span: u64, fine: bool) -> u64 {
        let s = &self.shared;
        // Extends the thread's spans from `now`; returns whether a thread sleeping at the coarse
        // pace must wake (it would see this call late).
        let extend = |now: u64| {
            let until = now.saturating_add(span).saturating_add(2);
            if s.busy_until.load(Ordering::Relaxed) < until {
                s.busy_until.fetch_max(until, Ordering::SeqCst);
            }
            fine && s.fine_until.load(Ordering::Relaxed) < until && {
                s.fine_until.fetch_max(until, Ordering::SeqCst);
                s.coarse.load(Ordering::SeqCst)
            }
        };
        // The time now, not the last published tick: a thread that just woke from a park may not
        // have published yet, and a span counted from a stale tick could end before the thread's
        // next look at `busy_until`, which would park it again while this call runs.
        let mut now = s.publish();
        let mut wake = extend(now);
        if s.parked.load(Ordering::SeqCst) {
            // The thread sleeps: the published count is stale.
            now = s.publish();
            extend(now);
            wake = true;
        }
        if wake && let Some(t) = s.thread.get() {
            t.unpark();
        }
        now
    }

    /// Whether the clock thread is parked (no call has needed it for a while).
    pub fn is_parked(&self) -> bool {
        self.shared.parked.load(Ordering::SeqCst)
    }

    /// Whether the clock thread sleeps at the coarse pace (no call in flight asked for fine
    /// ticks), or is about to.
    pub fn is_coarse(&self) -> bool {
        self.shared.coarse.load(Ordering::SeqCst)
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
        self.started = match self.deadline {
            Some((ticks, _)) => self.clock.keep_ticking_through(ticks, self.check),
            None => self.clock.keep_ticking(self.check),
        };
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
        let clock = CoarseClock::start("test-clock", Duration::from_millis(1), |_| true).unwrap();
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
        let clock = CoarseClock::start("test-clock", Duration::from_millis(1), |_| true).unwrap();
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
    fn long_deadlines_tick_at_the_coarse_pace_and_a_short_one_ticks_finely() {
        let wakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = wakes.clone();
        let clock = CoarseClock::start("test-clock", Duration::from_millis(1), move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            true
        })
        .unwrap();
        assert!(!clock.is_short(clock.ticks(Duration::from_secs(1))));
        assert!(clock.is_short(clock.ticks(Duration::from_millis(999))));
        // A call with a long deadline: the thread runs, at the coarse pace.
        let long = |d| CallDeadline::new(clock.clone(), Some(d), COARSE_PACE, Arc::new(AtomicBool::new(false)));
        let mut call = long(Duration::from_secs(30));
        call.start();
        assert!(eventually(|| clock.is_coarse()));
        let (before, at) = (wakes.load(Ordering::SeqCst), Instant::now());
        std::thread::sleep(Duration::from_millis(300));
        let woke = wakes.load(Ordering::SeqCst) - before;
        let paces = at.elapsed().as_millis() / COARSE_PACE.as_millis();
        // At most one wake per pace (and one early wake); a thread waking every tick would
        // have woken about ten times as often.
        assert!(woke as u128 <= paces + 2, "{woke} wakes in {paces} paces");
        assert!(!clock.is_parked());
        // A call with a short deadline: every tick until its span is over, and it stops on time
        // as on a clock that never slowed down.
        let mut short = long(Duration::from_millis(40));
        short.start();
        assert!(eventually(|| !clock.is_coarse()), "a short deadline left the clock at the coarse pace");
        assert!(eventually(|| short.check().is_err()), "the short deadline never passed");
        assert_eq!(short.check(), Err(StopReason::Deadline(Duration::from_millis(40))));
        // Past its span the long call alone keeps the thread, at the coarse pace again.
        assert!(eventually(|| clock.is_coarse()));
        assert!(call.check().is_ok());
    }

    #[test]
    fn clock_thread_stops_when_told() {
        let clock = CoarseClock::start("test-clock", Duration::from_micros(10), |_| false).unwrap();
        assert_eq!(clock.tick(), Duration::from_micros(100));
        // The first wake publishes, then `on_tick` stops the thread: nothing moves the count
        // after it.
        assert!(eventually(|| clock.now() > 0));
        let stopped = clock.now();
        std::thread::sleep(COARSE_PACE * 2);
        assert_eq!(clock.now(), stopped);
    }
}
