//! Hedging: when an idempotent request's first attempt has not answered within a delay (fixed,
//! or a percentile of recent latencies), send a second attempt; the first answer wins and the
//! other attempt is cancelled.
//!
//! A retry waits for a failure (often a timeout) before trying again; a hedge cuts the tail of
//! a dependency whose calls are *sometimes* slow (a GC pause, a cold cache, one bad replica)
//! at the cost of a few extra calls. Only requests a [`HedgePredicate`] accepts are hedged:
//! closures `Fn(&Req) -> bool`, or [`IdempotentRequests`] for `http::Request`s (idempotent
//! methods, or a request marked [`Idempotent`]). Other requests cost one predicate call.
//!
//! Hedges are retries sent early, so [`HedgeLayer::with_retry_budget`] counts them against
//! a retry layer's budget: during an outage, when every call is slow, the budget runs out and
//! hedging stops instead of doubling the load. A first attempt that *fails* before the hedge
//! is sent ends the call (retrying is the retry layer's work); once both are in flight the
//! call fails only if both do.
//!
//! In a [`ResiliencePolicy`](super::policy::ResiliencePolicy) stack the hedge wraps the
//! service, inside the attempt timeout (see the policy's order).
//!
//! # Example
//!
//! ```
//! use chassis_core::resilience::hedge::{HedgeConfig, HedgeLayer};
//! use chassis_core::BoxError;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), BoxError> {
//! // Reads are idempotent; the first attempt of each call hangs for a second.
//! let layer = HedgeLayer::new(
//!     HedgeConfig::new("catalogue").delay(Duration::from_millis(20)),
//!     |req: &(&str, u32)| req.0 == "read",
//! )?;
//! let calls = Arc::new(AtomicU32::new(0));
//! let svc = layer.layer(service_fn(move |(_, id): (&str, u32)| {
//!     let slow = calls.fetch_add(1, Ordering::SeqCst) % 2 == 0;
//!     async move {
//!         let took = if slow { Duration::from_secs(1) } else { Duration::from_millis(5) };
//!         tokio::time::sleep(took).await;
//!         Ok::<_, BoxError>(id)
//!     }
//! }));
//! let started = tokio::time::Instant::now();
//! assert_eq!(svc.clone().oneshot(("read", 7)).await?, 7);
//! // The hedge, sent after 20 ms, answered 5 ms later.
//! assert_eq!(started.elapsed(), Duration::from_millis(25));
//! assert_eq!(layer.hedges_sent(), 1);
//! # Ok(())
//! # }
//! ```

mod config;
mod future;
mod layer;
mod service;

pub use config::{HedgeConfig, HedgePredicate, Idempotent, IdempotentRequests};
pub use future::ResponseFuture;
pub use layer::HedgeLayer;
pub use service::Hedge;
