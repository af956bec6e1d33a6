//! [`Resilient`]: the policy's layers run by one service.

use std::fmt;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Sleep;
use tokio_util::sync::ReusableBoxFuture;
use tower_service::Service;

use super::future::{Held, ResponseFuture};
use crate::BoxError;
use crate::resilience::adaptive_limit::{self, Token};
use crate::resilience::bulkhead::{self, wait_for_permit};
use crate::resilience::circuit_breaker::{
    BreakerShared, Classify, DefaultClassifier, Outcome as BreakerOutcome, RawPermit,
};
use crate::resilience::rate_limiter::Limiter;
use crate::resilience::retry::{
    self, AttemptPolicy, CloneRequest, CloneWithClone, DefaultRetryClassifier, NoRetryAfter,
    RetryAfter, RetryClassifier, Retrying,
};

/// What every call of one wrapped service (and its clones) shares: each configured part's
/// state, shared with the part's own layer (one breaker, one budget, one pool of permits, one
/// limiter per policy).
pub(crate) struct Parts<RC, H, K, BC> {
    pub(crate) rate_limit: Option<Arc<Limiter>>,
    pub(crate) bulkhead: Option<Arc<bulkhead::Shared>>,
    pub(crate) adaptive_limit: Option<Arc<adaptive_limit::Limiter>>,
    pub(crate) retry: Option<retry::Shared<RC, H, K>>,
    pub(crate) breaker: Option<(Arc<BreakerShared>, BC)>,
    pub(crate) attempt_timeout: Option<Duration>,
}

impl<RC, H, K, BC> Parts<RC, H, K, BC> {
    /// Gets an attempt ready: a breaker permit taken into `permit` (kept there while `service`
    /// is not ready, for the attempt to use), then `service`'s readiness. An open breaker ends
    /// the call with its rejection; a service that fails to get ready hands the permit back
    /// unrecorded, as no attempt follows.
    pub(crate) fn poll_attempt_ready<Req, S>(
        &self,
        permit: &mut Option<RawPermit>,
        service: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), BoxError>>
    where
        S: Service<Req>,
        S::Error: Into<BoxError>,
    {
        if let Some((breaker, _)) = &self.breaker
            && permit.is_none()
        {
            *permit = Some(breaker.try_acquire()?);
        }
        match ready!(service.poll_ready(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(err) => {
                if let (Some(unused), Some((breaker, _))) = (permit.take(), &self.breaker) {
                    breaker.release(unused);
                }
                Poll::Ready(Err(err.into()))
            }
        }
    }
}

/// A call's reference to the [`Parts`]: the shared one, or its service clone's own (see
/// [`Resilient`], "One reference count per clone").
pub(crate) enum PartsRef<P> {
    Shared(Arc<P>),
    Own(Arc<OwnParts<P>>),
}

/// A reference to the parts with a reference count of its own.
pub(crate) struct OwnParts<P>(Arc<P>);

impl<P> Deref for PartsRef<P> {
    type Target = P;

