//! # chassis-core
//!
//! The foundation of the chassis SDK: resilience primitives as tower layers, the one error type
//! they share, the health model the probes serve, graceful shutdown and the service identity.
//!
//! ## Layout
//! - [`resilience`]: circuit breaker, retry, timeout, bulkhead, rate limiter and the
//!   [`ResiliencePolicy`](resilience::policy::ResiliencePolicy) that stacks them.
//! - [`error`]: [`Error`] and [`ErrorKind`], what every layer fails with.
//! - [`health`]: health checks, the registry that runs them, readiness/liveness/startup reports.
//! - [`control`]: the control registry: a service's breakers, bulkheads, rate limiters, retry
//!   budgets and other [`Controllable`](control::Controllable) parts, read and steered by
//!   name, with a live feed of their states and rates (served by `chassis-http`'s admin API).
//! - [`shutdown`]: the shutdown signal and the drain tracker.
//! - [`lifecycle`]: [`App`](lifecycle::App), the runner that starts a service's components,
//!   marks it ready and stops it in the order that loses nothing.
//! - [`service`]: [`ServiceInfo`], who this service is.
//! - [`metric_catalogue`]: the name, type, unit and labels of every metric the chassis crates
//!   emit.
//!
//! Every layer is a plain tower `Layer`, so it works the same under hyper, axum, tonic or a
//! hand-written client.
//!
//! ## Features
//! | feature | default | what it adds |
//! |---|---|---|
//! | `redis` | no | the keyed rate limiter's Redis backend (`resilience::keyed_rate_limit::RedisRateLimiter`): one limit per key shared by every replica |
//! | `full` | no | every optional backend |

#![cfg_attr(docsrs, feature(doc_cfg))]

mod macros;

pub mod control;
pub mod error;
pub mod health;
pub mod lifecycle;
pub mod metric_catalogue;
pub mod name;
pub mod resilience;
pub mod service;
pub mod shutdown;

pub use error::{BoxError, Error, ErrorKind};
pub use name::ComponentName;
pub use service::ServiceInfo;

/// Paths the exported macros name; not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use tower_layer::Layer;
    pub use tower_service::Service;
}

// The README's example is compiled and run as a doctest, so the crate's front page stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
