//! [`ResponseFuture`] of [`Resilient`](super::Resilient): the attempt loop of the whole stack.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::service::{Parts, PartsRef};
use crate::resilience::adaptive_limit::{Ending, Token};
use crate::resilience::circuit_breaker::{Classify, Outcome as BreakerOutcome, RawPermit};
use crate::resilience::retry::{
    CloneRequest, RetryAfter, RetryClassifier, Retrying, after_attempt, poll_deadline,
};
use crate::{BoxError, Error};

/// What a call holds until its future is dropped: its reference to the parts, the bulkhead
/// permit, and the breaker permits (of the attempt in flight, or taken for the next attempt
/// and not yet used). Dropping it gives the bulkhead permit back, records an attempt still in
/// flight as the classifier's `classify_cancelled` says (so a half-open probe permit never
/// leaks) and hands an unused breaker permit back unrecorded, as the stacked layers do.
pub(crate) struct Held<RC, H, K, BC> {
    pub(crate) parts: PartsRef<Parts<RC, H, K, BC>>,
    pub(crate) bulkhead: bool,
    /// The adaptive limit's slot, finished with the call's outcome.
    pub(crate) admission: Option<Token>,
    pub(crate) running: Option<RawPermit>,
    pub(crate) cancelled: BreakerOutcome,
    ready: Option<RawPermit>,
}

impl<RC, H, K, BC> Held<RC, H, K, BC> {
    pub(crate) fn new(parts: PartsRef<Parts<RC, H, K, BC>>) -> Self {
        Self {
            parts,
            bulkhead: false,
            admission: None,
            running: None,
            cancelled: BreakerOutcome::Failure,
            ready: None,
        }
    }
}

impl<RC, H, K, BC> Drop for Held<RC, H, K, BC> {
    fn drop(&mut self) {
        if let Some((breaker, _)) = &self.parts.breaker {
            if let Some(permit) = self.running.take() {
                breaker.record(permit, self.cancelled);
            }
            if let Some(permit) = self.ready.take() {
                breaker.release(permit);
            }
        }
        if self.bulkhead
            && let Some(bulkhead) = &self.parts.bulkhead
        {
            bulkhead.pool.give_back();
        }
        // Still held: the call was cancelled (or ended in a rejection), which is no sample.
        self.finish_admission(Ending::Ignored);
    }
}

impl<RC, H, K, BC> Held<RC, H, K, BC> {
    /// Gives the adaptive limit's slot back, with how the call ended.
    #[inline]
    fn finish_admission(&mut self, ending: Ending) {
        if let (Some(token), Some(limiter)) = (self.admission.take(), &self.parts.adaptive_limit) {
            limiter.release(token, ending);
        }
    }
}

pin_project! {
    /// Response future of [`Resilient`](super::Resilient): runs the attempts of one call (each
    /// guarded by the breaker and bounded by the attempt timeout), asking the retry policy
    /// after each, and races them against the overall deadline.
    pub struct ResponseFuture<S, Req, RC, H, K, BC>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        // `None` when only one attempt can be made (no retry, retries off, or the request
        // could not be copied).
        retry: Option<Retrying<S, Req, RC, H, K>>,
        // Retries were wanted but the request could not be copied.
        not_cloneable: bool,
        held: Held<RC, H, K, BC>,
        // The overall deadline: its clock starts the first time the call has to wait (or a
        // retry is decided, if that comes first), and its timer is created then.
        deadline_at: Option<Instant>,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt is running; its timeout's timer is armed on the first poll that waits.
        Called { #[pin] fut: F, timer: Option<Pin<Box<Sleep>>> },
        // The breaker refused the attempt in `call` (no `poll_ready` before it): its outcome.
        Refused { error: Option<BoxError> },
        // Backing off before the next attempt (boxed: only retries pay for the timer).
        Waiting { sleep: Pin<Box<Sleep>> },
        // Waiting for the breaker and the service to be ready for the next attempt.
        Readying,
        // The rate limiter or the bulkhead rejected the call: no attempt is made.
        Rejected { error: Option<BoxError> },
    }
}

impl<S, Req, RC, H, K, BC> ResponseFuture<S, Req, RC, H, K, BC>
where
    S: Service<Req>,
{
    fn new(
        state: State<S::Future>,
        held: Held<RC, H, K, BC>,
        retry: Option<Retrying<S, Req, RC, H, K>>,
        not_cloneable: bool,
    ) -> Self {
        Self {
            state,
            retry,
            not_cloneable,
            held,
            deadline_at: None,
            timer: None,
        }
    }

    pub(crate) fn called(
        held: Held<RC, H, K, BC>,
        retry: Option<Retrying<S, Req, RC, H, K>>,
        not_cloneable: bool,
        fut: S::Future,
    ) -> Self {
        Self::new(
            State::Called { fut, timer: None },
            held,
            retry,
            not_cloneable,
        )
    }

    pub(crate) fn refused(
        held: Held<RC, H, K, BC>,
        retry: Option<Retrying<S, Req, RC, H, K>>,
        not_cloneable: bool,
        error: BoxError,
    ) -> Self {
        let state = State::Refused { error: Some(error) };
        Self::new(state, held, retry, not_cloneable)
    }

    pub(crate) fn rejected(held: Held<RC, H, K, BC>, error: BoxError) -> Self {
        let state = State::Rejected { error: Some(error) };
        Self::new(state, held, None, false)
    }
}

