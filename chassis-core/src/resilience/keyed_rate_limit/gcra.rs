//! The generic cell rate algorithm, as both backends run it: one "theoretical arrival time"
//! (TAT) per key.
//!
//! A call is admitted when `max(tat, now) - tolerance <= now`, and then moves the TAT on by one
//! emission `interval`. `tolerance = interval * (burst - 1)`, so a fresh key admits `burst`
//! calls at once and then one per `interval`. A TAT at or before `now` means "full burst
//! available", exactly like a key never seen, which is why idle keys can be forgotten.
//!
//! The Redis backend runs the same arithmetic in Lua (in microseconds, on Redis's clock); the
//! in-memory one in nanoseconds on a local clock.

use std::time::Duration;

use super::{KeyedRateLimitConfig, RateLimitInfo};
use crate::metric_catalogue as names;
use crate::{ComponentName, Error};

/// Emission interval and tolerance of one limit, in the backend's time unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Time between two calls at the steady rate.
    pub(crate) interval: u64,
    /// How far ahead of `now` the TAT may run: `interval * (burst - 1)`.
    pub(crate) tolerance: u64,
    /// The burst: calls admitted at once by a fresh key.
    pub(crate) burst: u32,
}

impl Gcra {
    /// The GCRA of a validated configuration, in nanoseconds.
    pub(crate) fn from_config(config: &KeyedRateLimitConfig) -> Result<Self, Error> {
        config.validate()?;
        let interval = u64::try_from(config.period.as_nanos() / u128::from(config.rate))
            .map_err(|_| Error::invalid_config("keyed rate limiter: period too long"))?;
        let burst = config.effective_burst();
        Ok(Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(burst - 1)),
            burst,
        })
    }

    /// The same limit in microseconds (the Redis script's unit), rounded to the nearest
    /// microsecond and at least one.
    #[cfg(any(feature = "redis", test))]
    pub(crate) fn to_micros(self) -> Self {
        let interval = (self.interval.saturating_add(500) / 1000).max(1);
        Self {
            interval,
            tolerance: interval.saturating_mul(u64::from(self.burst - 1)),
            burst: self.burst,
        }
    }

    /// One decision: `Ok(new_tat)` admits the call, `Err(retry_after)` rejects it and says when
    /// the next call would be admitted.
    #[inline]
    pub(crate) fn decide(&self, tat: u64, now: u64) -> Result<u64, u64> {
        let base = tat.max(now);
        let allowed_at = base.saturating_sub(self.tolerance);
        if allowed_at > now {
            Err(allowed_at - now)
        } else {
            Ok(base.saturating_add(self.interval))
        }
    }

    /// Calls still admissible right now, given the time left until the key's TAT
    /// (`reset_after = tat - now`; zero or less: a full burst).
    pub(crate) fn remaining(&self, reset_after: u64) -> u32 {
        if reset_after > self.tolerance {
            return 0;
        }
        let left = (self.tolerance - reset_after) / self.interval.max(1) + 1;
        u32::try_from(left).unwrap_or(u32::MAX).min(self.burst)
    }

    /// The window in which a drained key earns its full burst back: `burst * interval`, for
    /// a GCRA counted in units of `unit_nanos` nanoseconds.
    pub(crate) fn window(&self, unit_nanos: u64) -> Duration {
        Duration::from_nanos(
            self.interval
                .saturating_mul(u64::from(self.burst))
                .saturating_mul(unit_nanos),
        )
    }

    /// The rejection of a call by the limiter `name`, which counts it in `rejected`: the key
    /// admits a call again after `retry_after` and has its full burst again after
    /// `reset_after`, both in this GCRA's time unit of `unit_nanos` nanoseconds.
    #[cold]
    pub(crate) fn rejection(
        &self,
        name: ComponentName,
        rejected: &metrics::Counter,
        unit_nanos: u64,
        retry_after: u64,
        reset_after: u64,
    ) -> Error {
        rejected.increment(1);
        let duration = |units: u64| Duration::from_nanos(units.saturating_mul(unit_nanos));
        let retry_after = duration(retry_after);
        tracing::debug!(rate_limiter = %name, ?retry_after, "rate limited: call rejected");
        // The quota is kept inline in the error and the name is interned: a rejection
        // allocates nothing and touches no shared reference count.
        Error::rate_limited(
            name,
            retry_after,
            RateLimitInfo {
                limit: self.burst,
                window: self.window(unit_nanos),
                remaining: self.remaining(reset_after),
                reset_after: duration(reset_after),
            },
        )
    }
}

/// What a keyed limiter holds whatever its backend: its name, its GCRA (in nanoseconds) and
/// the counter of its rejections.
pub(crate) struct Limit {
    pub(crate) name: ComponentName,
    pub(crate) gcra: Gcra,
    pub(crate) rejected: metrics::Counter,
}

impl Limit {
    /// Validates `config` and registers the metric (`rate_limit_rejected_total`, label `name`)
    /// at 0.
    pub(crate) fn new(config: &KeyedRateLimitConfig) -> Result<Self, Error> {
        let gcra = Gcra::from_config(config)?;
        let name = ComponentName::new(&config.name);
        names::preregister(names::RATE_LIMIT_REJECTED, &[(names::labels::NAME, &name)]);
        Ok(Self {
            rejected: metrics::counter!(names::RATE_LIMIT_REJECTED, names::labels::NAME => name.to_string()),
            name,
            gcra,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gcra(rate: u32, burst: u32) -> Gcra {
        Gcra::from_config(&KeyedRateLimitConfig::new("t").rate(rate).burst(burst)).unwrap()
    }

    #[test]
    fn fresh_key_admits_a_burst_then_one_per_interval() {
        let g = gcra(10, 3); // interval 100 ms, tolerance 200 ms
        let now = 1_000_000_000;
        let mut tat = 0;
        for _ in 0..3 {
            tat = g.decide(tat, now).expect("within the burst");
        }
        assert_eq!(g.decide(tat, now), Err(100_000_000));
        assert!(g.decide(tat, now + 100_000_000).is_ok());
    }

    #[test]
    fn remaining_counts_down_the_burst() {
        let g = gcra(10, 3);
        let now = 5_000_000_000;
        let t1 = g.decide(0, now).unwrap();
        assert_eq!(g.remaining(t1 - now), 2);
        let t2 = g.decide(t1, now).unwrap();
        assert_eq!(g.remaining(t2 - now), 1);
        let t3 = g.decide(t2, now).unwrap();
        assert_eq!(g.remaining(t3 - now), 0);
        assert_eq!(g.remaining(0), 3);
    }

    #[test]
    fn micros_keep_the_ratio() {
        let g = gcra(100, 5).to_micros();
        assert_eq!(g.interval, 10_000);
        assert_eq!(g.tolerance, 40_000);
        assert_eq!(gcra(100, 5).window(1), Duration::from_millis(50));
    }
}
