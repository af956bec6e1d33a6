//! The closed-state sliding windows, lock-free.
//!
//! Both windows take no lock. A call's outcome is recorded with a handful of atomic
//! operations, chosen so that the common case (a fast success) writes only memory that other
//! threads rarely touch:
//!
//! - [`CountWindow`] keeps the last `n` outcomes in a ring of bytes. A call claims a slot with
//!   one `fetch_add` and only writes it (and the shared failure counters) when the outcome
//!   differs from the one it replaces, so a stream of successes reads the ring but never writes
//!   it.
//! - [`TimeWindow`] keeps one-second buckets. Call counts are striped per thread (each thread
//!   adds to its own cache line, one atomic add per call, summed only when rates are
//!   evaluated), failure and slow counts are shared but only written by failures and slow
//!   calls, with running totals. Each bucket counter carries the second it counts in its top
//!   bits, so resetting it for a new second is one CAS that also returns exactly what it held;
//!   that amount is subtracted from the running totals. The first thread to see a new second
//!   expires the buckets that left the window, so an idle window empties too.
//!
//! A call adds to its bucket, then to the running total, so totals can be transiently
//! "negative" by a racing expiry: they are read as signed and clamped at zero. A racing add is
//! never lost; at worst a call ending exactly at a second boundary is counted in the
//! neighbouring second.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering::*};

pub(crate) use crate::resilience::striped::Padded;
use crate::resilience::striped::{TaggedCounter, stripe_count, stripe_index, tagged};

/// Bit set of one recorded call.
pub(crate) const PRESENT: u8 = 1;
pub(crate) const FAILED: u8 = 2;
pub(crate) const SLOW: u8 = 4;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// What the window holds right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WindowCounts {
    pub(crate) calls: u64,
    pub(crate) failed: u64,
    pub(crate) slow: u64,
    pub(crate) slow_failed: u64,
}

impl WindowCounts {
    pub(crate) fn bad(&self) -> u64 {
        self.failed + self.slow
    }
}

fn clamp(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[derive(Debug, Default)]
struct BadTotals {
    failed: AtomicI64,
    slow: AtomicI64,
    slow_failed: AtomicI64,
}

impl BadTotals {
    /// Applies the change of one slot from `old` to `new`.
    fn apply(&self, old: u8, new: u8) {
        let delta = |bit: u8| i64::from(new & bit != 0) - i64::from(old & bit != 0);
        let d_failed = delta(FAILED);
        if d_failed != 0 {
            self.failed.fetch_add(d_failed, Relaxed);
        }
        let d_slow = delta(SLOW);
        if d_slow != 0 {
            self.slow.fetch_add(d_slow, Relaxed);
        }
        let both = |v: u8| i64::from(v & (FAILED | SLOW) == FAILED | SLOW);
        let d_both = both(new) - both(old);
        if d_both != 0 {
            self.slow_failed.fetch_add(d_both, Relaxed);
        }
    }
}

/// The last `size` outcomes.
#[derive(Debug)]
pub(crate) struct CountWindow {
    head: Padded<AtomicU64>,
    present: Padded<AtomicI64>,
    bad: Padded<BadTotals>,
    slots: Box<[AtomicU8]>,
}

impl CountWindow {
    pub(crate) fn new(size: u32) -> Self {
        Self {
            head: Padded(AtomicU64::new(0)),
            present: Padded(AtomicI64::new(0)),
            bad: Padded(BadTotals::default()),
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
        }
    }

    #[inline]
    pub(crate) fn record(&self, code: u8) {
        let i = self.head.fetch_add(1, Relaxed);
        // Truncation is fine: the index is reduced modulo the slot count.
        let slot = &self.slots[(i % self.slots.len() as u64) as usize];
        if slot.load(Relaxed) == code {
            // Same outcome as the call it replaces: nothing changes.
            return;
        }
        let old = slot.swap(code, Relaxed);
        if old == 0 {
            self.present.fetch_add(1, Relaxed);
        }
        self.bad.apply(old, code);
    }

    pub(crate) fn counts(&self) -> WindowCounts {
        WindowCounts {
            calls: clamp(self.present.load(Relaxed)),
            failed: clamp(self.bad.failed.load(Relaxed)),
            slow: clamp(self.bad.slow.load(Relaxed)),
            slow_failed: clamp(self.bad.slow_failed.load(Relaxed)),
        }
    }

    pub(crate) fn reset(&self) {
        for slot in self.slots.iter() {
            let old = slot.swap(0, Relaxed);
            if old != 0 {
                self.present.fetch_sub(1, Relaxed);
                self.bad.apply(old, 0);
            }
        }
    }
}

#[derive(Debug)]
struct Stripe {
    buckets: Box<[TaggedCounter]>,
}

#[derive(Debug)]
struct BadBuckets {
    failed: Box<[TaggedCounter]>,
    slow: Box<[TaggedCounter]>,
    slow_failed: Box<[TaggedCounter]>,
}

fn buckets(n: usize, sec: u64) -> Box<[TaggedCounter]> {
    (0..n)
        .map(|_| TaggedCounter(AtomicU64::new(tagged(sec))))
        .collect()
}

/// The calls of the last `size` seconds, in one-second buckets.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    size: u64,
    /// The newest second the window has been advanced to: buckets of seconds that left the
    /// window are expired by the thread that moves it, once per second.
    current: Padded<AtomicU64>,
    stripes: Box<[Padded<Stripe>]>,
    bad_totals: Padded<BadTotals>,
    bad: BadBuckets,
}

