//! What counts as a failure: [`Classify`] and its stock implementations.

/// How a finished (or abandoned) call is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The downstream did its job (a slow success still counts towards the slow-call rate).
    Success,
    /// The downstream failed: counts towards the failure rate.
    Failure,
    /// Neither: the call is not recorded at all (e.g. a client-side validation error) and a
    /// half-open probe permit it held is handed back.
    Ignored,
}

/// Decides whether a call's result is a success or a failure for the breaker.
///
/// `T` is the inner service's response, `E` its error. Both are seen, so a response can be a
/// failure (HTTP 503) and an error can be harmless ([`Outcome::Ignored`]).
///
/// Closures `Fn(Result<&T, &E>) -> Outcome` implement it:
///
/// ```
/// use chassis_core::resilience::circuit_breaker::{Classify, Outcome};
///
/// let only_timeouts = |r: Result<&String, &std::io::Error>| match r {
///     Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Outcome::Failure,
///     Err(_) => Outcome::Ignored,
///     Ok(_) => Outcome::Success,
/// };
/// assert_eq!(only_timeouts.classify(Ok(&"fine".to_string())), Outcome::Success);
/// ```
pub trait Classify<T, E> {
    /// Classifies a completed call.
    fn classify(&self, result: Result<&T, &E>) -> Outcome;

    /// Classifies a call whose future was dropped before it completed (an outer timeout, a
    /// client that went away). Defaults to [`Outcome::Failure`]: timeouts count as failures.
    fn classify_cancelled(&self) -> Outcome {
        Outcome::Failure
    }
}

impl<F, T, E> Classify<T, E> for F
where
    F: Fn(Result<&T, &E>) -> Outcome,
{
    fn classify(&self, result: Result<&T, &E>) -> Outcome {
        self(result)
    }
}

/// Every `Err` is a failure, every `Ok` a success, a dropped call a failure.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultClassifier;

impl<T, E> Classify<T, E> for DefaultClassifier {
    fn classify(&self, result: Result<&T, &E>) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// For HTTP clients: a response with a 5xx status is a failure, any other response (4xx
/// included: the downstream works, the request was wrong) a success; transport errors and
/// dropped calls are failures. Optionally 429 Too Many Requests counts as a failure too.
#[derive(Debug, Clone, Copy, Default)]
pub struct HttpStatusClassifier {
    too_many_requests_is_failure: bool,
}

impl HttpStatusClassifier {
    /// 5xx = failure, everything else = success.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also count 429 Too Many Requests as a failure (an overloaded downstream). Defaults to
    /// false.
    pub fn too_many_requests_is_failure(mut self, yes: bool) -> Self {
        self.too_many_requests_is_failure = yes;
        self
    }
}

impl<B, E> Classify<http::Response<B>, E> for HttpStatusClassifier {
    fn classify(&self, result: Result<&http::Response<B>, &E>) -> Outcome {
        match result {
            Ok(res) if res.status().is_server_error() => Outcome::Failure,
            Ok(res)
                if self.too_many_requests_is_failure
                    && res.status() == http::StatusCode::TOO_MANY_REQUESTS =>
            {
                Outcome::Failure
            }
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16) -> http::Response<()> {
        http::Response::builder().status(status).body(()).unwrap()
    }

    #[test]
    fn http_status_classifier() {
        let c = HttpStatusClassifier::new();
        let classify = |s| Classify::<_, ()>::classify(&c, Ok(&response(s)));
        assert_eq!(classify(200), Outcome::Success);
        assert_eq!(classify(404), Outcome::Success);
        assert_eq!(classify(429), Outcome::Success);
        assert_eq!(classify(500), Outcome::Failure);
        assert_eq!(classify(503), Outcome::Failure);
        assert_eq!(
            Classify::<http::Response<()>, _>::classify(&c, Err(&())),
            Outcome::Failure
        );
        let strict = HttpStatusClassifier::new().too_many_requests_is_failure(true);
        assert_eq!(
            Classify::<_, ()>::classify(&strict, Ok(&response(429))),
            Outcome::Failure
        );
        assert_eq!(
            Classify::<http::Response<()>, ()>::classify_cancelled(&c),
            Outcome::Failure
        );
    }

    #[test]
    fn default_classifier() {
        assert_eq!(
            Classify::<(), ()>::classify(&DefaultClassifier, Ok(&())),
            Outcome::Success
        );
        assert_eq!(
            Classify::<(), ()>::classify(&DefaultClassifier, Err(&())),
            Outcome::Failure
        );
    }
}