    #[inline]
    fn deref(&self) -> &P {
        match self {
            Self::Shared(parts) => parts,
            Self::Own(own) => &own.0,
        }
    }
}

/// This clone's own reference to the parts.
enum OwnRef<P> {
    /// No call made yet: the next one uses the shared reference.
    Unused,
    /// One call made with the shared reference.
    CalledOnce,
    /// Allocated on the second call; every later call's future clones it.
    Own(Arc<OwnParts<P>>),
}

/// The rate limiter's permit for the next call.
enum RateState {
    Idle,
    Waiting(Pin<Box<Sleep>>),
    Acquired,
    Rejected(u64),
}

/// The bulkhead's permit for the next call.
enum BulkState {
    Idle,
    Waiting(ReusableBoxFuture<'static, bool>),
    Acquired,
    Rejected,
}

/// A service wrapped in a [`ResilienceLayer`](super::ResilienceLayer)'s stack. Its error type
/// is [`BoxError`]; the layers' own errors are [`chassis_core::Error`](crate::Error)s inside
/// it.
///
/// It behaves as the configured layers stacked in the policy's order (rate limit, bulkhead,
/// retry, circuit breaker, attempt timeout) and reuses their state and accounting, but runs
/// them in one `poll_ready`, one `call` and one response future. Stacked, every layer wraps
/// the response future of the one inside it by value (the retry layer's future carries a clone
/// of the service for later attempts, the breaker's its permit, each optional part an `Either`
/// around them) and moves it outwards, polls it and drops it: on a fast downstream those
/// moves and polls cost more than the layers' own work (`benches/README.md`, "Resilience
/// stack"). Each layer remains usable on its own.
///
/// `poll_ready` takes the rate permit, then the bulkhead permit (waiting for either at most
/// its `max_wait`; a rejection is reported by the response future, as the layers do), then
/// asks the breaker (an open breaker fails `poll_ready` with
/// [`ErrorKind::CircuitOpen`](crate::ErrorKind::CircuitOpen)), then polls the inner service.
/// Permits taken and not used are handed back when the service is dropped.
///
/// # One reference count per clone
///
/// A response future owns one reference to the shared parts (to record the breaker's outcome,
/// return the bulkhead permit and run retries). As the breaker does (see
/// [`CircuitBreaker`](crate::resilience::circuit_breaker::CircuitBreaker)), a service clone
/// that makes a second call gets a reference of its own that its futures count on, so threads
/// that each own a clone never write one shared cache line per call, and a clone made for one
/// call allocates nothing.
pub struct Resilient<
    S,
    RC = DefaultRetryClassifier,
    H = NoRetryAfter,
    K = CloneWithClone,
    BC = DefaultClassifier,
> {
    inner: S,
    parts: Arc<Parts<RC, H, K, BC>>,
    own: OwnRef<Parts<RC, H, K, BC>>,
    rate: RateState,
    bulk: BulkState,
    /// The adaptive limit's admission for the next call: `Some(None)` when it is shed.
    admission: Option<Option<Token>>,
    /// The breaker's permit taken in `poll_ready`, waiting for `call`.
    breaker_permit: Option<RawPermit>,
}

impl<S, RC, H, K, BC> Resilient<S, RC, H, K, BC> {
    pub(crate) fn new(inner: S, parts: Arc<Parts<RC, H, K, BC>>) -> Self {
        Self {
            inner,
            parts,
            own: OwnRef::Unused,
            rate: RateState::Idle,
            bulk: BulkState::Idle,
            admission: None,
            breaker_permit: None,
        }
    }

    crate::__define_inner_service_accessors!(borrow);

    /// A reference to the parts for one call's future.
    #[inline]
    fn parts_ref(&mut self) -> PartsRef<Parts<RC, H, K, BC>> {
        match &self.own {
            OwnRef::Own(own) => PartsRef::Own(own.clone()),
            OwnRef::Unused => {
                self.own = OwnRef::CalledOnce;
                PartsRef::Shared(self.parts.clone())
            }
            OwnRef::CalledOnce => {
                let own = Arc::new(OwnParts(self.parts.clone()));
                self.own = OwnRef::Own(own.clone());
                PartsRef::Own(own)
            }
        }
    }
}

impl<S, RC, H, K, BC> Drop for Resilient<S, RC, H, K, BC> {
    fn drop(&mut self) {
        // Permits taken in `poll_ready` that no call used go back.
        if let (Some(permit), Some((breaker, _))) =
            (self.breaker_permit.take(), self.parts.breaker.as_ref())
        {
            breaker.release(permit);
        }
        if let (BulkState::Acquired, Some(bulkhead)) = (&self.bulk, self.parts.bulkhead.as_ref()) {
            bulkhead.pool.give_back();
        }
        if let (Some(Some(token)), Some(limiter)) =
            (self.admission.take(), self.parts.adaptive_limit.as_ref())
        {
            limiter.release(token, adaptive_limit::Ending::Ignored);
        }
    }
}

impl<S: Clone, RC, H, K, BC> Clone for Resilient<S, RC, H, K, BC> {
    fn clone(&self) -> Self {
        // NOTE: permits belong to the instance that was polled ready; the clone must be polled
        // itself.
        Self::new(self.inner.clone(), self.parts.clone())
    }
}

impl<S: fmt::Debug, RC, H, K, BC> fmt::Debug for Resilient<S, RC, H, K, BC> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts = &self.parts;
        f.debug_struct("Resilient")
            .field("inner", &self.inner)
            .field("rate_limit", &parts.rate_limit.as_ref().map(|l| &l.name))
            .field("bulkhead", &parts.bulkhead.as_ref().map(|b| &b.name))
            .field(
                "adaptive_limit",
                &parts.adaptive_limit.as_ref().map(|l| &l.name),
            )
            .field("retry", &parts.retry.as_ref().map(|r| &r.name))
            .field("circuit_breaker", &parts.breaker.is_some())
            .field("attempt_timeout", &parts.attempt_timeout)
            .finish_non_exhaustive()
    }
}

