//! Retries failed attempts with jittered exponential backoff, under a retry budget and an
//! overall deadline.
//!
//! [`BackoffRetryLayer`] is a ready-made retry policy for tower services, on [`tower::retry`]'s model
//! (a per-call policy consulted after every attempt, a shared
//! [`Budget`]). Per call it:
//!
//! - makes at most [`max_attempts`](RetryConfig::max_attempts) attempts (the first call included);
//! - waits between attempts as the [`Backoff`] says (exponential, full or decorrelated jitter,
//!   capped at `max`), or as long as the server asked when a [`RetryAfter`] hook finds a
//!   server-given delay (e.g. HTTP `Retry-After`, which `chassis-http` plugs in);
//! - bounds each attempt with [`attempt_timeout`](RetryConfig::attempt_timeout) (a timed-out
//!   attempt is retried like any failure) and the whole call, attempts and waits included, with
//!   [`deadline`](RetryConfig::deadline); a wait that would end past the deadline is not started;
//! - withdraws every retry from a shared [retry budget](RetryBudgetConfig) (tower's
//!   [`TpsBudget`](tower::retry::budget::TpsBudget) semantics, lock-free: every call deposits,
//!   each retry withdraws, so retries stay a bounded fraction of traffic) so that in an outage
//!   retries cannot multiply the load on the struggling downstream;
//! - asks a [`RetryClassifier`] whether an outcome is worth retrying (default:
//!   [`DefaultRetryClassifier`]: every error except rejections by local resilience layers such as
//!   an open circuit, see there why);
//! - copies the request for the next attempt with a [`CloneRequest`] (default: `Req: Clone`).
//!
//! # Outcomes
//!
//! Errors are [`chassis_core::Error`](crate::Error)s, boxed as [`BoxError`]:
//!
//! | what happened | the caller gets |
//! |---|---|
//! | an attempt succeeded, or failed with an error the classifier does not retry | that outcome, unchanged |
//! | the last allowed attempt failed | [`ErrorKind::RetriesExhausted { attempts }`](crate::ErrorKind::RetriesExhausted), source = last error |
//! | a retry was wanted but the budget was spent | [`ErrorKind::RetryBudgetExhausted { attempts }`](crate::ErrorKind::RetryBudgetExhausted), source = last error |
//! | the deadline elapsed during an attempt or a wait, or the next wait would pass it | [`ErrorKind::DeadlineExceeded { after, attempts }`](crate::ErrorKind::DeadlineExceeded) (source = last error when one is known) |
//! | a retryable failure of a request that cannot be copied | [`ErrorKind::RequestNotCloneable`](crate::ErrorKind::RequestNotCloneable), source = the failure |
//! | the inner service's `poll_ready` fails between attempts (e.g. an open breaker) | that error, unchanged |
//!
//! A request that cannot be copied is never silently sent once: its failure is the typed
//! `RequestNotCloneable`, so the caller knows a retry was wanted and impossible. A *response*
//! the classifier calls retryable (say HTTP 503) is returned as the response when retries run
//! out (or the budget or deadline stop them, or the request cannot be copied), because turning it
//! into an error would lose it; the `retry_attempts_total` counter still records why.
//!
//! # Cost
//!
//! A call clones the service once, for the attempts after the first; the backoff timer is
//! allocated only when a retry waits; the deadline's clock starts on the first poll that has to
//! wait, or at the first retry decision, so a call that completes at once reads no clock and arms
//! no timer. The budget is tower's [`Budget`] trait, implemented by [`RetryBudget`].
//!
//! # Observability
//!
//! Every finished attempt increments the counter `retry_attempts_total` with labels `name` and
//! `outcome` (`success`, `not_retryable`, `retried`, `exhausted`, `budget_exhausted`, `deadline`,
//! `not_cloneable`); the handles are registered when the layer is built, so install the metrics
//! recorder first. Each retry emits a `DEBUG` tracing event (attempt, delay, error), giving up
//! a `WARN` one.
//!
//! # Example
//!
//! ```
//! use chassis_core::resilience::retry::{Backoff, BackoffRetryLayer, RetryConfig};
//! use chassis_core::{BoxError, Error, ErrorKind};
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let calls = Arc::new(AtomicU32::new(0));
//! let flaky = {
//!     let calls = calls.clone();
//!     service_fn(move |_: &'static str| {
//!         let n = calls.fetch_add(1, Ordering::SeqCst);
//!         async move {
//!             if n < 2 { Err::<u32, BoxError>("flaky".into()) } else { Ok(n) }
//!         }
//!     })
//! };
//! let layer = BackoffRetryLayer::new(
//!     RetryConfig::new("inventory")
//!         .max_attempts(3)
//!         .backoff(Backoff::exponential(Duration::from_millis(10)).max(Duration::from_secs(1)))
//!         .attempt_timeout(Duration::from_millis(200))
//!         .deadline(Duration::from_secs(2)),
//! )
//! .unwrap();
//! assert_eq!(layer.layer(flaky.clone()).oneshot("get").await.unwrap(), 2);
//!
//! // Two more failures in a row exhaust a 2-attempt policy.
//! calls.store(0, Ordering::SeqCst);
//! let layer = BackoffRetryLayer::new(RetryConfig::new("inventory").max_attempts(2)).unwrap();
//! let err = Error::from_boxed(layer.layer(flaky).oneshot("get").await.unwrap_err()).unwrap();
//! assert_eq!(err.kind(), &ErrorKind::RetriesExhausted { attempts: 2 });
//! assert_eq!(err.last_error().unwrap().to_string(), "flaky");
//! # }
//! ```

