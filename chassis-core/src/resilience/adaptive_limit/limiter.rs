//! The limiter every service of one [`AdaptiveLimitLayer`](super::AdaptiveLimitLayer) shares:
//! its configuration, the calls in flight, the limit, and the estimator that moves it.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Deserialize;
use tokio::time::Instant;

use super::algorithm::{Estimator, LimitAlgorithm, Sample};
use crate::metric_catalogue as names;
use crate::{BoxError, ComponentName, Error, ErrorKind};

/// Configuration of an adaptive concurrency limit. Deserializes from e.g.
/// `{ name = "payments", initial_limit = 20, max_limit = 200, algorithm = { kind = "vegas" } }`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdaptiveLimitConfig {
    /// Name used in errors and metrics. Defaults to `"default"`.
    pub name: String,
    /// How the limit follows latency. Defaults to [`LimitAlgorithm::Vegas`].
    pub algorithm: LimitAlgorithm,
    /// The limit before any call has finished. Defaults to 20.
    pub initial_limit: usize,
    /// The limit never goes below this. Defaults to 1; must be at least 1.
    pub min_limit: usize,
    /// The limit never goes above this. Defaults to 1000.
    pub max_limit: usize,
    /// One call in this many is timed and fed to the algorithm; the others only count in
    /// flight. Timing a call (two clock reads and the algorithm's lock) costs several times
    /// what admitting it does, and the algorithm needs a trend, not every call. Rounded up to
    /// a power of two (a mask picks the calls; a division would cost a fifth of an untimed
    /// call). Defaults to 8; 1 times every call.
    pub sample_every: u32,
}

impl Default for AdaptiveLimitConfig {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            algorithm: LimitAlgorithm::default(),
            initial_limit: 20,
            min_limit: 1,
            max_limit: 1000,
            sample_every: 8,
        }
    }
}

impl AdaptiveLimitConfig {
    crate::__named_config_new!();

    crate::__builder_setters! {
        /// Sets the algorithm. Defaults to Vegas.
        algorithm: LimitAlgorithm,
        /// Sets the starting limit. Defaults to 20.
        initial_limit(limit): usize,
        /// Sets the lowest limit. Defaults to 1.
        min_limit(limit): usize,
        /// Sets the highest limit. Defaults to 1000.
        max_limit(limit): usize,
        /// Times one call in `n`. Defaults to 8.
        sample_every(n): u32,
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), Error> {
        let fail = |reason: String| {
            Err(Error::invalid_config(format!(
                "adaptive limit '{}': {reason}",
                self.name
            )))
        };
        if self.min_limit == 0 {
            return fail("min_limit must be at least 1".into());
        }
        if self.sample_every == 0 {
            return fail("sample_every must be at least 1".into());
        }
        if self.sample_every > 1 << 31 {
            return fail("sample_every must be at most 2^31".into());
        }
        if self.max_limit > u32::MAX as usize {
            return fail(format!("max_limit must be at most {}", u32::MAX));
        }
        if !(self.min_limit <= self.initial_limit && self.initial_limit <= self.max_limit) {
            return fail(format!(
                "needs min_limit <= initial_limit <= max_limit ({} / {} / {})",
                self.min_limit, self.initial_limit, self.max_limit
            ));
        }
        self.algorithm.validate().or_else(fail)
    }
}

/// How a call ended, for the estimator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// A response: its latency is a sample.
    Done,
    /// Timed out (its own timeout or a layer's): a drop, the strongest sign of overload.
    Dropped,
    /// Failed otherwise, or was cancelled: says nothing about the downstream's queue.
    Ignored,
}

impl Ending {
    /// Success is a sample, a chassis timeout or deadline anywhere in the error's chain a drop,
    /// every other error ignored (a fast failure would read as a fast, idle downstream).
    pub(crate) fn of<T>(result: &Result<T, BoxError>) -> Self {
        match result {
            Ok(_) => Self::Done,
            Err(e) if Error::find_in(e.as_ref()).is_some_and(Error::is_timeout) => Self::Dropped,
            Err(_) => Self::Ignored,
        }
    }
}

/// What a call holds while it runs: when it started, if it is timed, and how many were in
/// flight then.
#[derive(Debug)]
pub(crate) struct Token {
    started: Option<Instant>,
    in_flight: u32,
}

/// The limiter's state shared by every service and clone of one layer.
pub(crate) struct Limiter {
    pub(crate) name: ComponentName,
    /// Calls admitted so far (high 32 bits, wrapping) and in flight (low 32 bits), in one word
    /// so admission is one compare-and-swap and picks the calls to time.
    admitted: AtomicU64,
    limit: AtomicUsize,
    /// `sample_every` rounded up to a power of two, minus one.
    sample_mask: u32,
    estimator: Mutex<Estimator>,
    limit_gauge: metrics::Gauge,
    in_flight_gauge: metrics::Gauge,
    pub(crate) rejected: metrics::Counter,
}

