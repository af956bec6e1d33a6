//! One configuration stacking every resilience layer in a fixed, documented order.
//!
//! A [`ResiliencePolicy`] says which layers to use and how; each part is optional. It is plain
//! data (builder methods and [`serde::Deserialize`], so it loads from TOML, JSON or environment
//! variables through any serde source). [`ResiliencePolicy::build`] validates it and creates the
//! shared state (the breaker, the retry budget, the bulkhead's permits, the rate limiter) once,
//! returning a [`ResilienceLayer`]; every service that layer wraps, and every clone of those,
//! shares that state, so one layer stands for one downstream dependency.
//!
//! # The order, outermost first
//!
//! ```text
//! rate limit → bulkhead → adaptive limit → retry (overall deadline, budget) → circuit breaker → attempt timeout → service
//! ```
//!
//! - **Rate limit outermost**: it meters *calls* as the caller makes them; a call is admitted
//!   (or rejected with `RateLimited { retry_after }`) before it takes any other resource, and its
//!   retries do not consume more rate permits (the retry budget bounds those).
//! - **Bulkhead outside retry**: a call holds *one* concurrency permit for its whole life,
//!   backoff waits included, so retries cannot make a call take several slots, and a full
//!   bulkhead rejects before any attempt starts.
//! - **Adaptive limit after the bulkhead, outside retry**: like the bulkhead it counts *calls*
//!   (a call and its retries are one slot), and its latency sample is the call's as the caller
//!   meets it, retries and backoff included: a dependency that needs retries is a slower one,
//!   and the limit shrinks before callers queue. A call that ends in a timeout or the overall
//!   deadline is its overload signal (a drop). It sheds at once (no wait: a wait is the queue it
//!   prevents), so a bounded bulkhead wait in front of it still smooths bursts.
//! - **Retry outside the breaker**: the breaker sees and records *every attempt*, so a failing
//!   downstream trips it as fast as it fails, and once it is open the next retry's `poll_ready`
//!   is rejected at once with `CircuitOpen` (never sent downstream) and the default retry
//!   classifier does not retry that rejection: an open breaker ends retrying.
//! - **Attempt timeout inside the breaker**: a timed-out attempt is an error the breaker records
//!   as a failure (and a slow call), and, being inside retry, it is retried like any failure:
//!   a hung first attempt times out and the second gets its own full timeout.
//! - **The overall deadline** belongs to the retry layer and bounds the whole call, waits and
//!   attempts included; a backoff that would end past it is not started.
//!
//! Two layers go around and inside the policy's stack, as typed layers of their own (they
//! need the request and response types, which a config file cannot name):
//!
//! ```text
//! fallback → [ the policy's stack … attempt timeout ] → hedge → service
//! ```
//!
//! - **[Fallback](super::fallback) outermost**: it sees the stack's final word (retries
//!   exhausted, breaker open, shed, rate limited) and answers the errors it was given; its
//!   answer is not retried, not counted by the breaker as the dependency's success, and holds
//!   no bulkhead or limit slot.
//! - **[Hedge](super::hedge) innermost, inside the attempt timeout**: the hedged pair is one
//!   attempt, so the timeout bounds both, the breaker records the pair's outcome (what the
//!   caller met) and an open breaker sends neither; retries retry the pair. Hedges spend the
//!   retry layer's budget ([`ResilienceLayer::retry`] → `budget_handle`), so a slow outage,
//!   where every call would be hedged, cannot double the load.
//!
//! Every layer fails with a [`chassis_core::Error`](crate::Error) boxed as
//! [`BoxError`](crate::BoxError); inner errors pass through boxed.
//!
//! The layers run fused in one service, [`Resilient`]: one `call` and one response future for
//! the whole stack, with the behaviour of the layers stacked in this order (see there why).
//!
//! # Example
//!
//! ```
//! use chassis_core::resilience::policy::ResiliencePolicy;
//! use chassis_core::BoxError;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let policy: ResiliencePolicy = toml::from_str(r#"
//!     name = "inventory"
//!     timeout = "250ms"            # per attempt
//!
//!     [retry]
//!     max_attempts = 3
//!     deadline = "2s"
//!     backoff = { base = "50ms", max = "1s", jitter = "full" }
//!
//!     [circuit_breaker]
//!     minimum_number_of_calls = 20
//!     wait_duration_in_open_state = "10s"
//!
//!     [bulkhead]
//!     max_concurrent = 32
//!     max_wait = "20ms"
//! "#)?;
//! let layer = policy.build()?;
//! let svc = layer.layer(service_fn(|id: u32| async move { Ok::<_, BoxError>(id * 2) }));
//! assert_eq!(svc.oneshot(21).await?, 42);
//! assert_eq!(layer.circuit_breaker().unwrap().name(), "inventory");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tower_layer::Layer;