mod backoff;
mod budget;
mod classify;
mod future;
mod policy;

pub use backoff::{Backoff, Jitter};
pub use budget::RetryBudget;
pub use classify::{
    CloneRequest, CloneWithClone, DefaultRetryClassifier, NoRetryAfter, RetryAfter, RetryClassifier,
};
pub use future::ResponseFuture;
pub(crate) use future::{Retrying, after_attempt, poll_deadline};
pub(crate) use policy::{AttemptPolicy, Outcome};

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use serde::Deserialize;
use tower::retry::budget::Budget;
use tower_layer::Layer;
use tower_service::Service;

use super::clock::{Clock, ClockSource};
use super::time_limiter::{TimeLimiter, TimeLimiterLayer};
use crate::metric_catalogue as names;
use crate::{BoxError, Error};

/// The retry budget: retries may add at most `retry_ratio` of the calls seen in the last `ttl`,
/// plus `min_retries_per_sec` always (so a quiet client can still retry): the semantics of
/// [`tower::retry::budget::TpsBudget`], implemented lock-free by [`RetryBudget`].
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Whether retries are budgeted at all. Defaults to `true`.
    pub enabled: bool,
    /// How long a call's deposit counts. Defaults to 10 s; between 1 s and 60 s.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Retries per second allowed regardless of traffic. Defaults to 10.
    pub min_retries_per_sec: u32,
    /// Retries allowed per call, on top of the minimum (0.2 = 20 % extra load at most).
    /// Defaults to 0.2; between 0 and 1000.
    pub retry_ratio: f32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl: Duration::from_secs(10),
            min_retries_per_sec: 10,
            retry_ratio: 0.2,
        }
    }
}

impl RetryBudgetConfig {
    /// No budget: every retry the other limits allow happens, even in an outage.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// A budget of `min_retries_per_sec` plus `retry_ratio` retries per call over `ttl`.
    pub fn new(ttl: Duration, min_retries_per_sec: u32, retry_ratio: f32) -> Self {
        Self {
            enabled: true,
            ttl,
            min_retries_per_sec,
            retry_ratio,
        }
    }