impl TimeWindow {
    pub(crate) fn new(size_secs: u32, now_nanos: u64) -> Self {
        let n = size_secs as usize;
        let sec = now_nanos / NANOS_PER_SEC;
        Self {
            size: u64::from(size_secs),
            current: Padded(AtomicU64::new(sec)),
            stripes: (0..stripe_count())
                .map(|_| {
                    Padded(Stripe {
                        buckets: buckets(n, sec),
                    })
                })
                .collect(),
            bad_totals: Padded(BadTotals::default()),
            bad: BadBuckets {
                failed: buckets(n, sec),
                slow: buckets(n, sec),
                slow_failed: buckets(n, sec),
            },
        }
    }

    /// Records one call that ended at `now_nanos`. Returns whether this call advanced the
    /// window to a new second (then older calls expired, and the rates may have risen).
    #[inline]
    pub(crate) fn record(&self, code: u8, now_nanos: u64) -> bool {
        let sec = now_nanos / NANOS_PER_SEC;
        let mut advanced = false;
        let current = self.current.load(Acquire);
        if sec > current {
            advanced = self.advance(current, sec);
        } else if sec + self.size <= current {
            // Read from a clock far behind another thread's: already outside the window.
            return false;
        }
        let b = (sec % self.size) as usize;
        let stripe = &self.stripes[stripe_index(self.stripes.len())];
        if !stripe.buckets[b].add(sec, None) {
            return advanced;
        }
        if code & (FAILED | SLOW) != 0 {
            self.record_bad(code, sec, b);
        }
        advanced
    }

    #[cold]
    fn record_bad(&self, code: u8, sec: u64, b: usize) {
        if code & FAILED != 0 {
            self.bad.failed[b].add(sec, Some(&self.bad_totals.failed));
        }
        if code & SLOW != 0 {
            self.bad.slow[b].add(sec, Some(&self.bad_totals.slow));
        }
        if code & (FAILED | SLOW) == FAILED | SLOW {
            self.bad.slow_failed[b].add(sec, Some(&self.bad_totals.slow_failed));
        }
    }

    /// Moves the window to second `sec`, expiring the buckets of seconds that left it. Returns
    /// whether this thread did it.
    #[cold]
    fn advance(&self, mut current: u64, sec: u64) -> bool {
        while current < sec {
            match self
                .current
                .compare_exchange_weak(current, sec, AcqRel, Acquire)
            {
                Ok(_) => {
                    let first = (current + 1).max((sec + 1).saturating_sub(self.size));
                    for s in first..=sec {
                        self.expire(s);
                    }
                    return true;
                }
                Err(actual) => current = actual,
            }
        }
        false
    }

    /// Expires the failure buckets `s` maps to if they hold a second older than `s` (call
    /// buckets have no running total: stale ones are skipped when counting).
    fn expire(&self, s: u64) {
        let b = (s % self.size) as usize;
        self.bad.failed[b].expire(s, Some(&self.bad_totals.failed));
        self.bad.slow[b].expire(s, Some(&self.bad_totals.slow));
        self.bad.slow_failed[b].expire(s, Some(&self.bad_totals.slow_failed));
    }

    /// The counts of the window ending at `now_nanos` (expiring what left it).
    pub(crate) fn counts(&self, now_nanos: u64) -> WindowCounts {
        let sec = now_nanos / NANOS_PER_SEC;
        let mut current = self.current.load(Acquire);
        if sec > current {
            self.advance(current, sec);
            current = sec;
        }
        let calls: u64 = self
            .stripes
            .iter()
            .flat_map(|s| s.buckets.iter())
            .map(|b| b.count_within(current, self.size))
            .sum();
        WindowCounts {
            calls,
            failed: clamp(self.bad_totals.failed.load(Relaxed)),
            slow: clamp(self.bad_totals.slow.load(Relaxed)),
            slow_failed: clamp(self.bad_totals.slow_failed.load(Relaxed)),
        }
    }

