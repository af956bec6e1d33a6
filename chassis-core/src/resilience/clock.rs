//! Clocks: where the circuit breaker and the retry budget read time.
//!
//! The breaker reads the clock twice per call (start and end, for slow-call accounting and the
//! time window). `Instant::now()` costs about 25 ns on a typical VM, which would be most of the
//! breaker's budget, so the default [`CoarseClock`] reads an atomic that a background thread
//! refreshes every millisecond (about 1 ns per read, ~1 ms resolution). Use
//! [`MonotonicClock`] when slow-call thresholds below ~10 ms matter, and [`TokioClock`] in
//! tests, where it follows tokio's paused, auto-advancing clock.

use std::fmt;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonic time source for a circuit breaker or a retry budget.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Nanoseconds since an origin fixed for this clock. Must never go backwards.
    fn now_nanos(&self) -> u64;
}

/// The default clock: a process-wide atomic refreshed every millisecond by one background
/// thread (`chassis-coarse-clock`, started on first use). Reading it is one atomic load.
///
/// Resolution is about one millisecond (more when the machine is overloaded and the thread is
/// scheduled late), so durations are measured to within a few milliseconds. If the thread
/// cannot be started, reads fall back to [`Instant::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CoarseClock;

struct Ticker {
    origin: Instant,
    now: AtomicU64,
    running: AtomicBool,
}

const TICK: Duration = Duration::from_millis(1);

fn ticker() -> &'static Ticker {
    static TICKER: OnceLock<&'static Ticker> = OnceLock::new();
    TICKER.get_or_init(|| {
        let ticker: &'static Ticker = Box::leak(Box::new(Ticker {
            origin: Instant::now(),
            now: AtomicU64::new(0),
            running: AtomicBool::new(false),
        }));
        let spawned = std::thread::Builder::new()
            .name("chassis-coarse-clock".into())
            .spawn(move || {
                loop {
                    ticker
                        .now
                        .store(elapsed_nanos(ticker.origin), Ordering::Release);
                    std::thread::sleep(TICK);
                }
            });
        if spawned.is_ok() {
            ticker
                .now
                .store(elapsed_nanos(ticker.origin), Ordering::Release);
            ticker.running.store(true, Ordering::Release);
        }
        ticker
    })
}

fn elapsed_nanos(origin: Instant) -> u64 {
    u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Clock for CoarseClock {
    #[inline]
    fn now_nanos(&self) -> u64 {
        let t = ticker();
        if t.running.load(Ordering::Relaxed) {
            t.now.load(Ordering::Acquire)
        } else {
            elapsed_nanos(t.origin)
        }
    }
}

/// `std::time::Instant`: exact, about 25 ns per read.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    #[inline]
    fn now_nanos(&self) -> u64 {
        elapsed_nanos(self.origin)
    }
}

/// `tokio::time::Instant`: follows tokio's paused clock (`start_paused`, `time::advance`), so
/// tests drive the breaker's time logic in virtual time. Outside a runtime it reads real time.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    /// A clock whose origin is now (create it inside the runtime whose clock it should follow).
    pub fn new() -> Self {
        Self {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_nanos(&self) -> u64 {
        u64::try_from(
            tokio::time::Instant::now()
                .saturating_duration_since(self.origin)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }
}

/// A clock as the breaker and the budget hold it: the stock clocks are matched (inlined),
/// others go through a vtable.
#[derive(Debug, Clone)]
pub(crate) enum ClockSource {
    Coarse,
    Monotonic(MonotonicClock),
    Custom(Arc<dyn Clock>),
}

impl ClockSource {
    pub(crate) fn from_clock<C: Clock>(clock: C) -> Self {
        let any: &dyn std::any::Any = &clock;
        if any.is::<CoarseClock>() {
            return Self::Coarse;
        }
        if let Some(m) = any.downcast_ref::<MonotonicClock>() {
            return Self::Monotonic(*m);
        }
        Self::Custom(Arc::new(clock))
    }

    #[inline]
    pub(crate) fn now_nanos(&self) -> u64 {
        match self {
            Self::Coarse => CoarseClock.now_nanos(),
            Self::Monotonic(m) => m.now_nanos(),
            Self::Custom(c) => c.now_nanos(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coarse_clock_advances_and_is_monotonic() {
        let a = CoarseClock.now_nanos();
        std::thread::sleep(Duration::from_millis(20));
        let b = CoarseClock.now_nanos();
        assert!(b > a, "{a} !< {b}");
        assert!(b - a >= 10_000_000, "advanced only {}ns", b - a);
    }

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let c = TokioClock::new();
        let a = c.now_nanos();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(c.now_nanos() - a, 5_000_000_000);
    }

    #[test]
    fn stock_clocks_are_recognised() {
        assert!(matches!(
            ClockSource::from_clock(CoarseClock),
            ClockSource::Coarse
        ));
        assert!(matches!(
            ClockSource::from_clock(MonotonicClock::new()),
            ClockSource::Monotonic(_)
        ));
    }
}
