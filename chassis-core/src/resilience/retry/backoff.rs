//! Backoff between attempts: exponential, with full or decorrelated jitter.
//!
//! The definitions are those of the AWS Architecture Blog post "Exponential Backoff And Jitter"
//! (Marc Brooker, 2015), with `retry` counting retries from zero (the wait before the second
//! attempt is retry 0):
//!
//! | [`Jitter`] | wait before retry `n` |
//! |---|---|
//! | `none` | `min(max, base * 2^n)` |
//! | `full` | `random_between(0, min(max, base * 2^n))` |
//! | `decorrelated` | `min(max, random_between(base, previous * 3))`, with `previous` = `base` at first |
//!
//! Full jitter spreads retries of many clients evenly and does the least total work; decorrelated
//! jitter never waits less than `base` and grows from the previous wait rather than the attempt
//! number.

use std::time::Duration;

use rand::Rng;
use serde::Deserialize;

use crate::Error;

/// How the exponential backoff is randomised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Jitter {
    /// No randomness: `min(max, base * 2^n)`. Synchronised clients retry in lock step; use only
    /// when there is a single client.
    None,
    /// "Full jitter": uniformly random in `[0, min(max, base * 2^n)]`. The default.
    #[default]
    Full,
    /// "Decorrelated jitter": `min(max, random in [base, previous * 3])`.
    Decorrelated,
}

/// Exponential backoff settings. Deserializes from e.g.
/// `{ base = "100ms", max = "5s", jitter = "decorrelated" }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// The first (pre-jitter) wait. Defaults to 100 ms.
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    /// No wait is longer than this. Defaults to 10 s.
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// How the waits are randomised. Defaults to [`Jitter::Full`].
    pub jitter: Jitter,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
            jitter: Jitter::Full,
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Backoff {
    /// Exponential backoff from `base`, capped at 10 s (see [`max`](Self::max)), with full
    /// jitter.
    pub fn exponential(base: Duration) -> Self {
        Self {
            base,
            ..Self::default()
        }
    }

    crate::__builder_setters! {
        /// Sets the longest wait. Defaults to 10 s.
        max: Duration,
        /// Sets the jitter. Defaults to [`Jitter::Full`].
        jitter: Jitter,
    }

    /// Checks that `base <= max`.
    pub fn validate(&self) -> Result<(), Error> {
        if self.base > self.max {
            return Err(Error::invalid_config(format!(
                "backoff base ({:?}) exceeds max ({:?})",
                self.base, self.max
            )));
        }
        Ok(())
    }

    /// The un-jittered ceiling for retry `retry`: `min(max, base * 2^retry)`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u64.checked_shl(retry.min(63)).unwrap_or(u64::MAX);
        Duration::from_nanos(nanos(self.base).saturating_mul(factor).min(nanos(self.max)))
    }

    /// The wait before retry `retry` (0 for the first retry), given the previous wait (`base`
    /// before the first retry; only decorrelated jitter uses it), drawing randomness from `rng`.
    pub fn delay<R: Rng + ?Sized>(&self, retry: u32, previous: Duration, rng: &mut R) -> Duration {
        match self.jitter {
            Jitter::None => self.ceiling(retry),
            Jitter::Full => Duration::from_nanos(rng.random_range(0..=nanos(self.ceiling(retry)))),
            Jitter::Decorrelated => {
                let low = nanos(self.base);
                let high = nanos(previous).saturating_mul(3).max(low);
                Duration::from_nanos(rng.random_range(low..=high).min(nanos(self.max)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn no_jitter_doubles_up_to_the_cap() {
        let b = Backoff::exponential(ms(100))
            .max(ms(1000))
            .jitter(Jitter::None);
        let mut rng = StdRng::seed_from_u64(1);
        let waits: Vec<_> = (0..6).map(|n| b.delay(n, ms(100), &mut rng)).collect();
        assert_eq!(
            waits,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        assert_eq!(b.ceiling(u32::MAX), ms(1000));
    }

    #[test]
    fn base_above_max_is_invalid() {
        assert!(Backoff::exponential(ms(10)).max(ms(5)).validate().is_err());
        assert!(Backoff::exponential(ms(5)).max(ms(5)).validate().is_ok());
    }

    proptest! {
        #[test]
        fn full_jitter_stays_in_zero_to_capped_exponential(
            base in 0u64..10_000, cap in 0u64..100_000, retry in 0u32..80, seed: u64,
        ) {
            let b = Backoff::exponential(ms(base)).max(ms(base.max(cap)));
            let mut rng = StdRng::seed_from_u64(seed);
            let d = b.delay(retry, ms(base), &mut rng);
            let ceiling = (u128::from(base) << retry.min(70)).min(u128::from(base.max(cap)));
            prop_assert!(d.as_millis() <= ceiling, "{d:?} > {ceiling}ms");
        }

        #[test]
        fn decorrelated_jitter_stays_in_base_to_three_times_previous_capped(
            base in 0u64..10_000, cap in 0u64..100_000, steps in 1usize..30, seed: u64,
        ) {
            let cap = base.max(cap);
            let b = Backoff::exponential(ms(base)).max(ms(cap)).jitter(Jitter::Decorrelated);
            let mut rng = StdRng::seed_from_u64(seed);
            let mut prev = ms(base);
            for n in 0..steps {
                let d = b.delay(n as u32, prev, &mut rng);
                prop_assert!(d >= ms(base), "{d:?} < base {base}ms");
                prop_assert!(d <= (prev * 3).min(ms(cap)).max(ms(base)), "{d:?} above min(cap, 3 * {prev:?})");
                prev = d;
            }
        }
    }
}
