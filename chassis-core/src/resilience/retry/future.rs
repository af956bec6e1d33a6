//! The response future of [`BackoffRetry`](super::BackoffRetry): the attempt loop.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use super::Shared;
use super::classify::{CloneRequest, RetryAfter, RetryClassifier};
use super::policy::{AttemptPolicy, Outcome};
use crate::{BoxError, Error, ErrorKind};

pin_project! {
    /// Response future of [`BackoffRetry`](super::BackoffRetry): runs the attempts of one call, asking the
    /// call's policy after each, and races them against the overall deadline.
    pub struct ResponseFuture<S, Req, C, H, K>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S::Future>,
        // `None` when only one attempt can be made (retries off, or the request could not
        // be copied).
        retry: Option<Retrying<S, Req, C, H, K>>,
        // Retries were wanted but the request could not be copied.
        not_cloneable: bool,
        shared: Arc<Shared<C, H, K>>,
        // The overall deadline: its clock starts the first time the call has to wait (or a
        // retry is decided, if that comes first), and its timer is created then.
        deadline_at: Option<Instant>,
        timer: Option<Pin<Box<Sleep>>>,
    }
}

/// What a call needs for the attempts after the first (of [`BackoffRetry`](super::BackoffRetry)
/// and of the resilient policy alike).
pub(crate) struct Retrying<S, Req, C, H, K> {
    /// A clone of the service, polled ready before each further attempt.
    pub(crate) service: S,
    pub(crate) policy: AttemptPolicy<Req, C, H, K>,
    /// The copy of the request the next attempt sends.
    pub(crate) request: Option<Req>,
}

