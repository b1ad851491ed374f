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
/// Cheap to clone; the thread stops once every clone is dropped.
#[derive(Debug, Clone)]
pub struct CoarseClock {
    now: Arc<AtomicU64>,
    tick: Duration,
}

impl CoarseClock {
    /// Starts the clock thread (named `name`): every `tick` (at least 100 µs) it publishes the
    /// ticks elapsed since the start, then calls `on_tick`; it stops when `on_tick` returns
    /// `false` or the clock is dropped. The count follows the wall clock, so an oversleeping
    /// thread does not slow it down.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn start(name: &str, tick: Duration, on_tick: impl Fn() -> bool + Send + 'static) -> std::io::Result<Self> {
        let tick = tick.max(Duration::from_micros(100));
        let now = Arc::new(AtomicU64::new(0));
        let weak: Weak<AtomicU64> = Arc::downgrade(&now);
        let start = Instant::now();
        std::thread::Builder::new().name(name.into()).spawn(move || {
            loop {
                std::thread::sleep(tick);
                let Some(now) = weak.upgrade() else { break };
                let ticks = start.elapsed().as_nanos() / tick.as_nanos();
                now.store(u64::try_from(ticks).unwrap_or(u64::MAX), Ordering::Release);
                drop(now);
                if !on_tick() {
                    break;
                }
            }
        })?;
        Ok(Self { now, tick })
    }

    /// Ticks since the clock started.
    #[inline]
    pub fn now(&self) -> u64 {
        self.now.load(Ordering::Acquire)
    }

    /// The tick.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// `d` in ticks, rounded up, at least one.
    pub fn ticks(&self, d: Duration) -> u64 {
        u64::try_from(d.as_nanos().div_ceil(self.tick.as_nanos())).unwrap_or(u64::MAX).max(1)
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
        self.started = self.clock.now();
        self.interrupt.store(false, Ordering::Release);
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