impl<S, Req, RC, H, K, BC> fmt::Debug for ResponseFuture<S, Req, RC, H, K, BC>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Refused { .. } => "refused",
            State::Waiting { .. } => "waiting",
            State::Readying => "readying",
            State::Rejected { .. } => "rejected",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field(
                "attempt",
                &self.retry.as_ref().map_or(1, |r| r.policy.attempt),
            )
            .field("deadline", &self.deadline_at)
            .finish_non_exhaustive()
    }
}

impl<S, Req, RC, H, K, BC> Future for ResponseFuture<S, Req, RC, H, K, BC>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    RC: RetryClassifier<S::Response>,
    H: RetryAfter<S::Response>,
    K: CloneRequest<Req>,
    BC: Classify<S::Response, BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let held = &mut *this.held;
        loop {
            let result = match this.state.as_mut().project() {
                StateProj::Called { fut, timer } => match fut.poll(cx) {
                    Poll::Ready(result) => result.map_err(Into::into),
                    Poll::Pending => {
                        // The attempt timeout, inside the breaker: a timed-out attempt is a
                        // failure the breaker records, and is retried like any failure.
                        let Some(after) = held.parts.attempt_timeout else {
                            break;
                        };
                        let timer =
                            timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
                        if timer.as_mut().poll(cx).is_pending() {
                            break;
                        }
                        Err(Error::timeout(after).into())
                    }
                },
                StateProj::Refused { error } => Err(error
                    .take()
                    .expect("resilient ResponseFuture polled after completion")),
                StateProj::Rejected { error } => {
                    return Poll::Ready(Err(error
                        .take()
                        .expect("resilient ResponseFuture polled after completion")));
                }
                StateProj::Waiting { sleep } => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        break;
                    }
                    this.state.set(State::Readying);
                    continue;
                }
                StateProj::Readying => {
                    let Some(retry) = this.retry.as_mut() else {
                        unreachable!("only a retrying call waits for readiness");
                    };
                    let parts = &*held.parts;
                    match parts.poll_attempt_ready::<Req, _>(
                        &mut held.ready,
                        &mut retry.service,
                        cx,
                    ) {
                        Poll::Pending => break,
                        Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                        Poll::Ready(Ok(())) => {}
                    }
                    let Some(request) = retry.request.take() else {
                        unreachable!("a retry is only decided with a copy of the request");
                    };
                    let Some(shared) = &parts.retry else {
                        unreachable!("only a retrying call makes further attempts");
                    };
                    // Copy the request for the attempt after this one, if there can be one.
                    if retry.policy.may_retry(shared) {
                        retry.request = retry.policy.copy_request(shared, &request);
                    }
                    if let Some((_, classifier)) = &parts.breaker {
                        held.cancelled = classifier.classify_cancelled();
                        held.running = held.ready.take();
                    }
                    let fut = retry.service.call(request);
                    this.state.set(State::Called { fut, timer: None });
                    continue;
                }
            };
            // The attempt is over: the breaker records it, then the retry policy decides.
            let parts = &*held.parts;
            if let (Some(permit), Some((breaker, classifier))) =
                (held.running.take(), parts.breaker.as_ref())
            {
                breaker.record(permit, classifier.classify(result.as_ref()));
            }
            let Some(shared) = &parts.retry else {
                held.finish_admission(Ending::of(&result));
                return Poll::Ready(result);
            };
            match after_attempt(
                this.retry.as_mut(),
                shared,
                *this.not_cloneable,
                this.deadline_at,
                result,
            ) {
                Ok(sleep) => this.state.set(State::Waiting {
                    sleep: Box::pin(sleep),
                }),
                Err(result) => {
                    held.finish_admission(Ending::of(&result));
                    return Poll::Ready(result);
                }
            }
        }
        // The call has to wait: the overall deadline runs.
        let Some(shared) = &held.parts.retry else {
            return Poll::Pending;
        };
        let expired = poll_deadline(
            shared,
            this.retry.as_ref(),
            this.deadline_at,
            this.timer,
            cx,
        );
        if expired.is_ready() {
            held.finish_admission(Ending::Dropped);
        }
        expired.map(Err)
    }
}