impl<S, Req, C, H, K> Retrying<S, Req, C, H, K> {
    pub(crate) fn new(service: S, policy: AttemptPolicy<Req, C, H, K>, request: Req) -> Self {
        Self {
            service,
            policy,
            request: Some(request),
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        // An attempt is running.
        Called { #[pin] fut: F },
        // Backing off before the next attempt (boxed: only retries pay for the timer).
        Waiting { sleep: Pin<Box<Sleep>> },
        // Waiting for the service to be ready for the next attempt.
        Readying,
    }
}

impl<S, Req, C, H, K> ResponseFuture<S, Req, C, H, K>
where
    S: Service<Req>,
{
    pub(crate) fn new(
        fut: S::Future,
        retry: Option<Retrying<S, Req, C, H, K>>,
        not_cloneable: bool,
        shared: Arc<Shared<C, H, K>>,
    ) -> Self {
        Self {
            state: State::Called { fut },
            retry,
            not_cloneable,
            shared,
            deadline_at: None,
            timer: None,
        }
    }
}

impl<S, Req, C, H, K> fmt::Debug for ResponseFuture<S, Req, C, H, K>
where
    S: Service<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Waiting { .. } => "waiting",
            State::Readying => "readying",
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

/// What follows a finished attempt: `Ok` with the backoff before the next attempt, or `Err`
/// with the call's result (rewritten to a typed give-up error where the policy gave up).
/// `retry` is `None` when only one attempt can be made; `deadline_at` is the call's deadline
/// once its clock has started.
pub(crate) fn after_attempt<S, Req, C, H, K, T>(
    retry: Option<&mut Retrying<S, Req, C, H, K>>,
    shared: &Shared<C, H, K>,
    not_cloneable: bool,
    deadline_at: &mut Option<Instant>,
    mut result: Result<T, BoxError>,
) -> Result<Sleep, Result<T, BoxError>>
where
    C: RetryClassifier<T>,
    H: RetryAfter<T>,
{
    let Some(retry) = retry else {
        return Err(finish_once(shared, not_cloneable, result));
    };
    if retry.request.is_none() && retry.policy.may_retry(shared) {
        // Another attempt is allowed but the request could not be copied.
        return Err(finish_once(shared, true, result));
    }
    // The policy starts the deadline's clock if it must check a backoff against it before the
    // call ever waited.
    retry.policy.deadline = *deadline_at;
    let decision = retry.policy.decide(shared, &mut result);
    *deadline_at = retry.policy.deadline;
    decision.ok_or(result)
}

/// The single-attempt outcome: what a call that cannot retry returns, and what it records.
pub(crate) fn finish_once<C, H, K, T>(
    shared: &Shared<C, H, K>,
    not_cloneable: bool,
    result: Result<T, BoxError>,
) -> Result<T, BoxError>
where
    C: RetryClassifier<T>,
{
    let retry_wanted = not_cloneable && shared.classifier.should_retry(result.as_ref());
    match result {
        Err(err) if retry_wanted => {
            shared.record(Outcome::NotCloneable);
            tracing::warn!(
                retry = %shared.name, error = %err,
                "call failed and cannot be retried: the request is not cloneable"
            );
            Err(Error::with_source(ErrorKind::RequestNotCloneable, err).into())
        }
        Ok(response) if retry_wanted => {
            shared.record(Outcome::NotCloneable);
            tracing::warn!(
                retry = %shared.name,
                "retryable response returned as is: the request is not cloneable"
            );
            Ok(response)
        }
        Ok(response) => {
            shared.record(Outcome::Success);
            Ok(response)
        }
        Err(err) => {
            shared.record(Outcome::NotRetryable);
            Err(err)
        }
    }
}

impl<S, Req, C, H, K> Future for ResponseFuture<S, Req, C, H, K>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: RetryClassifier<S::Response>,
    H: RetryAfter<S::Response>,
    K: CloneRequest<Req>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let shared = &**this.shared;
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { fut } => {
                    let Poll::Ready(result) = fut.poll(cx) else {
                        break;
                    };
                    match after_attempt(
                        this.retry.as_mut(),
                        shared,
                        *this.not_cloneable,
                        this.deadline_at,
                        result.map_err(Into::into),
                    ) {
                        Ok(sleep) => this.state.set(State::Waiting {
                            sleep: Box::pin(sleep),
                        }),
                        Err(result) => return Poll::Ready(result),
                    }
                }
                StateProj::Waiting { sleep } => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        break;
                    }
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    let Some(retry) = this.retry.as_mut() else {
                        unreachable!("only a retrying call waits for readiness");
                    };
                    match retry.service.poll_ready(cx) {
                        Poll::Pending => break,
                        Poll::Ready(Err(err)) => return Poll::Ready(Err(err.into())),
                        Poll::Ready(Ok(())) => {}
                    }
                    let Some(request) = retry.request.take() else {
                        unreachable!("a retry is only decided with a copy of the request");
                    };
                    // Copy the request for the attempt after this one, if there can be one.
                    if retry.policy.may_retry(shared) {
                        retry.request = retry.policy.copy_request(shared, &request);
                    }
                    let fut = retry.service.call(request);
                    this.state.set(State::Called { fut });
                }
            }
        }
        poll_deadline(
            shared,
            this.retry.as_ref(),
            this.deadline_at,
            this.timer,
            cx,
        )
        .map(Err)
    }
}

/// For a call that has to wait: starts the overall deadline's clock and timer if not yet done,
/// and is ready with the deadline error once it elapses (never, without a deadline).
pub(crate) fn poll_deadline<S, Req, C, H, K>(
    shared: &Shared<C, H, K>,
    retry: Option<&Retrying<S, Req, C, H, K>>,
    deadline_at: &mut Option<Instant>,
    timer: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
) -> Poll<BoxError> {
    let Some(after) = shared.deadline else {
        return Poll::Pending;
    };
    let at = *deadline_at.get_or_insert_with(|| Instant::now() + after);
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
    ready!(timer.as_mut().poll(cx));
    let attempts = retry.map_or(1, |r| r.policy.attempt);
    shared.record(Outcome::Deadline);
    tracing::warn!(retry = %shared.name, ?after, attempts, "retry deadline exceeded");
    Poll::Ready(Error::new(ErrorKind::DeadlineExceeded { after, attempts }).into())
}