    /// Checks the ranges `TpsBudget` accepts (it panics outside them).
    pub fn validate(&self) -> Result<(), Error> {
        if !self.enabled {
            return Ok(());
        }
        if self.ttl < Duration::from_secs(1) || self.ttl > Duration::from_secs(60) {
            return Err(Error::invalid_config(
                "retry budget ttl must be between 1s and 60s",
            ));
        }
        if !(0.0..=1000.0).contains(&self.retry_ratio) {
            return Err(Error::invalid_config(
                "retry budget retry_ratio must be between 0 and 1000",
            ));
        }
        if self.min_retries_per_sec >= i32::MAX as u32 {
            return Err(Error::invalid_config(
                "retry budget min_retries_per_sec too large",
            ));
        }
        Ok(())
    }

    fn build(&self, clock: ClockSource) -> Option<Arc<RetryBudget>> {
        self.enabled.then(|| {
            Arc::new(RetryBudget::new(
                self.ttl,
                self.min_retries_per_sec,
                self.retry_ratio,
                clock,
            ))
        })
    }
}

/// Configuration of a [`BackoffRetryLayer`]. Deserializes from e.g.
///
/// ```toml
/// name = "inventory"
/// max_attempts = 4
/// attempt_timeout = "300ms"
/// deadline = "2s"
/// backoff = { base = "50ms", max = "1s", jitter = "decorrelated" }
/// budget = { ttl = "10s", min_retries_per_sec = 5, retry_ratio = 0.1 }
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Name used in metrics and traces. Defaults to `"default"`.
    pub name: String,
    /// Attempts per call, the first one included; 1 disables retries. Defaults to 3.
    pub max_attempts: u32,
    /// Waits between attempts. Defaults to [`Backoff::default`] (100 ms base, 10 s max, full
    /// jitter).
    pub backoff: Backoff,
    /// Bound on each attempt. Defaults to none.
    #[serde(with = "humantime_serde")]
    pub attempt_timeout: Option<Duration>,
    /// Bound on the whole call, attempts and waits included. Defaults to none.
    #[serde(with = "humantime_serde")]
    pub deadline: Option<Duration>,
    /// The retry budget. Defaults to [`RetryBudgetConfig::default`] (enabled).
    pub budget: RetryBudgetConfig,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            max_attempts: 3,
            backoff: Backoff::default(),
            attempt_timeout: None,
            deadline: None,
            budget: RetryBudgetConfig::default(),
        }
    }
}

impl RetryConfig {
    crate::__named_config_new!();

    crate::__builder_setters! {
        /// Sets the attempts per call (first call included). Defaults to 3.
        max_attempts: u32,
        /// Sets the backoff. Defaults to [`Backoff::default`].
        backoff: Backoff,
        /// Bounds each attempt. Defaults to no bound.
        attempt_timeout(timeout): Some(Duration),
        /// Bounds the whole call. Defaults to no bound.
        deadline: Some(Duration),
        /// Sets the retry budget. Defaults to [`RetryBudgetConfig::default`].
        budget: RetryBudgetConfig,
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), Error> {
        if self.max_attempts == 0 {
            return Err(Error::invalid_config(format!(
                "retry '{}': max_attempts must be at least 1",
                self.name
            )));
        }
        if self.attempt_timeout == Some(Duration::ZERO) || self.deadline == Some(Duration::ZERO) {
            return Err(Error::invalid_config(format!(
                "retry '{}': timeouts must be positive",
                self.name
            )));
        }
        self.backoff.validate()?;
        self.budget.validate()
    }
}

/// What every service of one [`BackoffRetryLayer`] shares.
pub(crate) struct Shared<C, H, K> {
    pub(crate) name: Arc<str>,
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) deadline: Option<Duration>,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    pub(crate) classifier: C,
    pub(crate) retry_after: H,
    pub(crate) cloner: K,
    counters: [metrics::Counter; Outcome::ALL.len()],
}

