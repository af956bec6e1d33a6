//! The `tower::retry::Policy` that drives one call's attempts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tower::retry::budget::Budget;

use super::Shared;
use super::classify::{CloneRequest, RetryAfter, RetryClassifier};
use crate::{BoxError, Error, ErrorKind};

/// Per-call state of a retried call; tower's `Retry` clones it into each call's future.
pub(crate) struct AttemptPolicy<Req, C, H, K> {
    pub(crate) shared: Arc<Shared<C, H, K>>,
    /// Attempts started so far (1 = the first call).
    pub(crate) attempt: u32,
    /// The previous backoff wait (decorrelated jitter grows from it).
    pub(crate) previous: Duration,
    /// When the overall deadline elapses, if there is one.
    pub(crate) deadline: Option<Instant>,
    /// Mirrors `attempt` for the outer future, which reports it when the deadline fires in the
    /// middle of an attempt. Only allocated when there is a deadline.
    pub(crate) attempts_seen: Option<Arc<AtomicU32>>,
    /// The copy of the request the service made in `call` (to learn whether the request can be
    /// copied at all); handed to tower's `Retry::call`, which asks for a copy first thing.
    pub(crate) precloned: Option<Req>,
}

impl<Req, C, H, K> Clone for AttemptPolicy<Req, C, H, K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            attempt: self.attempt,
            previous: self.previous,
            deadline: self.deadline,
            attempts_seen: self.attempts_seen.clone(),
            // Taken by the first `clone_request`, which tower calls before cloning the policy.
            precloned: None,
        }
    }
}

impl<Req, C, H, K> AttemptPolicy<Req, C, H, K> {
    fn give_up<Res>(&self, result: &mut Result<Res, BoxError>, kind: ErrorKind, outcome: Outcome) {
        self.shared.record(outcome);
        tracing::warn!(
            retry = %self.shared.name,
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

impl<Req, Res, C, H, K> tower::retry::Policy<Req, Res, BoxError> for AttemptPolicy<Req, C, H, K>
where
    C: RetryClassifier<Res>,
    H: RetryAfter<Res>,
    K: CloneRequest<Req>,
{
    type Future = Sleep;

    fn retry(&mut self, _req: &mut Req, result: &mut Result<Res, BoxError>) -> Option<Sleep> {
        let shared = &*self.shared;
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
        if let (Some(deadline), Some(after)) = (self.deadline, shared.deadline)
            && Instant::now() + delay >= deadline
        {
            self.give_up(
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
        if let Some(seen) = &self.attempts_seen {
            seen.store(self.attempt, Ordering::Relaxed);
        }
        Some(tokio::time::sleep(delay))
    }

    fn clone_request(&mut self, req: &Req) -> Option<Req> {
        match self.precloned.take() {
            Some(copy) => Some(copy),
            None => self.shared.cloner.clone_request(req),
        }
    }
}

/// The `outcome` label of the `retry.attempts` counter: what became of one attempt.
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