use super::adaptive_limit::{AdaptiveLimitConfig, AdaptiveLimitLayer};
use super::bulkhead::{BulkheadConfig, BulkheadLayer};
use super::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, Clock, DefaultClassifier,
};
use super::rate_limiter::{RateLimiterConfig, RateLimiterLayer};
use super::retry::{
    BackoffRetryLayer, CloneWithClone, DefaultRetryClassifier, NoRetryAfter, RetryConfig,
};
use super::time_limiter::TimeLimiterLayer;
use crate::Error;

mod future;
mod service;

pub use future::ResponseFuture;
pub use service::Resilient;

use service::Parts;

/// Which resilience layers to stack, and how each is configured. Every part is optional;
/// the default policy has none (calls only get their errors boxed).
///
/// Deserializes from a table such as
///
/// ```toml
/// name = "payments"
/// timeout = "300ms"
/// rate_limit      = { rate = 200, period = "1s", burst = 50 }
/// bulkhead        = { max_concurrent = 16, max_wait = "50ms" }
/// adaptive_limit  = { initial_limit = 20, max_limit = 200, algorithm = { kind = "vegas" } }
/// retry           = { max_attempts = 3, deadline = "1s" }
/// circuit_breaker = { failure_rate_threshold = 50.0, wait_duration_in_open_state = "5s" }
/// ```
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResiliencePolicy {
    /// Name given to every part still named `"default"`. Defaults to `"default"`.
    pub name: Option<String>,
    /// Timeout of each attempt (of the call, without retry), inside the breaker. May instead
    /// be given as `retry.attempt_timeout`; not both. Defaults to none.
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Rate limiter, outermost. Defaults to none.
    pub rate_limit: Option<RateLimiterConfig>,
    /// Bulkhead, outside retry. Defaults to none.
    pub bulkhead: Option<BulkheadConfig>,
    /// Adaptive concurrency limit, after the bulkhead and outside retry. Defaults to none.
    pub adaptive_limit: Option<AdaptiveLimitConfig>,
    /// Retry with overall deadline and budget, outside the breaker. Defaults to none.
    pub retry: Option<RetryConfig>,
    /// Circuit breaker, seeing each attempt. Defaults to none.
    pub circuit_breaker: Option<CircuitBreakerConfig>,
}

impl ResiliencePolicy {
    /// A policy with no layers, to be filled with the builder methods.
    pub fn new() -> Self {
        Self::default()
    }

    /// Names every part still called `"default"`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    crate::__builder_setters! {
        /// Sets the per-attempt timeout.
        timeout: Some(Duration),
        /// Adds a rate limiter.
        rate_limit(config): Some(RateLimiterConfig),
        /// Adds a bulkhead.
        bulkhead(config): Some(BulkheadConfig),
        /// Adds an adaptive concurrency limit.
        adaptive_limit(config): Some(AdaptiveLimitConfig),
        /// Adds retries.
        retry(config): Some(RetryConfig),
        /// Adds a circuit breaker.
        circuit_breaker(config): Some(CircuitBreakerConfig),
    }

    /// Validates the policy and creates its shared state. Fails with
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) if any part is invalid.
    pub fn build(&self) -> Result<ResilienceLayer, Error> {
        let mut attempt_timeout = self.timeout;
        let mut retry = self.part(&self.retry, |c| &mut c.name, BackoffRetryLayer::new)?;
        if let Some(t) = retry
            .as_mut()
            .and_then(BackoffRetryLayer::take_attempt_timeout)
        {
            if attempt_timeout.is_some_and(|own| own != t) {
                return Err(Error::invalid_config(
                    "policy: set either `timeout` or `retry.attempt_timeout`, not both",
                ));
            }
            attempt_timeout = Some(t);
        }
        if attempt_timeout == Some(Duration::ZERO) {
            return Err(Error::invalid_config("policy: timeout must be positive"));
        }
        let circuit_breaker = self.part(
            &self.circuit_breaker,
            |c| &mut c.name,
            CircuitBreakerLayer::new,
        )?;
        let bulkhead = self.part(&self.bulkhead, |c| &mut c.name, BulkheadLayer::new)?;
        let adaptive_limit = self.part(
            &self.adaptive_limit,
            |c| &mut c.name,
            AdaptiveLimitLayer::new,
        )?;
        let rate_limit = self.part(&self.rate_limit, |c| &mut c.name, RateLimiterLayer::new)?;
        Ok(ResilienceLayer {
            timeout: TimeLimiterLayer::optional(attempt_timeout),
            circuit_breaker,
            retry,
            bulkhead,
            adaptive_limit,
            rate_limit,
        })
    }

    /// The layer of a configured part: `config` renamed to the policy's name while still
    /// called `"default"`, then built by `layer`. `name` picks the configuration's name.
    fn part<C: Clone, L>(
        &self,
        config: &Option<C>,
        name: fn(&mut C) -> &mut String,
        layer: impl FnOnce(C) -> Result<L, Error>,
    ) -> Result<Option<L>, Error> {
        let Some(config) = config else {
            return Ok(None);
        };
        let mut config = config.clone();
        if let Some(policy_name) = &self.name
            && name(&mut config) == "default"
        {
            policy_name.clone_into(name(&mut config));
        }
        layer(config).map(Some)
    }
}

