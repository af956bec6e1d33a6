//! The pluggable decisions of a retry: is this outcome worth retrying, did the server say when,
//! and how is a request copied for the next attempt.
//!
//! Each is a trait with a blanket impl for closures, so a one-off rule is a closure and a
//! reusable one (say, HTTP's "retry 502/503/504 and 429, honour `Retry-After`") is a type.

use std::time::Duration;

use crate::{BoxError, Error, ErrorKind};

/// Decides whether an attempt's outcome is worth another attempt.
///
/// Implemented for closures `Fn(Result<&Res, &BoxError>) -> bool`.
pub trait RetryClassifier<Res> {
    /// `true` to retry after this outcome (an error, or a response such as HTTP 503).
    fn should_retry(&self, outcome: Result<&Res, &BoxError>) -> bool;
}

impl<F, Res> RetryClassifier<Res> for F
where
    F: Fn(Result<&Res, &BoxError>) -> bool,
{
    fn should_retry(&self, outcome: Result<&Res, &BoxError>) -> bool {
        self(outcome)
    }
}

/// The default classifier: responses are final, errors are retried, except the errors that a
/// retry cannot help with.
///
/// Not retried (a [`chassis_core::Error`](crate::Error) of one of these kinds anywhere in the
/// error's source chain):
/// - rejections by a local resilience layer, [`ErrorKind::CircuitOpen`],
///   [`ErrorKind::BulkheadFull`] and [`ErrorKind::RateLimited`]. They fail again at once if
///   retried after a short backoff (the breaker stays open for its whole wait), only burning the
///   retry budget and attempts; the error carries `retry_after` for a caller who wants to come
///   back later. This follows Polly's and Resilience4j's guidance to not retry
///   `BrokenCircuitException` / `CallNotPermittedException`;
/// - a nested retry that already gave up ([`ErrorKind::RetriesExhausted`],
///   [`ErrorKind::RetryBudgetExhausted`], [`ErrorKind::DeadlineExceeded`],
///   [`ErrorKind::RequestNotCloneable`]): retrying it would multiply attempts;
/// - [`ErrorKind::InvalidConfig`].
///
/// Timeouts ([`ErrorKind::Timeout`]) and every other error are retried.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefaultRetryClassifier;

impl<Res> RetryClassifier<Res> for DefaultRetryClassifier {
    fn should_retry(&self, outcome: Result<&Res, &BoxError>) -> bool {
        match outcome {
            Ok(_) => false,
            Err(err) => match Error::find_in(err.as_ref()).map(Error::kind) {
                None | Some(ErrorKind::Timeout { .. }) => true,
                Some(_) => false,
            },
        }
    }
}

/// Extracts a server-given delay ("try again in 30 s", HTTP `Retry-After`) from an attempt's
/// outcome. When it returns `Some`, that delay replaces the computed backoff for the next
/// attempt (it is not capped by the backoff's `max`: retrying earlier than the server asked is
/// pointless), but it still has to fit before the overall deadline.
///
/// Implemented for closures `Fn(Result<&Res, &BoxError>) -> Option<Duration>`.
pub trait RetryAfter<Res> {
    /// The delay the server asked for, if any.
    fn retry_after(&self, outcome: Result<&Res, &BoxError>) -> Option<Duration>;
}

impl<F, Res> RetryAfter<Res> for F
where
    F: Fn(Result<&Res, &BoxError>) -> Option<Duration>,
{
    fn retry_after(&self, outcome: Result<&Res, &BoxError>) -> Option<Duration> {
        self(outcome)
    }
}

/// The default [`RetryAfter`]: no server-given delays, the backoff decides.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoRetryAfter;

impl<Res> RetryAfter<Res> for NoRetryAfter {
    fn retry_after(&self, _: Result<&Res, &BoxError>) -> Option<Duration> {
        None
    }
}

/// Copies a request for the next attempt, or says it cannot (`None`), e.g. an HTTP request
/// whose body is a stream that has been consumed.
///
/// Implemented for closures `Fn(&Req) -> Option<Req>`.
pub trait CloneRequest<Req> {
    /// A copy of `req` for another attempt, or `None` if it cannot be copied.
    fn clone_request(&self, req: &Req) -> Option<Req>;
}

impl<F, Req> CloneRequest<Req> for F
where
    F: Fn(&Req) -> Option<Req>,
{
    fn clone_request(&self, req: &Req) -> Option<Req> {
        self(req)
    }
}

/// The default [`CloneRequest`]: `Req: Clone`, always cloneable.
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneWithClone;

impl<Req: Clone> CloneRequest<Req> for CloneWithClone {
    fn clone_request(&self, req: &Req) -> Option<Req> {
        Some(req.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(e: impl Into<BoxError>) -> BoxError {
        e.into()
    }

    #[test]
    fn default_classifier_retries_errors_but_not_rejections() {
        let c = DefaultRetryClassifier;
        assert!(!RetryClassifier::<u32>::should_retry(&c, Ok(&1)));
        assert!(RetryClassifier::<u32>::should_retry(
            &c,
            Err(&boxed(std::io::Error::other("x")))
        ));
        let timeout = boxed(Error::timeout(Duration::from_secs(1)));
        assert!(RetryClassifier::<u32>::should_retry(&c, Err(&timeout)));
        let open = boxed(Error::circuit_open("b".into(), Duration::from_secs(1)));
        assert!(!RetryClassifier::<u32>::should_retry(&c, Err(&open)));
        let nested = boxed(Error::with_source(
            ErrorKind::RetriesExhausted { attempts: 2 },
            std::io::Error::other("x"),
        ));
        assert!(!RetryClassifier::<u32>::should_retry(&c, Err(&nested)));
    }

    #[test]
    fn closures_are_classifiers_hooks_and_cloners() {
        let c = |r: Result<&u16, &BoxError>| matches!(r, Ok(s) if *s >= 500);
        assert!(c.should_retry(Ok(&503)));
        assert!(!c.should_retry(Ok(&404)));
        let h = |r: Result<&u16, &BoxError>| (r.ok() == Some(&429)).then(|| Duration::from_secs(3));
        assert_eq!(h.retry_after(Ok(&429)), Some(Duration::from_secs(3)));
        let k = |r: &String| (!r.is_empty()).then(|| r.clone());
        assert_eq!(k.clone_request(&String::new()), None);
        assert_eq!(CloneWithClone.clone_request(&5u8), Some(5));
    }
}
