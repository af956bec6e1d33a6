//! [`CircuitBreaker`], the service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::classifier::Classify;
use super::core::{CircuitBreakerHandle, RawPermit, Shared};
use super::future::ResponseFuture;
use crate::BoxError;

/// A service guarded by a circuit breaker. Built by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
///
/// `poll_ready` asks the breaker first and fails fast with
/// [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen) while it is open, before polling
/// the inner service. The permit it obtains is kept until `call` uses it; a clone starts
/// without one, and dropping the service hands an unused permit back.
#[derive(Debug)]
pub struct CircuitBreaker<S, C> {
    inner: S,
    classifier: C,
    slot: PermitSlot,
}

/// A permit taken in `poll_ready`, waiting for `call`.
#[derive(Debug)]
struct PermitSlot {
    shared: Arc<Shared>,
    permit: Option<RawPermit>,
}

impl Drop for PermitSlot {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.shared.release(permit);
        }
    }
}

impl<S, C> CircuitBreaker<S, C> {
    /// Wraps `inner` in the breaker `handle`, classifying outcomes with `classifier`.
    pub fn new(inner: S, handle: CircuitBreakerHandle, classifier: C) -> Self {
        Self {
            inner,
            classifier,
            slot: PermitSlot {
                shared: handle.shared,
                permit: None,
            },
        }
    }

    /// The breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            shared: self.slot.shared.clone(),
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service (an unused permit is handed back).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C: Clone> Clone for CircuitBreaker<S, C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            classifier: self.classifier.clone(),
            // NOTE: a permit belongs to the instance that was polled ready; the clone must be
            // polled itself.
            slot: PermitSlot {
                shared: self.slot.shared.clone(),
                permit: None,
            },
        }
    }
}

impl<S, C, Req> Service<Req> for CircuitBreaker<S, C>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.slot.permit.is_none() {
            match self.slot.shared.try_acquire() {
                Ok(permit) => self.slot.permit = Some(permit),
                Err(rejected) => return Poll::Ready(Err(rejected.into())),
            }
        }
        // NOTE: the permit stays in the slot while the inner service is not ready, and `call`
        // relies on finding it there.
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => {
                // No call will follow: hand the permit back unrecorded.
                if let Some(permit) = self.slot.permit.take() {
                    self.slot.shared.release(permit);
                }
                Poll::Ready(Err(e.into()))
            }
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // `call` without a successful `poll_ready` breaks the tower contract; rather than
        // panic, ask the breaker now and fail the call if it is open.
        let permit = match self.slot.permit.take() {
            Some(permit) => permit,
            None => match self.slot.shared.try_acquire() {
                Ok(permit) => permit,
                Err(rejected) => return ResponseFuture::rejected(rejected),
            },
        };
        let cancelled = self.classifier.classify_cancelled();
        ResponseFuture::new(
            self.inner.call(req),
            self.slot.shared.clone(),
            permit,
            self.classifier.clone(),
            cancelled,
        )
    }
}
