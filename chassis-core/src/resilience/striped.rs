//! Lock-free building blocks shared by the time-based windows (the circuit breaker's time
//! window and the retry budget): cache-line padding, per-thread stripes, and bucket counters
//! tagged with the time slot they count.
//!
//! Written by hand because no crate in the tree offers a sliding-window counter whose hot path
//! is one uncontended atomic add (tower's `TpsBudget` takes a mutex and reads the clock on
//! every deposit).

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::*};

/// Cache-line padding (128 bytes: adjacent-line prefetch pairs lines on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Padded<T>(pub(crate) T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Number of call-count stripes of a time window: twice the CPUs (so that busy threads rarely
/// share one), a power of two, at most 32.
pub(crate) fn stripe_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
        (2 * cpus).next_power_of_two().clamp(2, 32)
    })
}

/// This thread's stripe (threads are numbered round-robin on first use).
pub(crate) fn stripe_index(stripes: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static THREAD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    let id = THREAD.with(|s| {
        let mut v = s.get();
        if v == usize::MAX {
            v = NEXT.fetch_add(1, Relaxed);
            s.set(v);
        }
        v
    });
    id & (stripes - 1)
}

/// A bucket counter tagged with the second it counts: the top 24 bits hold the second
/// (modulo 2^24), the low 40 bits the count. Resetting it for a new second is one CAS that
/// also yields the exact count it held, so nothing added concurrently is lost.
#[derive(Debug, Default)]
pub(crate) struct TaggedCounter(pub(crate) AtomicU64);

const TAG_BITS: u32 = 24;
const COUNT_BITS: u32 = 64 - TAG_BITS;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

#[derive(Debug, PartialEq, Eq)]
enum Age {
    Same,
    Older,
    Newer,
}

fn age(word: u64, sec: u64) -> Age {
    let d = (sec & TAG_MASK).wrapping_sub(word >> COUNT_BITS) & TAG_MASK;
    if d == 0 {
        Age::Same
    } else if d < 1 << (TAG_BITS - 1) {
        Age::Older
    } else {
        Age::Newer
    }
}

pub(crate) fn tagged(sec: u64) -> u64 {
    (sec & TAG_MASK) << COUNT_BITS
}

impl TaggedCounter {
    /// Counts one call of second `sec`, first resetting a bucket that still holds an older
    /// second (subtracting what it held from `total`, if it has one). Returns false if the
    /// bucket already moved on to a newer second (the call is outside the window).
    #[inline]
    pub(crate) fn add(&self, sec: u64, total: Option<&AtomicI64>) -> bool {
        loop {
            let v = self.0.load(Relaxed);
            match age(v, sec) {
                Age::Same => {
                    self.0.fetch_add(1, Relaxed);
                    if let Some(total) = total {
                        total.fetch_add(1, Relaxed);
                    }
                    return true;
                }
                Age::Older => self.roll(v, sec, total),
                Age::Newer => return false,
            }
        }
    }

    /// Resets the bucket to second `sec` if it holds an older one.
    pub(crate) fn expire(&self, sec: u64, total: Option<&AtomicI64>) {
        let mut v = self.0.load(Relaxed);
        while age(v, sec) == Age::Older {
            self.roll(v, sec, total);
            v = self.0.load(Relaxed);
        }
    }

    #[cold]
    fn roll(&self, v: u64, sec: u64, total: Option<&AtomicI64>) {
        if self
            .0
            .compare_exchange(v, tagged(sec), AcqRel, Relaxed)
            .is_ok()
        {
            let count = (v & COUNT_MASK) as i64;
            if let Some(total) = total.filter(|_| count != 0) {
                total.fetch_sub(count, Relaxed);
            }
        }
    }

    /// The count if the bucket holds one of the `size` seconds ending at `sec`.
    pub(crate) fn count_within(&self, sec: u64, size: u64) -> u64 {
        let v = self.0.load(Relaxed);
        let d = (sec & TAG_MASK).wrapping_sub(v >> COUNT_BITS) & TAG_MASK;
        if d < size { v & COUNT_MASK } else { 0 }
    }

    /// Zeroes the count, keeping the second; returns what it held.
    pub(crate) fn take(&self) -> u64 {
        self.0.fetch_and(!COUNT_MASK, AcqRel) & COUNT_MASK
    }
}
