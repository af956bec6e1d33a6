//! Bounds the call rate, with permits shared by every clone of the service.
//!
//! [`RateLimiterLayer`] admits `rate` calls per `period` with bursts of up to `burst` calls, using
//! the generic cell rate algorithm (GCRA, a token bucket kept as one "theoretical arrival time")
//! on a single `AtomicU64`: taking a permit is one clock read and one compare-and-swap, with no
//! lock and no background task. A call that finds no permit either waits for one (if it comes
//! within `max_wait`; the slot is reserved, so waiters are served in order) or fails with a
//! [`chassis_core::Error`](crate::Error) of kind
//! [`ErrorKind::RateLimited { retry_after }`](crate::ErrorKind::RateLimited), saying when the
//! next permit is due.
//!
//! # One quota for every clone
//!
//! The limiter belongs to the layer: every service it builds, and every clone of those (axum
//! clones a service per request), draws from the same quota. A call waits at most `max_wait`
//! for its permit, and a rejection is reported by the response future, so `poll_ready` only
//! fails when the inner service does.
//!
//! # Example
//!
//! ```
//! use chassis_core::resilience::rate_limiter::{RateLimiterConfig, RateLimiterLayer};
//! use chassis_core::{BoxError, Error, ErrorKind};
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! // 2 calls per second, no burst beyond that, no waiting.
//! let layer = RateLimiterLayer::new(RateLimiterConfig::new("api").rate(2).burst(2)).unwrap();
//! let svc = layer.layer(service_fn(|_: ()| async { Ok::<_, BoxError>(()) }));
//! svc.clone().oneshot(()).await.unwrap();
//! svc.clone().oneshot(()).await.unwrap();
//! let err = Error::from_boxed(svc.clone().oneshot(()).await.unwrap_err()).unwrap();
//! assert!(matches!(err.kind(), ErrorKind::RateLimited { retry_after, .. } if *retry_after == Duration::from_millis(500)));
//! tokio::time::advance(Duration::from_millis(500)).await;
//! svc.oneshot(()).await.unwrap();
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;

pub use super::future::ResponseFuture;
use crate::metric_catalogue as names;
use crate::{ComponentName, Error, ErrorKind};

/// Configuration of a rate limiter. Deserializes from e.g.
/// `{ name = "api", rate = 100, period = "1s", burst = 20, max_wait = "50ms" }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Name used in errors, metrics and traces. Defaults to `"default"`.
    pub name: String,
    /// Calls admitted per `period` on average. Defaults to 100; must be at least 1.
    pub rate: u32,
    /// The period `rate` refers to. Defaults to one second.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Calls admitted at once after a quiet spell. Defaults to `rate` when zero (the default).
    pub burst: u32,
    /// How long a call may wait for its permit before it is rejected. Defaults to zero.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

impl Default for RateLimiterConfig {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            rate: 100,
            period: Duration::from_secs(1),
            burst: 0,
            max_wait: Duration::ZERO,
        }
    }
}

impl RateLimiterConfig {
    crate::__named_config_new!();

    crate::__builder_setters! {
        /// Sets the calls admitted per period. Defaults to 100.
        rate: u32,
        /// Sets the period of `rate`. Defaults to one second.
        period: Duration,
        /// Sets the burst size. Defaults to `rate`.
        burst: u32,
        /// Sets how long a call may wait for a permit. Defaults to zero.
        max_wait: Duration,
    }

    fn effective_burst(&self) -> u32 {
        effective_burst(self.rate, self.burst)
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), Error> {
        match rate_problem(self.rate, self.period) {
            Some(why) => Err(Error::invalid_config(format!(
                "rate limiter '{}': {why}",
                self.name
            ))),
            None => Ok(()),
        }
    }
}

/// The burst of a limiter configured with `burst` (0: as many calls as `rate`).
pub(crate) fn effective_burst(rate: u32, burst: u32) -> u32 {
    if burst == 0 { rate } else { burst }
}

/// What is wrong with `rate` calls per `period`, for a limiter's `validate`.
pub(crate) fn rate_problem(rate: u32, period: Duration) -> Option<&'static str> {
    if rate == 0 {
        Some("rate must be at least 1")
    } else if period.is_zero() {
        Some("period must be positive")
    } else if period.as_nanos() / u128::from(rate) == 0 {
        Some("rate / period exceeds one call per nanosecond")
    } else if period > Duration::from_secs(86_400 * 365) {
        Some("period must be at most a year")
    } else {
        None
    }
}

