//! The per-call policy deciding, after each attempt, whether and when to make another.

use std::marker::PhantomData;
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::retry::budget::Budget;

use super::Shared;
use super::classify::{CloneRequest, RetryAfter, RetryClassifier};
use crate::{BoxError, Error, ErrorKind};

/// Per-call state of a retried call, owned by the call's
/// [`ResponseFuture`](super::ResponseFuture). The layer's shared settings are passed in by the
/// future, which holds the one reference to them a call takes (a second `Arc` here would cost
/// every call a reference-count increment and decrement on a cache line all calls share).
pub(crate) struct AttemptPolicy<Req, C, H, K> {
    /// Attempts started so far (1 = the first call).
    pub(crate) attempt: u32,
    /// The previous backoff wait (decorrelated jitter grows from it).
    pub(crate) previous: Duration,
    /// When the overall deadline elapses, once the call's clock has started (set by the future
    /// on its first wait, or here at the first retry decision); `None` until then, and always
    /// without a deadline.
    pub(crate) deadline: Option<Instant>,
    pub(crate) _request: PhantomData<fn(Req, C, H, K)>,
}

impl<Req, C, H, K> AttemptPolicy<Req, C, H, K> {
    pub(crate) fn new(shared: &Shared<C, H, K>) -> Self {
        Self {
            attempt: 1,
            previous: shared.backoff.base,
            deadline: None,
            _request: PhantomData,
        }
    }

    /// Whether another attempt could follow this one (so the request is worth copying).
    pub(crate) fn may_retry(&self, shared: &Shared<C, H, K>) -> bool {
        self.attempt < shared.max_attempts
    }
}

impl<Req, C, H, K> Clone for AttemptPolicy<Req, C, H, K> {
    fn clone(&self) -> Self {
        Self {
            attempt: self.attempt,
            previous: self.previous,
            deadline: self.deadline,
            _request: PhantomData,
        }
    }
}

impl<Req, C, H, K> AttemptPolicy<Req, C, H, K> {
    fn give_up<Res>(
        &self,
        shared: &Shared<C, H, K>,
        result: &mut Result<Res, BoxError>,
        kind: ErrorKind,
        outcome: Outcome,
    ) {
        shared.record(outcome);
        tracing::warn!(
            retry = %shared.name,
            attempts = self.attempt,
            outcome = outcome.as_str(),
            "giving up retrying"
        );
        if let Err(last) = result {
            let last = std::mem::replace(last, BoxError::from(""));
            *result = Err(Error::with_source(kind, last).into());
        }
    }
}

impl<Req, C, H, K> AttemptPolicy<Req, C, H, K> {
    /// Decides after an attempt: `None` to return `result` (which may have been rewritten to a
    /// typed give-up error), or the backoff to wait before the next attempt.
    pub(crate) fn decide<Res>(
        &mut self,
        shared: &Shared<C, H, K>,
        result: &mut Result<Res, BoxError>,
    ) -> Option<Sleep>
    where
        C: RetryClassifier<Res>,
        H: RetryAfter<Res>,
    {
        if !shared.classifier.should_retry(result.as_ref()) {
            shared.record(if result.is_ok() {
                Outcome::Success
            } else {
                Outcome::NotRetryable
            });
            return None;
        }
        let attempts = self.attempt;
        if attempts >= shared.max_attempts {
            self.give_up(
                shared,
                result,
                ErrorKind::RetriesExhausted { attempts },
                Outcome::Exhausted,
            );
            return None;
        }
        let delay = match shared.retry_after.retry_after(result.as_ref()) {
            Some(server) => server,
            None => {
                let d = shared
                    .backoff
                    .delay(attempts - 1, self.previous, &mut rand::rng());
                self.previous = d;
                d
            }
        };
        if let Some(after) = shared.deadline
            && let now = Instant::now()
            // The call's clock starts here if it has not waited yet (see the future).
            && now + delay >= *self.deadline.get_or_insert(now + after)
        {
            self.give_up(
                shared,
                result,
                ErrorKind::DeadlineExceeded { after, attempts },
                Outcome::Deadline,
            );
            return None;
        }
        if let Some(budget) = &shared.budget
            && !budget.withdraw()
        {
            self.give_up(
                shared,
                result,
                ErrorKind::RetryBudgetExhausted { attempts },
                Outcome::BudgetExhausted,
            );
            return None;
        }
        shared.record(Outcome::Retried);
        match result {
            Err(err) => tracing::debug!(
                retry = %shared.name, attempt = attempts, ?delay, error = %err,
                "attempt failed; retrying"
            ),
            Ok(_) => tracing::debug!(
                retry = %shared.name, attempt = attempts, ?delay,
                "attempt returned a retryable response; retrying"
            ),
        }
        self.attempt += 1;
        Some(tokio::time::sleep(delay))
    }

    /// A copy of `req` for the next attempt, if it can be copied.
    pub(crate) fn copy_request(&self, shared: &Shared<C, H, K>, req: &Req) -> Option<Req>
    where
        K: CloneRequest<Req>,
    {
        shared.cloner.clone_request(req)
    }
}

/// The `outcome` label of the `retry_attempts_total` counter: what became of one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The attempt's outcome was final and good (not retryable, a response).
    Success,
    /// The attempt failed with an error the classifier does not retry.
    NotRetryable,
    /// The attempt failed and another one follows.
    Retried,
    /// The attempt failed and it was the last one allowed.
    Exhausted,
    /// The attempt failed and the retry budget had nothing left.
    BudgetExhausted,
    /// The overall deadline elapsed (during the attempt, or before the next could start).
    Deadline,
    /// The attempt failed and the request could not be copied for another.
    NotCloneable,
}

impl Outcome {
    pub(crate) const ALL: [Outcome; 7] = [
        Outcome::Success,
        Outcome::NotRetryable,
        Outcome::Retried,
        Outcome::Exhausted,
        Outcome::BudgetExhausted,
        Outcome::Deadline,
        Outcome::NotCloneable,
    ];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::NotRetryable => "not_retryable",
            Outcome::Retried => "retried",
            Outcome::Exhausted => "exhausted",
            Outcome::BudgetExhausted => "budget_exhausted",
            Outcome::Deadline => "deadline",
            Outcome::NotCloneable => "not_cloneable",
        }
    }
}