impl fmt::Debug for Limiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limiter")
            .field("name", &self.name)
            .field("limit", &self.limit.load(Relaxed))
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl Limiter {
    /// Validates `config`, registers the metrics at their starting values.
    pub(crate) fn new(config: AdaptiveLimitConfig) -> Result<Self, Error> {
        config.validate()?;
        let name = ComponentName::new(&config.name);
        let label = [(names::labels::NAME, &*name)];
        names::preregister(names::ADAPTIVE_LIMIT_LIMIT, &label);
        names::preregister(names::ADAPTIVE_LIMIT_IN_FLIGHT, &label);
        names::preregister(names::ADAPTIVE_LIMIT_REJECTED, &label);
        let gauge =
            |metric: &'static str| metrics::gauge!(metric, names::labels::NAME => name.to_string());
        let limit_gauge = gauge(names::ADAPTIVE_LIMIT_LIMIT);
        limit_gauge.set(config.initial_limit as f64);
        Ok(Self {
            admitted: AtomicU64::new(0),
            limit: AtomicUsize::new(config.initial_limit),
            sample_mask: config.sample_every.next_power_of_two() - 1,
            estimator: Mutex::new(Estimator::new(
                config.algorithm,
                config.initial_limit,
                config.min_limit,
                config.max_limit,
            )),
            limit_gauge,
            in_flight_gauge: gauge(names::ADAPTIVE_LIMIT_IN_FLIGHT),
            rejected: metrics::counter!(names::ADAPTIVE_LIMIT_REJECTED, names::labels::NAME => name.to_string()),
            name,
        })
    }

    /// Admits a call if fewer than the limit are in flight.
    #[inline]
    pub(crate) fn try_acquire(&self) -> Option<Token> {
        let limit = self.limit.load(Relaxed);
        let mut word = self.admitted.load(Relaxed);
        loop {
            let in_flight = word as u32;
            if in_flight as usize >= limit {
                return None;
            }
            match self.admitted.compare_exchange_weak(
                word,
                word.wrapping_add((1 << 32) + 1),
                AcqRel,
                Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        let timed = (word >> 32) as u32 & self.sample_mask == 0;
        Some(Token {
            started: timed.then(Instant::now),
            in_flight: word as u32 + 1,
        })
    }

    fn in_flight(&self) -> usize {
        self.admitted.load(Relaxed) as u32 as usize
    }

    /// Ends a call admitted with `token`; a sample or a drop moves the limit.
    #[inline]
    pub(crate) fn release(&self, token: Token, ending: Ending) {
        // Only the low half counts calls in flight, and it never goes below zero, so the
        // subtraction never borrows from the admissions above it.
        let in_flight = (self.admitted.fetch_sub(1, AcqRel) as u32).saturating_sub(1);
        let Some(started) = token.started else {
            return;
        };
        if ending == Ending::Ignored {
            return;
        }
        let now = Instant::now();
        let sample = Sample {
            rtt: now.saturating_duration_since(started),
            in_flight: token.in_flight as usize,
            dropped: ending == Ending::Dropped,
            started,
        };
        let limit = self
            .estimator
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .on_sample(sample, now);
        // Only the estimator writes the limit, under its lock, so a plain store is ordered.
        if self.limit.swap(limit, Relaxed) != limit {
            self.limit_gauge.set(limit as f64);
        }
        self.in_flight_gauge.set(in_flight as f64);
    }

    /// The rejection of a call shed at the current limit.
    pub(crate) fn rejection(&self) -> Error {
        Error::new(ErrorKind::ConcurrencyLimited {
            name: self.name,
            limit: self.limit.load(Relaxed),
        })
    }

    pub(crate) fn snapshot(&self) -> LimitSnapshot {
        LimitSnapshot {
            limit: self.limit.load(Relaxed),
            in_flight: self.in_flight(),
        }
    }
}

/// The limiter's state at one moment: two atomic loads, cheap enough for a dashboard to poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitSnapshot {
    /// Calls admitted at once right now.
    pub limit: usize,
    /// Calls in flight right now.
    pub in_flight: usize,
}

/// A cheap, cloneable view of one limiter (e.g. for an admin page): its name and a
/// [`LimitSnapshot`].
#[derive(Clone, Debug)]
pub struct AdaptiveLimitHandle {
    pub(crate) limiter: Arc<Limiter>,
}

impl AdaptiveLimitHandle {
    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.limiter.name
    }

    /// The current limit and calls in flight.
    pub fn snapshot(&self) -> LimitSnapshot {
        self.limiter.snapshot()
    }
}

/// A call's admission, given back when dropped (as a cancelled call, which is not sampled) or
/// finished with how the call ended.
#[derive(Debug)]
pub(crate) struct Permit {
    limiter: Arc<Limiter>,
    token: Option<Token>,
}

impl Permit {
    pub(crate) fn new(limiter: Arc<Limiter>, token: Token) -> Self {
        Self {
            limiter,
            token: Some(token),
        }
    }

    pub(crate) fn finish(&mut self, ending: Ending) {
        if let Some(token) = self.token.take() {
            self.limiter.release(token, ending);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.finish(Ending::Ignored);
    }
}
