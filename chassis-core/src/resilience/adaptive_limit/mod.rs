//! An adaptive concurrency limit: how many calls may be in flight at once, derived from the
//! latency they meet, so load is shed *before* a saturated dependency's latency collapses.
//!
//! A fixed limit (the [`bulkhead`](super::bulkhead)) is right for one capacity and wrong for
//! the next: too high and a slowed-down dependency queues every caller behind it, too low and a
//! healthy one is starved. An [`AdaptiveLimitLayer`] measures each call's round-trip time and
//! moves the limit with a [`LimitAlgorithm`]: [`Vegas`](LimitAlgorithm::Vegas) (the default)
//! estimates the queue a limit builds from how much slower calls are than without load, and
//! settles a few calls above the dependency's real capacity;
//! [`Aimd`](LimitAlgorithm::Aimd) grows by one and backs off on a timeout (or a call slower
//! than a threshold), which needs no latency baseline.
//!
//! A call over the limit is shed at once with
//! [`ErrorKind::ConcurrencyLimited`](crate::ErrorKind::ConcurrencyLimited) (a rejection:
//! [`Error::is_rejection`](crate::Error::is_rejection)). A successful call is a latency sample,
//! a call that ended in a chassis timeout or deadline is a *drop* (the strongest overload
//! signal), and other failures and cancelled calls are not sampled: a fast error would read as
//! a fast, idle dependency.
//!
//! The same layer serves both sides:
//! - **client side**, one layer per downstream, usually through
//!   [`ResiliencePolicy::adaptive_limit`](super::policy::ResiliencePolicy::adaptive_limit),
//!   which places it after the bulkhead and around the retries;
//! - **server side**, in front of the handlers, so a server sheds the excess with a fast
//!   rejection instead of answering everyone late.
//!
//! Admission is one compare-and-swap on the calls in flight; one call in
//! [`sample_every`](AdaptiveLimitConfig::sample_every) (8 by default) is timed and takes the
//! estimator's lock once when it finishes, to move the limit: timing every call would cost
//! several times the admission, and the algorithm needs a trend, not every call. [`AdaptiveLimitLayer::snapshot`] (or a
//! [`AdaptiveLimitHandle`]) reads the limit and the calls in flight with two atomic loads.
//! Metrics, label `name`: `adaptive_limit_limit`, `adaptive_limit_in_flight` (as of the last
//! finished call) and `adaptive_limit_rejected_total`.
//!
//! # Example
//!
//! ```
//! use chassis_core::resilience::adaptive_limit::{
//!     AdaptiveLimitConfig, AdaptiveLimitLayer, LimitAlgorithm,
//! };
//! use chassis_core::{BoxError, Error, ErrorKind};
//! use std::time::Duration;
//! use tower::{Layer, Service, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = AdaptiveLimitLayer::new(
//!     AdaptiveLimitConfig::new("inventory")
//!         .algorithm(LimitAlgorithm::aimd())
//!         .initial_limit(1)
//!         .max_limit(100)
//!         .sample_every(1),
//! )
//! .unwrap();
//! let slow = service_fn(|_: ()| async {
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//!     Ok::<_, BoxError>(())
//! });
//! let mut first = layer.layer(slow);
//! let mut second = first.clone();
//! let in_flight = first.ready().await.unwrap().call(());
//! assert_eq!(layer.snapshot().in_flight, 1);
//! // The limit is 1 and taken: the second call is shed at once.
//! let err = second.ready().await.unwrap().call(()).await.unwrap_err();
//! assert!(matches!(Error::from_boxed(err).unwrap().kind(), ErrorKind::ConcurrencyLimited { .. }));
//! in_flight.await.unwrap();
//! // The finished call used the whole limit and did not time out: AIMD adds one.
//! assert_eq!(layer.snapshot().limit, 2);
//! # }
//! ```

mod algorithm;
mod future;
mod layer;
mod limiter;
mod service;

pub use algorithm::LimitAlgorithm;
pub use future::ResponseFuture;
pub use layer::AdaptiveLimitLayer;
pub use limiter::{AdaptiveLimitConfig, AdaptiveLimitHandle, LimitSnapshot};
pub use service::AdaptiveLimit;

pub(crate) use limiter::{Ending, Limiter, Token};