pub(crate) struct Limiter {
    pub(crate) name: ComponentName,
    /// Nanoseconds between two permits at the steady rate.
    interval: u64,
    /// How far ahead of `now` the theoretical arrival time may run: `interval * (burst - 1)`.
    tolerance: u64,
    pub(crate) max_wait: u64,
    epoch: Instant,
    /// Theoretical arrival time of the next call, in nanoseconds since `epoch`.
    tat: AtomicU64,
    pub(crate) rejected: super::rejections::Rejections,
}

impl Limiter {
    /// Takes a permit if one is due within `max_wait` nanoseconds: `Ok(wait)` says how long the
    /// caller must wait for it (zero: go now); `Err(retry_after)` means no permit is reserved.
    #[inline]
    pub(crate) fn acquire(&self, max_wait: u64) -> Result<u64, u64> {
        let now = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let base = tat.max(now);
            let allowed_at = base.saturating_sub(self.tolerance);
            let wait = allowed_at.saturating_sub(now);
            if wait > max_wait {
                return Err(wait);
            }
            match self.tat.compare_exchange_weak(
                tat,
                base.saturating_add(self.interval),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Ok(wait),
                Err(actual) => tat = actual,
            }
        }
    }

    pub(crate) fn rejection(&self, retry_after: u64) -> Error {
        Error::new(ErrorKind::RateLimited {
            name: self.name,
            retry_after: Duration::from_nanos(retry_after),
        })
    }
}

/// Builds [`RateLimiter`] services that all share one limiter.
#[derive(Clone)]
pub struct RateLimiterLayer {
    pub(crate) limiter: Arc<Limiter>,
}

impl fmt::Debug for RateLimiterLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiterLayer")
            .field("name", &self.limiter.name)
            .field("interval_ns", &self.limiter.interval)
            .field("tolerance_ns", &self.limiter.tolerance)
            .field("max_wait_ns", &self.limiter.max_wait)
            .finish()
    }
}

impl RateLimiterLayer {
    /// Validates `config` and creates the shared limiter, with a full burst available.
    ///
    /// The metric (`rate_limit_rejected_total`, label `name`) is registered here, at 0 until a
    /// call is rejected: install the metrics recorder before building layers.
    pub fn new(config: RateLimiterConfig) -> Result<Self, Error> {
        config.validate()?;
        let interval = u64::try_from(config.period.as_nanos() / u128::from(config.rate))
            .map_err(|_| Error::invalid_config("rate limiter period too long"))?;
        let tolerance = interval.saturating_mul(u64::from(config.effective_burst() - 1));
        let name = ComponentName::new(&config.name);
        names::preregister(names::RATE_LIMIT_REJECTED, &[(names::labels::NAME, &name)]);
        Ok(Self {
            limiter: Arc::new(Limiter {
                rejected: super::rejections::Rejections::new(
                    metrics::counter!(names::RATE_LIMIT_REJECTED, names::labels::NAME => name.to_string()),
                ),
                name,
                interval,
                tolerance,
                max_wait: u64::try_from(config.max_wait.as_nanos()).unwrap_or(u64::MAX),
                epoch: Instant::now(),
                tat: AtomicU64::new(0),
            }),
        })
    }

    /// Takes a permit now, without waiting, outside of any service (e.g. to pace a loop).
    /// Fails with [`ErrorKind::RateLimited`] saying when the next permit is due.
    pub fn try_acquire(&self) -> Result<(), Error> {
        self.limiter
            .acquire(0)
            .map(|_| ())
            .map_err(|retry_after| self.limiter.rejection(retry_after))
    }

    /// The name of this limiter.
    pub fn name(&self) -> &str {
        &self.limiter.name
    }

    /// How many calls may start at once after a quiet spell: the configured `burst` (or
    /// `rate` without one).
    pub fn burst(&self) -> u64 {
        self.limiter.tolerance / self.limiter.interval + 1
    }

