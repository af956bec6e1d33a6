//! The concurrency counter and the answer to a shed request, for the
//! [guard](super::guard)'s load-shedding part.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::{Response, StatusCode};

use crate::body::Body;
use crate::error::{ApiError, codes};

/// Requests in flight, shared by the services of one [`GuardLayer`](super::guard::GuardLayer).
///
/// A plain counter rather than a semaphore: nothing ever waits for a permit, and releasing a
/// tokio semaphore permit takes its waiter-list lock on every request.
#[derive(Debug, Default)]
pub(crate) struct InFlight(AtomicUsize);

impl InFlight {
    /// Permits taken right now.
    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Takes a permit if fewer than `max` are taken.
    pub(crate) fn try_acquire(self: &Arc<Self>, max: usize) -> Option<Permit> {
        self.0
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(self.clone()))
    }
}

/// The 503 a shed request gets (logged at debug: shedding is the limit working, not a fault).
pub(crate) fn shed_response(max_in_flight: usize, retry_after: Duration) -> Response<Body> {
    tracing::debug!(max_in_flight, "concurrency limit reached; shedding request");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        codes::OVERLOADED,
        format!("server is at its limit of {max_in_flight} concurrent requests"),
    )
    .with_retry_after(retry_after)
    .into_response()
}

/// One request's share of the limit, given back on drop.
#[derive(Debug)]
pub(crate) struct Permit(Arc<InFlight>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Release);
    }
}