impl<C, H, K> Shared<C, H, K> {
    #[inline]
    pub(crate) fn record(&self, outcome: Outcome) {
        self.counters[outcome as usize].increment(1);
    }
}

/// Builds [`BackoffRetry`] services; every service built from one layer (and its clones) shares one
/// retry budget.
///
/// Type parameters: the [`RetryClassifier`] `C`, the [`RetryAfter`] hook `H` and the
/// [`CloneRequest`] `K`, set with [`with_classifier`](Self::with_classifier),
/// [`with_retry_after`](Self::with_retry_after) and [`with_cloner`](Self::with_cloner).
#[derive(Clone)]
pub struct BackoffRetryLayer<C = DefaultRetryClassifier, H = NoRetryAfter, K = CloneWithClone> {
    name: Arc<str>,
    max_attempts: u32,
    backoff: Backoff,
    attempt_timeout: Option<Duration>,
    deadline: Option<Duration>,
    budget_config: RetryBudgetConfig,
    budget: Option<Arc<RetryBudget>>,
    classifier: C,
    retry_after: H,
    cloner: K,
    counters: [metrics::Counter; Outcome::ALL.len()],
}

impl<C, H, K> fmt::Debug for BackoffRetryLayer<C, H, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackoffRetryLayer")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("deadline", &self.deadline)
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl BackoffRetryLayer {
    /// Validates `config` and creates the retry budget, with the default classifier, no
    /// server-delay hook and `Clone` for copying requests.
    ///
    /// The metric (`retry_attempts_total` by `name` and `outcome`) is registered here, every
    /// catalogued outcome at 0: install the metrics recorder before building layers.
    pub fn new(config: RetryConfig) -> Result<Self, Error> {
        config.validate()?;
        let name: Arc<str> = config.name.into();
        names::preregister(names::RETRY_ATTEMPTS, &[(names::labels::NAME, &name)]);
        let counters = Outcome::ALL.map(|o| {
            metrics::counter!(names::RETRY_ATTEMPTS, names::labels::NAME => name.to_string(), names::labels::OUTCOME => o.as_str())
        });
        Ok(Self {
            max_attempts: config.max_attempts,
            backoff: config.backoff,
            attempt_timeout: config.attempt_timeout,
            deadline: config.deadline,
            budget: config.budget.build(ClockSource::Coarse),
            budget_config: config.budget,
            name,
            classifier: DefaultRetryClassifier,
            retry_after: NoRetryAfter,
            cloner: CloneWithClone,
            counters,
        })
    }
}