/// The layer a [`ResiliencePolicy`] builds: wraps a service in
/// `rate limit → bulkhead → adaptive limit → retry → circuit breaker → attempt timeout` (the
/// parts configured).
///
/// Type parameters, all with defaults: the retry's
/// [`RetryClassifier`](super::retry::RetryClassifier) `RC`, its
/// [`RetryAfter`](super::retry::RetryAfter) hook `H` and
/// [`CloneRequest`](super::retry::CloneRequest) `K`, and the breaker's
/// [`Classify`](super::circuit_breaker::Classify) `BC`.
/// Protocol crates set them with the `with_*` methods (e.g. `chassis-http` retries 5xx and 429,
/// honours `Retry-After`, counts 5xx as breaker failures and copies buffered bodies).
#[derive(Clone)]
pub struct ResilienceLayer<
    RC = DefaultRetryClassifier,
    H = NoRetryAfter,
    K = CloneWithClone,
    BC = DefaultClassifier,
> {
    timeout: TimeLimiterLayer,
    circuit_breaker: Option<CircuitBreakerLayer<BC>>,
    retry: Option<BackoffRetryLayer<RC, H, K>>,
    bulkhead: Option<BulkheadLayer>,
    adaptive_limit: Option<AdaptiveLimitLayer>,
    rate_limit: Option<RateLimiterLayer>,
}

impl<RC, H, K, BC> fmt::Debug for ResilienceLayer<RC, H, K, BC> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResilienceLayer")
            .field("rate_limit", &self.rate_limit)
            .field("bulkhead", &self.bulkhead)
            .field("adaptive_limit", &self.adaptive_limit)
            .field("retry", &self.retry)
            .field(
                "circuit_breaker",
                &self
                    .circuit_breaker
                    .as_ref()
                    .map(|b| b.handle().name().to_owned()),
            )
            .field("timeout", &self.timeout.after())
            .finish()
    }
}

impl<RC, H, K, BC> ResilienceLayer<RC, H, K, BC> {
    /// Replaces the retry classifier (what outcomes are retried).
    pub fn with_retry_classifier<RC2>(self, classifier: RC2) -> ResilienceLayer<RC2, H, K, BC> {
        ResilienceLayer {
            timeout: self.timeout,
            circuit_breaker: self.circuit_breaker,
            retry: self.retry.map(|r| r.with_classifier(classifier)),
            bulkhead: self.bulkhead,
            adaptive_limit: self.adaptive_limit,
            rate_limit: self.rate_limit,
        }
    }

    /// Sets the hook reading server-given retry delays (e.g. HTTP `Retry-After`).
    pub fn with_retry_after<H2>(self, hook: H2) -> ResilienceLayer<RC, H2, K, BC> {
        ResilienceLayer {
            timeout: self.timeout,
            circuit_breaker: self.circuit_breaker,
            retry: self.retry.map(|r| r.with_retry_after(hook)),
            bulkhead: self.bulkhead,
            adaptive_limit: self.adaptive_limit,
            rate_limit: self.rate_limit,
        }
    }

