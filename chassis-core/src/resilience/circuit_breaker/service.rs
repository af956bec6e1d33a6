//! [`CircuitBreaker`], the service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use super::classifier::Classify;
use super::core::{CircuitBreakerHandle, RawPermit, Shared};
use super::future::{CallRef, ResponseFuture};
use crate::BoxError;

/// A service guarded by a circuit breaker. Built by
/// [`CircuitBreakerLayer`](super::CircuitBreakerLayer).
///
/// `poll_ready` asks the breaker first and fails fast with
/// [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen) while it is open, before polling
/// the inner service. The permit it obtains is kept until `call` uses it; a clone starts
/// without one, and dropping the service hands an unused permit back.
///
/// # One reference count per clone
///
/// A response future must own a reference to the breaker (tower futures are `'static`) to
/// record the call's outcome. Cloning one shared `Arc` for every call would make every call
/// of every thread write the same cache line twice (count up, count down), which costs more
/// than the breaker's own accounting once two threads call through one breaker. So a clone
/// that makes a second call gets its own small `Arc` pointing at the breaker, and its futures
/// count on that one: threads that each own a clone of the service (the usual tower shape:
/// one clone per connection, per worker, per task) never share a written cache line. The
/// first call of a clone still uses the shared reference, so services cloned for one call
/// (axum's per-request clone, the retry layer's clone for later attempts) never allocate.
#[derive(Debug)]
pub struct CircuitBreaker<S, C> {
    inner: S,
    classifier: C,
    slot: PermitSlot,
    own: OwnRef,
}

/// This clone's own reference to the breaker (see "One reference count per clone").
#[derive(Debug)]
enum OwnRef {
    /// No call made yet: the next one uses the shared reference.
    Unused,
    /// One call made with the shared reference.
    CalledOnce,
    /// Allocated on the second call; every later call's future clones it.
    Own(Arc<BreakerRef>),
}

/// A reference to the breaker with a reference count of its own.
#[derive(Debug)]
pub(crate) struct BreakerRef(pub(crate) Arc<Shared>);

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
            own: OwnRef::Unused,
        }
    }

    /// The breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle {
            shared: self.slot.shared.clone(),
        }
    }

    crate::__define_inner_service_accessors!();
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
            own: OwnRef::Unused,
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
        let breaker = match &self.own {
            OwnRef::Own(own) => CallRef::Own(own.clone()),
            OwnRef::Unused => {
                self.own = OwnRef::CalledOnce;
                CallRef::Shared(self.slot.shared.clone())
            }
            OwnRef::CalledOnce => {
                let own = Arc::new(BreakerRef(self.slot.shared.clone()));
                self.own = OwnRef::Own(own.clone());
                CallRef::Own(own)
            }
        };
        ResponseFuture::new(
            self.inner.call(req),
            breaker,
            permit,
            self.classifier.clone(),
            cancelled,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
    use tower::service_fn;
    use tower_layer::Layer;

    #[test]
    fn futures_of_a_busy_clone_count_on_its_own_reference() {
        let layer = CircuitBreakerLayer::new(CircuitBreakerConfig::new("refs")).unwrap();
        let mut svc = layer.layer(service_fn(|()| async { Ok::<_, BoxError>(()) }));
        let shared = svc.slot.shared.clone();
        let before = Arc::strong_count(&shared);
        let futures: Vec<_> = (0..4).map(|_| svc.call(())).collect();
        // The first call's future holds the shared reference; the clone's own reference
        // (allocated on the second call) holds one more; calls 2-4 count on the own one.
        assert_eq!(Arc::strong_count(&shared), before + 2);
        drop(futures);
        let mut clone = svc.clone();
        let once = clone.call(());
        assert!(
            matches!(clone.own, OwnRef::CalledOnce),
            "one call allocates nothing"
        );
        drop(once);
    }
}