impl<S, Req, RC, H, K, BC> Service<Req> for Resilient<S, RC, H, K, BC>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    RC: RetryClassifier<S::Response>,
    H: RetryAfter<S::Response>,
    K: CloneRequest<Req>,
    BC: Classify<S::Response, BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S, Req, RC, H, K, BC>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let parts = &*self.parts;
        // Rate limit, outermost: one permit per call, whatever the attempts.
        if let Some(limiter) = &parts.rate_limit {
            loop {
                match &mut self.rate {
                    RateState::Idle => {
                        self.rate = match limiter.acquire(limiter.max_wait) {
                            Ok(0) => RateState::Acquired,
                            Ok(wait) => RateState::Waiting(Box::pin(tokio::time::sleep(
                                Duration::from_nanos(wait),
                            ))),
                            Err(retry_after) => RateState::Rejected(retry_after),
                        }
                    }
                    RateState::Waiting(sleep) => {
                        ready!(sleep.as_mut().poll(cx));
                        self.rate = RateState::Acquired;
                    }
                    // NOTE: `call` sees `Rejected` and fails the call without touching the rest.
                    RateState::Rejected(_) => return Poll::Ready(Ok(())),
                    RateState::Acquired => break,
                }
            }
        }
        // Bulkhead: one permit for the call's whole life, retries and waits included.
        if let Some(bulkhead) = &parts.bulkhead {
            loop {
                match &mut self.bulk {
                    BulkState::Idle => {
                        self.bulk = if bulkhead.pool.try_take_first() {
                            BulkState::Acquired
                        } else if bulkhead.max_wait.is_zero() {
                            BulkState::Rejected
                        } else {
                            BulkState::Waiting(ReusableBoxFuture::new(wait_for_permit(
                                bulkhead.clone(),
                            )))
                        };
                    }
                    BulkState::Waiting(acquire) => {
                        self.bulk = if ready!(acquire.poll(cx)) {
                            BulkState::Acquired
                        } else {
                            BulkState::Rejected
                        };
                    }
                    // NOTE: `call` sees `Rejected` and fails the call without touching the rest.
                    BulkState::Rejected => return Poll::Ready(Ok(())),
                    BulkState::Acquired => break,
                }
            }
        }
        // Adaptive limit: one slot for the call's whole life, as the bulkhead's; never waits.
        if let Some(limiter) = &parts.adaptive_limit
            && self.admission.is_none()
        {
            let admission = limiter.try_acquire();
            // NOTE: `call` sees `Some(None)` and fails the call without touching the rest.
            let shed = admission.is_none();
            self.admission = Some(admission);
            if shed {
                return Poll::Ready(Ok(()));
            }
        }
        // The breaker, asked for the first attempt (retries ask again in the future).
        // NOTE: the permits stay here while the inner service is not ready, and `call` relies
        // on finding them.
        parts.poll_attempt_ready::<Req, _>(&mut self.breaker_permit, &mut self.inner, cx)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let parts = self.parts_ref();
        if let Some(limiter) = &parts.rate_limit {
            match std::mem::replace(&mut self.rate, RateState::Idle) {
                RateState::Acquired => {}
                RateState::Rejected(retry_after) => {
                    limiter.rejected.increment(1);
                    tracing::debug!(rate_limiter = %limiter.name, ?retry_after, "rate limited: call rejected");
                    let error = limiter.rejection(retry_after);
                    return ResponseFuture::rejected(Held::new(parts), error.into());
                }
                RateState::Idle | RateState::Waiting(_) => {
                    panic!(
                        "RateLimiter::call without a successful poll_ready (tower Service contract)"
                    )
                }
            }
        }
        let mut held = Held::new(parts);
        if let Some(bulkhead) = &held.parts.bulkhead {
            match std::mem::replace(&mut self.bulk, BulkState::Idle) {
                BulkState::Acquired => held.bulkhead = true,
                BulkState::Rejected => {
                    bulkhead.rejected.increment(1);
                    tracing::debug!(bulkhead = %bulkhead.name, "bulkhead full: call rejected");
                    let error = bulkhead.rejection();
                    return ResponseFuture::rejected(held, error.into());
                }
                BulkState::Idle | BulkState::Waiting(_) => {
                    panic!(
                        "Bulkhead::call without a successful poll_ready (tower Service contract)"
                    )
                }
            }
        }
        if let Some(limiter) = &held.parts.adaptive_limit {
            match self.admission.take() {
                Some(Some(token)) => held.admission = Some(token),
                Some(None) => {
                    limiter.rejected.increment(1);
                    tracing::debug!(adaptive_limit = %limiter.name, "adaptive limit reached: call shed");
                    let error = limiter.rejection();
                    return ResponseFuture::rejected(held, error.into());
                }
                None => panic!(
                    "AdaptiveLimit::call without a successful poll_ready (tower Service contract)"
                ),
            }
        }
        let (retry, not_cloneable) = match &held.parts.retry {
            Some(shared) => {
                if let Some(budget) = &shared.budget {
                    // Every call earns retries for others; only retries spend them.
                    tower::retry::budget::Budget::deposit(&**budget);
                }
                let copy = if shared.max_attempts > 1 {
                    shared.cloner.clone_request(&req)
                } else {
                    None
                };
                let not_cloneable = shared.max_attempts > 1 && copy.is_none();
                // The future keeps a clone of the service for the attempts after the first.
                let retry = copy.map(|copy| Retrying {
                    service: self.inner.clone(),
                    policy: AttemptPolicy::new(shared),
                    request: Some(copy),
                });
                (retry, not_cloneable)
            }
            None => (None, false),
        };
        let mut refused = None;
        if let Some((breaker, classifier)) = &held.parts.breaker {
            // `call` without a successful `poll_ready` breaks the tower contract; rather than
            // panic, ask the breaker now and fail the attempt if it is open.
            let permit = match self.breaker_permit.take() {
                Some(permit) => Some(permit),
                None => match breaker.try_acquire() {
                    Ok(permit) => Some(permit),
                    Err(rejected) => {
                        refused = Some(rejected);
                        None
                    }
                },
            };
            if let Some(permit) = permit {
                held.cancelled = classifier_cancelled::<S::Response, BC>(classifier);
                held.running = Some(permit);
            }
        }
        match refused {
            Some(rejected) => ResponseFuture::refused(held, retry, not_cloneable, rejected.into()),
            None => ResponseFuture::called(held, retry, not_cloneable, self.inner.call(req)),
        }
    }
}

/// What the breaker records for an attempt dropped before it finished.
#[inline]
pub(crate) fn classifier_cancelled<T, BC: Classify<T, BoxError>>(
    classifier: &BC,
) -> BreakerOutcome {
    classifier.classify_cancelled()
}
