//! A rejection counter that the process can read back: the `*_rejected_total` metric plus the
//! same count in an atomic, for the [control registry](crate::control) (the `metrics` facade
//! has no read side). Only rejected calls touch it, never the admitted ones.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub(crate) struct Rejections {
    metric: metrics::Counter,
    total: AtomicU64,
}

impl Rejections {
    pub(crate) fn new(metric: metrics::Counter) -> Self {
        Self {
            metric,
            total: AtomicU64::new(0),
        }
    }

    /// Counts `n` rejections (named as `metrics::Counter::increment`, so the call sites read
    /// the same).
    pub(crate) fn increment(&self, n: u64) {
        self.metric.increment(n);
        self.total.fetch_add(n, Relaxed);
    }

    /// Rejections since the component was built.
    pub(crate) fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_follows_the_increments() {
        let rejections = Rejections::new(metrics::Counter::noop());
        rejections.increment(1);
        rejections.increment(2);
        assert_eq!(rejections.total(), 3);
    }
}
