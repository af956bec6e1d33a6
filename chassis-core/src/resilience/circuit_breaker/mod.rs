//! Circuit breaker: stop calling a failing downstream, probe it, close again when it recovers.
//!
//! The feature set is Resilience4j's:
//!
//! - **Closed**: calls flow and their outcomes go into a sliding window, either
//!   [count-based](SlidingWindowType::CountBased) (the last *n* calls) or
//!   [time-based](SlidingWindowType::TimeBased) (the last *n* seconds). Once the window holds
//!   `minimum_number_of_calls`, the breaker opens when the failure rate reaches
//!   `failure_rate_threshold` or the rate of calls slower than `slow_call_duration_threshold`
//!   reaches `slow_call_rate_threshold`.
//! - **Open**: `poll_ready` fails fast with [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen)
//!   carrying the breaker's name and the wait left, for `wait_duration_in_open_state` — or, with
//!   an [`OpenStateBackoff`], for a jittered, exponentially growing wait on repeated trips.
//! - **Half-open**: `permitted_number_of_calls_in_half_open_state` probe calls go through, any
//!   further call is rejected; once every probe has completed, their rates decide between closed
//!   and open again. A probe whose future is dropped (an outer timeout) is recorded as the
//!   classifier says (a failure by default), so the breaker cannot get stuck half-open.
//! - The rejection's `retry_after` is the open-state wait left; while half-open with every probe
//!   permit taken it is zero (a permit frees as soon as the probes decide), and while forced open
//!   it is the configured `wait_duration_in_open_state` (a hint: forced states last until reset).
//! - **Forced** states ([`CircuitBreakerHandle::force_open`], [`force_closed`](CircuitBreakerHandle::force_closed))
//!   hold until [`reset`](CircuitBreakerHandle::reset).
//!
//! What is a failure is decided by a [`Classify`] implementation, which sees responses *and*
//! errors: [`DefaultClassifier`] (every `Err`), [`HttpStatusClassifier`] (5xx, not 4xx), or any
//! closure `Fn(Result<&T, &E>) -> Outcome`.
//!
//! Every transition is logged with `tracing` (warn when opening), sets the gauge
//! `circuit_breaker_state{name}` (closed 0, open 1, half-open 2, forced-open 3,
//! forced-closed 4) and is broadcast to [`CircuitBreakerHandle::subscribe`]rs; every call
//! increments `circuit_breaker_calls_total{name, outcome}` with outcome `success`, `failure`,
//! `slow_success`, `slow_failure` or `not_permitted`. Metric handles are registered when the
//! breaker is built, so install the metrics recorder first. The names are those of
//! [`metric_catalogue`](crate::metric_catalogue).
//!
//! # Example
//!
//! ```
//! use chassis_core::resilience::circuit_breaker::{
//!     CircuitBreakerConfig, CircuitBreakerLayer, SlidingWindowType, State,
//! };
//! use chassis_core::{BoxError, Error, ErrorKind};
//! use std::time::Duration;
//! use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let config = CircuitBreakerConfig::new("inventory")
//!     .sliding_window(SlidingWindowType::TimeBased, 10)
//!     .minimum_number_of_calls(4)
//!     .failure_rate_threshold(50.0)
//!     .wait_duration_in_open_state(Duration::from_secs(30));
//! let layer = CircuitBreakerLayer::new(config)?;
//! let breaker = layer.handle();
//!
//! let mut svc = ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|fail: bool| async move {
//!         if fail { Err::<(), BoxError>("downstream broke".into()) } else { Ok(()) }
//!     }));
//!
//! for _ in 0..4 {
//!     let _ = svc.ready().await?.call(true).await;
//! }
//! assert_eq!(breaker.state(), State::Open);
//!
//! // Now calls are rejected in poll_ready, before reaching the downstream.
//! let err = svc.ready().await.err().expect("open");
//! let err = Error::from_boxed(err).expect("a chassis error");
//! assert!(matches!(err.kind(), ErrorKind::CircuitOpen { name, .. } if &**name == "inventory"));
//! assert!(err.retry_after().unwrap() <= Duration::from_secs(30));
//! # Ok(())
//! # }
//! ```
//!
//! # Time and performance
//!
//! The closed-state path takes no lock: acquiring a permit is two atomic loads (state word,
//! clock), recording a fast success a couple of uncontended atomic adds (the time window
//! stripes its call counters per thread; the count window writes its ring only when an outcome
//! differs from the one it replaces). The rates are evaluated only when a failure or slow call
//! is recorded, when the time window moves to a new second, or while failures wait for the
//! minimum number of calls. Transitions take a mutex.
//!
//! Time comes from a [`Clock`]; the default [`CoarseClock`] is a millisecond-resolution atomic
//! refreshed by a background thread, because reading `Instant::now()` twice per call would
//! cost more than the rest of the breaker. Use [`MonotonicClock`] for sub-10 ms slow-call
//! thresholds and [`TokioClock`] (via [`CircuitBreakerLayer::with_clock`]) in tests with
//! tokio's paused time.

mod classifier;
mod config;
mod core;
mod future;
mod layer;
mod service;
mod window;

pub use self::classifier::{Classify, DefaultClassifier, HttpStatusClassifier, Outcome};
pub use self::config::{CircuitBreakerConfig, Jitter, OpenStateBackoff, SlidingWindowType};
pub use self::core::{
    CallPermit, CircuitBreakerHandle, CircuitBreakerSnapshot, State, StateTransition,
    TransitionReason,
};
pub(crate) use self::core::{RawPermit, Shared as BreakerShared};
pub use self::future::ResponseFuture;
pub use self::layer::CircuitBreakerLayer;
pub use self::service::CircuitBreaker;
pub use crate::resilience::clock::{Clock, CoarseClock, MonotonicClock, TokioClock};