    /// Replaces how requests are copied for retries.
    pub fn with_request_cloner<K2>(self, cloner: K2) -> ResilienceLayer<RC, H, K2, BC> {
        ResilienceLayer {
            timeout: self.timeout,
            circuit_breaker: self.circuit_breaker,
            retry: self.retry.map(|r| r.with_cloner(cloner)),
            bulkhead: self.bulkhead,
            adaptive_limit: self.adaptive_limit,
            rate_limit: self.rate_limit,
        }
    }

    /// Replaces the breaker's classifier (what outcomes count as failures).
    pub fn with_breaker_classifier<BC2>(self, classifier: BC2) -> ResilienceLayer<RC, H, K, BC2> {
        ResilienceLayer {
            timeout: self.timeout,
            circuit_breaker: self.circuit_breaker.map(|b| b.with_classifier(classifier)),
            retry: self.retry,
            bulkhead: self.bulkhead,
            adaptive_limit: self.adaptive_limit,
            rate_limit: self.rate_limit,
        }
    }

    /// Rebuilds the breaker (fresh state) reading time from `clock`, e.g.
    /// [`TokioClock`](super::circuit_breaker::TokioClock) for simulations in tokio's paused
    /// time. Call it before taking [`circuit_breaker`](Self::circuit_breaker) handles.
    pub fn with_breaker_clock(self, clock: impl Clock) -> Self {
        Self {
            circuit_breaker: self.circuit_breaker.map(|b| b.with_clock(clock)),
            ..self
        }
    }

    /// Rebuilds the time-keeping parts (the breaker and the retry budget, with fresh state)
    /// reading time from `clock`, e.g. [`TokioClock`](super::clock::TokioClock) for tests and
    /// simulations in tokio's paused time. Call it before taking
    /// [`circuit_breaker`](Self::circuit_breaker) handles.
    pub fn with_clock(self, clock: impl Clock + Clone) -> Self {
        Self {
            circuit_breaker: self.circuit_breaker.map(|b| b.with_clock(clock.clone())),
            retry: self.retry.map(|r| r.with_clock(clock)),
            ..self
        }
    }

    /// The circuit breaker, if the policy has one (state, counters, manual control).
    pub fn circuit_breaker(&self) -> Option<CircuitBreakerHandle> {
        self.circuit_breaker
            .as_ref()
            .map(CircuitBreakerLayer::handle)
    }

    /// The bulkhead layer, if the policy has one (e.g. for its free permits).
    pub fn bulkhead(&self) -> Option<&BulkheadLayer> {
        self.bulkhead.as_ref()
    }

    /// The adaptive concurrency limit, if the policy has one (its
    /// [`snapshot`](AdaptiveLimitLayer::snapshot): current limit, calls in flight).
    pub fn adaptive_limit(&self) -> Option<&AdaptiveLimitLayer> {
        self.adaptive_limit.as_ref()
    }

    /// The rate limiter layer, if the policy has one.
    pub fn rate_limit(&self) -> Option<&RateLimiterLayer> {
        self.rate_limit.as_ref()
    }

    /// The retry layer, if the policy has one.
    pub fn retry(&self) -> Option<&BackoffRetryLayer<RC, H, K>> {
        self.retry.as_ref()
    }

    /// The per-attempt timeout, if any.
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.timeout.after()
    }
}

impl<S, RC, H, K, BC> Layer<S> for ResilienceLayer<RC, H, K, BC>
where
    RC: Clone,
    H: Clone,
    K: Clone,
    BC: Clone,
{
    type Service = Resilient<S, RC, H, K, BC>;

    fn layer(&self, inner: S) -> Self::Service {
        let parts = Parts {
            rate_limit: self.rate_limit.as_ref().map(|l| l.limiter.clone()),
            bulkhead: self.bulkhead.as_ref().map(|b| b.shared.clone()),
            adaptive_limit: self.adaptive_limit.as_ref().map(|l| l.limiter.clone()),
            retry: self.retry.as_ref().map(BackoffRetryLayer::shared),
            breaker: self
                .circuit_breaker
                .as_ref()
                .map(|b| (b.handle().shared, b.classifier().clone())),
            attempt_timeout: self.timeout.after(),
        };
        Resilient::new(inner, Arc::new(parts))
    }
}