    /// Empties the window (on closing after recovery).
    pub(crate) fn reset(&self) {
        for stripe in self.stripes.iter() {
            for bucket in stripe.buckets.iter() {
                bucket.take();
            }
        }
        let pairs = [
            (&self.bad.failed, &self.bad_totals.failed),
            (&self.bad.slow, &self.bad_totals.slow),
            (&self.bad.slow_failed, &self.bad_totals.slow_failed),
        ];
        for (buckets, total) in pairs {
            for bucket in buckets.iter() {
                let count = bucket.take() as i64;
                if count != 0 {
                    total.fetch_sub(count, Relaxed);
                }
            }
        }
    }
}

/// Either window.
#[derive(Debug)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    /// Records a call; returns whether rates may have risen for a reason other than this
    /// outcome (time-window expiry).
    #[inline]
    pub(crate) fn record(&self, code: u8, now_nanos: u64) -> bool {
        match self {
            Self::Count(w) => {
                w.record(code);
                false
            }
            Self::Time(w) => w.record(code, now_nanos),
        }
    }

    pub(crate) fn counts(&self, now_nanos: u64) -> WindowCounts {
        match self {
            Self::Count(w) => w.counts(),
            Self::Time(w) => w.counts(now_nanos),
        }
    }

    pub(crate) fn reset(&self) {
        match self {
            Self::Count(w) => w.reset(),
            Self::Time(w) => w.reset(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn code(failed: bool, slow: bool) -> u8 {
        PRESENT | if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 }
    }

    fn naive(outcomes: &[(bool, bool)]) -> WindowCounts {
        WindowCounts {
            calls: outcomes.len() as u64,
            failed: outcomes.iter().filter(|o| o.0).count() as u64,
            slow: outcomes.iter().filter(|o| o.1).count() as u64,
            slow_failed: outcomes.iter().filter(|o| o.0 && o.1).count() as u64,
        }
    }

    proptest! {
        /// The count window holds exactly the last `size` outcomes, also across a reset.
        #[test]
        fn count_window_matches_last_n(
            size in 1u32..40,
            outcomes in proptest::collection::vec((any::<bool>(), any::<bool>()), 0..200),
            reset_at in proptest::option::of(0usize..200),
        ) {
            let w = CountWindow::new(size);
            let mut model: Vec<(bool, bool)> = Vec::new();
            for (i, &(f, s)) in outcomes.iter().enumerate() {
                if reset_at == Some(i) {
                    w.reset();
                    model.clear();
                }
                w.record(code(f, s));
                model.push((f, s));
                let start = model.len().saturating_sub(size as usize);
                prop_assert_eq!(w.counts(), naive(&model[start..]));
            }
        }

        /// The time window holds exactly the calls of the last `size` whole seconds.
        #[test]
        fn time_window_matches_last_d_seconds(
            size in 1u32..20,
            steps in proptest::collection::vec((0u64..3_000_000_000, any::<bool>(), any::<bool>()), 0..200),
        ) {
            let start = 7 * NANOS_PER_SEC + 123;
            let w = TimeWindow::new(size, start);
            let mut now = start;
            let mut model: Vec<(u64, bool, bool)> = Vec::new();
            for &(gap, f, s) in &steps {
                now += gap;
                w.record(code(f, s), now);
                model.push((now / NANOS_PER_SEC, f, s));
                let sec = now / NANOS_PER_SEC;
                let inside: Vec<(bool, bool)> = model
                    .iter()
                    .filter(|(t, _, _)| t + u64::from(size) > sec)
                    .map(|&(_, f, s)| (f, s))
                    .collect();
                prop_assert_eq!(w.counts(now), naive(&inside));
            }
            // Reading later expires everything once the window has passed.
            prop_assert_eq!(w.counts(now + u64::from(size) * NANOS_PER_SEC), WindowCounts::default());
        }
    }

    #[test]
    fn time_window_counts_from_many_threads() {
        let w = std::sync::Arc::new(TimeWindow::new(10, 0));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        // all within seconds 0..5 of a 10 s window
                        w.record(code(i % 10 == 0, false), (i % 5) * NANOS_PER_SEC + t);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = w.counts(5 * NANOS_PER_SEC);
        assert_eq!(c.calls, 40_000);
        assert_eq!(c.failed, 4_000);
    }

    #[test]
    fn count_window_counts_from_many_threads() {
        let w = std::sync::Arc::new(CountWindow::new(1000));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000u64 {
                        w.record(code(i % 4 == 0, false));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let c = w.counts();
        assert_eq!(c.calls, 1000);
        // the last 1000 outcomes are interleaved from four 25%-failure streams
        assert!((150..=350).contains(&c.failed), "{c:?}");
    }
}