impl<C, H, K> BackoffRetryLayer<C, H, K> {
    /// Gives the layer a fresh retry budget that reads time from `clock` instead of the default
    /// [`CoarseClock`](super::clock::CoarseClock): pass a
    /// [`TokioClock`](super::clock::TokioClock) in tests that advance tokio's paused clock and
    /// expect the budget's window to follow it.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.budget = self.budget_config.build(ClockSource::from_clock(clock));
        self
    }

    /// The retry budget every service of this layer shares, if budgets are enabled.
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.budget.as_deref()
    }

    /// The shared retry budget as an owned handle (e.g. for the
    /// [control registry](crate::control::ControlRegistry)), if budgets are enabled.
    pub fn budget_handle(&self) -> Option<Arc<RetryBudget>> {
        self.budget.clone()
    }

    /// Replaces the classifier deciding which outcomes are retried.
    pub fn with_classifier<C2>(self, classifier: C2) -> BackoffRetryLayer<C2, H, K> {
        self.map_hooks(|_, retry_after, cloner| (classifier, retry_after, cloner))
    }

    /// Sets the hook extracting server-given delays (e.g. HTTP `Retry-After`).
    pub fn with_retry_after<H2>(self, retry_after: H2) -> BackoffRetryLayer<C, H2, K> {
        self.map_hooks(|classifier, _, cloner| (classifier, retry_after, cloner))
    }

    /// Replaces how requests are copied for the next attempt.
    pub fn with_cloner<K2>(self, cloner: K2) -> BackoffRetryLayer<C, H, K2> {
        self.map_hooks(|classifier, retry_after, _| (classifier, retry_after, cloner))
    }

    /// The same layer with its classifier, `Retry-After` hook and cloner passed through `f`.
    fn map_hooks<C2, H2, K2>(
        self,
        f: impl FnOnce(C, H, K) -> (C2, H2, K2),
    ) -> BackoffRetryLayer<C2, H2, K2> {
        let (classifier, retry_after, cloner) = f(self.classifier, self.retry_after, self.cloner);
        BackoffRetryLayer {
            name: self.name,
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            attempt_timeout: self.attempt_timeout,
            deadline: self.deadline,
            budget_config: self.budget_config,
            budget: self.budget,
            classifier,
            retry_after,
            cloner,
            counters: self.counters,
        }
    }

    /// Removes the per-attempt timeout from the layer (the [`policy`](super::policy) places it
    /// further in, inside the circuit breaker) and returns it.
    pub(crate) fn take_attempt_timeout(&mut self) -> Option<Duration> {
        self.attempt_timeout.take()
    }

    /// The name of this retry policy.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl<C: Clone, H: Clone, K: Clone> BackoffRetryLayer<C, H, K> {
    /// What the services this layer builds share (the budget among them).
    pub(crate) fn shared(&self) -> Shared<C, H, K> {
        Shared {
            name: self.name.clone(),
            max_attempts: self.max_attempts,
            backoff: self.backoff,
            deadline: self.deadline,
            budget: self.budget.clone(),
            classifier: self.classifier.clone(),
            retry_after: self.retry_after.clone(),
            cloner: self.cloner.clone(),
            counters: self.counters.clone(),
        }
    }
}

impl<S, C: Clone, H: Clone, K: Clone> Layer<S> for BackoffRetryLayer<C, H, K> {
    type Service = BackoffRetry<TimeLimiter<S>, C, H, K>;

    fn layer(&self, inner: S) -> Self::Service {
        BackoffRetry {
            inner: TimeLimiterLayer::optional(self.attempt_timeout).layer(inner),
            shared: Arc::new(self.shared()),
        }
    }
}

/// A service retrying failed calls of `S` (see the [module docs](self)).
pub struct BackoffRetry<S, C = DefaultRetryClassifier, H = NoRetryAfter, K = CloneWithClone> {
    inner: S,
    shared: Arc<Shared<C, H, K>>,
}

impl<S: Clone, C, H, K> Clone for BackoffRetry<S, C, H, K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, C, H, K> fmt::Debug for BackoffRetry<S, C, H, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackoffRetry")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("max_attempts", &self.shared.max_attempts)
            .finish_non_exhaustive()
    }
}

impl<S, C, H, K> BackoffRetry<S, C, H, K> {
    crate::__define_inner_service_accessors!();
}

impl<S, Req, C, H, K> Service<Req> for BackoffRetry<S, C, H, K>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: RetryClassifier<S::Response>,
    H: RetryAfter<S::Response>,
    K: CloneRequest<Req>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, C, H, K>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let shared = &self.shared;
        if let Some(budget) = &shared.budget {
            // Every call earns retries for others; only retries spend them.
            budget.deposit();
        }
        let copy = if shared.max_attempts > 1 {
            shared.cloner.clone_request(&req)
        } else {
            None
        };
        let not_cloneable = shared.max_attempts > 1 && copy.is_none();
        let retry = copy.map(|copy| {
            // The future keeps a clone of the service for the attempts after the first.
            Retrying::new(self.inner.clone(), AttemptPolicy::new(shared), copy)
        });
        ResponseFuture::new(self.inner.call(req), retry, not_cloneable, shared.clone())
    }
}