    /// Permits that could be taken right now without waiting (at most [`burst`](Self::burst)).
    /// Reads the limiter, takes nothing.
    pub fn available_permits(&self) -> u64 {
        let limiter = &self.limiter;
        let now = u64::try_from(limiter.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let ahead = limiter.tat.load(Ordering::Relaxed).saturating_sub(now);
        self.burst()
            .saturating_sub(ahead.div_ceil(limiter.interval))
    }

    /// Calls rejected since the limiter was built.
    pub fn rejected_calls(&self) -> u64 {
        self.limiter.rejected.total()
    }
}

impl<S> Layer<S> for RateLimiterLayer {
    type Service = RateLimiter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimiter {
            inner,
            limiter: self.limiter.clone(),
            state: State::Idle,
        }
    }
}

enum State {
    Idle,
    Waiting(Pin<Box<Sleep>>),
    Acquired,
    Rejected(u64),
}

/// A service admitting calls at the rate of its (shared) limiter.
pub struct RateLimiter<S> {
    inner: S,
    limiter: Arc<Limiter>,
    state: State,
}

impl<S: Clone> Clone for RateLimiter<S> {
    fn clone(&self) -> Self {
        // A clone has not been readied: it takes its own permit.
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            state: State::Idle,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for RateLimiter<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Idle => "idle",
            State::Waiting(_) => "waiting",
            State::Acquired => "acquired",
            State::Rejected(_) => "rejected",
        };
        f.debug_struct("RateLimiter")
            .field("inner", &self.inner)
            .field("name", &self.limiter.name)
            .field("state", &state)
            .finish()
    }
}

impl<S> RateLimiter<S> {
    crate::__define_inner_service_accessors!();
}

crate::__impl_boxed_service!(RateLimiter => ResponseFuture<S::Future> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        loop {
            match &mut self.state {
                State::Idle => {
                    self.state = match self.limiter.acquire(self.limiter.max_wait) {
                        Ok(0) => State::Acquired,
                        Ok(wait) => {
                            State::Waiting(Box::pin(tokio::time::sleep(Duration::from_nanos(wait))))
                        }
                        Err(retry_after) => State::Rejected(retry_after),
                    }
                }
                State::Waiting(sleep) => {
                    ready!(sleep.as_mut().poll(cx));
                    self.state = State::Acquired;
                }
                // NOTE: `call` sees `Rejected` and fails the call without touching `inner`.
                State::Rejected(_) => return Poll::Ready(Ok(())),
                State::Acquired => return self.inner.poll_ready(cx).map_err(Into::into),
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Acquired => ResponseFuture::called(self.inner.call(req), None),
            State::Rejected(retry_after) => {
                self.limiter.rejected.increment(1);
                tracing::debug!(rate_limiter = %self.limiter.name, ?retry_after, "rate limited: call rejected");
                ResponseFuture::rejected(self.limiter.rejection(retry_after))
            }
            State::Idle | State::Waiting(_) => {
                panic!("RateLimiter::call without a successful poll_ready (tower Service contract)")
            }
        }
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rate: u32, burst: u32) -> RateLimiterLayer {
        RateLimiterLayer::new(RateLimiterConfig::new("t").rate(rate).burst(burst)).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_steady_rate() {
        let l = limiter(10, 3); // one permit per 100ms, bursts of 3
        for _ in 0..3 {
            l.try_acquire().unwrap();
        }
        let err = l.try_acquire().unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_millis(100)));
        tokio::time::advance(Duration::from_millis(99)).await;
        assert_eq!(
            l.try_acquire().unwrap_err().retry_after(),
            Some(Duration::from_millis(1))
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        l.try_acquire().unwrap();
        assert!(l.try_acquire().is_err());
        // A long quiet spell refills the burst, but never beyond it.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..3 {
            l.try_acquire().unwrap();
        }
        assert!(l.try_acquire().is_err());
    }

    #[test]
    fn invalid_configs_are_rejected() {
        assert!(RateLimiterLayer::new(RateLimiterConfig::new("x").rate(0)).is_err());
        assert!(RateLimiterLayer::new(RateLimiterConfig::new("x").period(Duration::ZERO)).is_err());
        assert!(
            RateLimiterLayer::new(
                RateLimiterConfig::new("x")
                    .rate(u32::MAX)
                    .period(Duration::from_nanos(10))
            )
            .is_err()
        );
    }
}
