//! The gRPC decisions plugged into chassis-core's
//! [`ResiliencePolicy`](chassis_core::resilience::policy::ResiliencePolicy): which calls may be
//! sent twice, which statuses are retried, which trip the breaker, and which status a
//! resilience error becomes.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use chassis_core::resilience::circuit_breaker::{Classify, Outcome};
use chassis_core::resilience::retry::{CloneRequest, DefaultRetryClassifier, RetryClassifier};
use chassis_core::{BoxError, ErrorKind};
use http::{Request, Response};
use tonic::{Code, Status};

use crate::grpc::code::grpc_code;

/// The request body of one attempt: the buffered message of a call that may be repeated, or
/// the body of one that is sent once.
#[derive(Debug)]
pub enum AttemptBody {
    /// Buffered: every attempt sends these bytes.
    Buffered(Bytes),
    /// Streamed once; such a request is never copied for a retry.
    Once(tonic::body::Body),
}

/// The methods that may be retried: full paths (`/pkg.Service/Method`) and service prefixes
/// (`/pkg.Service/`).
#[derive(Debug, Clone, Default)]
pub struct IdempotentMethods {
    methods: Arc<HashSet<String>>,
    services: Arc<HashSet<String>>,
}

impl IdempotentMethods {
    /// Declares `path` idempotent: `/pkg.Service/Method`, or `/pkg.Service/` for all methods
    /// of the service.
    pub fn insert(&mut self, path: &str) {
        if path.ends_with('/') {
            Arc::make_mut(&mut self.services).insert(path.to_owned());
        } else {
            Arc::make_mut(&mut self.methods).insert(path.to_owned());
        }
    }

    /// Whether a call to `path` may be sent more than once.
    pub fn allows(&self, path: &str) -> bool {
        self.methods.contains(path)
            || path
                .rfind('/')
                .is_some_and(|i| i > 0 && self.services.contains(&path[..=i]))
    }
}

/// Copies buffered requests for another attempt; streamed ones cannot be.
#[derive(Debug, Clone, Copy, Default)]
pub struct BufferedRequests;

impl CloneRequest<Request<AttemptBody>> for BufferedRequests {
    fn clone_request(&self, req: &Request<AttemptBody>) -> Option<Request<AttemptBody>> {
        let AttemptBody::Buffered(bytes) = req.body() else {
            return None;
        };
        let mut copy = Request::new(AttemptBody::Buffered(bytes.clone()));
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        *copy.extensions_mut() = req.extensions().clone();
        Some(copy)
    }
}

/// Retries the configured codes, transport errors and attempt timeouts.
#[derive(Debug, Clone)]
pub struct GrpcRetryClassifier {
    /// The codes worth another attempt.
    pub codes: Arc<[Code]>,
    /// Whether each attempt has a deadline of its own (the policy's attempt timeout, sent as
    /// `grpc-timeout`): a server's `DEADLINE_EXCEEDED` then ended one attempt, not the call,
    /// and is retried like the client-side attempt timeout it races with.
    pub deadline_per_attempt: bool,
}

impl<B> RetryClassifier<Response<B>> for GrpcRetryClassifier {
    fn should_retry(&self, outcome: Result<&Response<B>, &BoxError>) -> bool {
        match outcome {
            Ok(response) => grpc_code(response.headers()).is_some_and(|c| {
                self.codes.contains(&c)
                    || (self.deadline_per_attempt && c == Code::DeadlineExceeded)
            }),
            Err(_) => {
                RetryClassifier::<Response<B>>::should_retry(&DefaultRetryClassifier, outcome)
            }
        }
    }
}

/// Whether a code says the server could not do the work (as opposed to refusing it).
pub fn is_breaker_failure(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
    )
}

/// `UNAVAILABLE`, `DEADLINE_EXCEEDED`, `RESOURCE_EXHAUSTED` and errors are failures.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcBreakerClassifier;

impl<B> Classify<Response<B>, BoxError> for GrpcBreakerClassifier {
    fn classify(&self, result: Result<&Response<B>, &BoxError>) -> Outcome {
        match result {
            Ok(response) if grpc_code(response.headers()).is_some_and(is_breaker_failure) => {
                Outcome::Failure
            }
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Failure,
        }
    }
}

/// The status a failed call reaches its caller with: the first cause in the error's chain
/// that says more than "it failed". A status of the server or of tonic is kept; an attempt
/// timeout (the chassis's, or tonic's enforcing the `grpc-timeout` sent) or a retry deadline is
/// `DEADLINE_EXCEEDED`; an open breaker `UNAVAILABLE`; a full bulkhead or a rate limit
/// `RESOURCE_EXHAUSTED`; "retries exhausted" is looked through to the last attempt's error;
/// anything else (a refused connection, a reset) is `UNAVAILABLE`.
pub fn status_for_error(err: BoxError) -> Status {
    let message = err.to_string();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
    while let Some(e) = cause {
        if let Some(status) = e.downcast_ref::<Status>() {
            return Status::with_metadata(
                status.code(),
                status.message(),
                status.metadata().clone(),
            );
        }
        if e.is::<tonic::TimeoutExpired>() {
            return Status::deadline_exceeded(message);
        }
        if let Some(chassis) = e.downcast_ref::<chassis_core::Error>() {
            match chassis.kind() {
                ErrorKind::Timeout { .. } | ErrorKind::DeadlineExceeded { .. } => {
                    return Status::deadline_exceeded(message);
                }
                ErrorKind::CircuitOpen { .. } => return Status::unavailable(message),
                ErrorKind::BulkheadFull { .. }
                | ErrorKind::RateLimited { .. }
                | ErrorKind::ConcurrencyLimited { .. } => {
                    return Status::resource_exhausted(message);
                }
                _ => {}
            }
        }
        cause = e.source();
    }
    Status::unavailable(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::code::status_response;

    #[test]
    fn methods_and_services_are_declared_idempotent() {
        let mut m = IdempotentMethods::default();
        m.insert("/inv.Inventory/Get");
        m.insert("/grpc.health.v1.Health/");
        assert!(m.allows("/inv.Inventory/Get"));
        assert!(!m.allows("/inv.Inventory/Reserve"));
        assert!(m.allows("/grpc.health.v1.Health/Check"));
        assert!(!m.allows("/other.Health/Check"));
    }

    #[test]
    fn codes_decide_retries_and_breaker() {
        let retry = GrpcRetryClassifier {
            codes: Arc::from([Code::Unavailable]),
            deadline_per_attempt: false,
        };
        let answer = |code| status_response(code, "", None);
        assert!(retry.should_retry(Ok(&answer(Code::Unavailable))));
        assert!(!retry.should_retry(Ok(&answer(Code::DeadlineExceeded))));
        let per_attempt = GrpcRetryClassifier {
            deadline_per_attempt: true,
            ..retry.clone()
        };
        assert!(per_attempt.should_retry(Ok(&answer(Code::DeadlineExceeded))));
        assert!(!retry.should_retry(Ok(&answer(Code::InvalidArgument))));
        assert!(!retry.should_retry(Ok(&Response::new(()))));
        let breaker = GrpcBreakerClassifier;
        for (code, outcome) in [
            (Code::Unavailable, Outcome::Failure),
            (Code::DeadlineExceeded, Outcome::Failure),
            (Code::ResourceExhausted, Outcome::Failure),
            (Code::NotFound, Outcome::Success),
            (Code::PermissionDenied, Outcome::Success),
        ] {
            assert_eq!(breaker.classify(Ok(&answer(code))), outcome, "{code:?}");
        }
    }

    #[test]
    fn resilience_errors_become_statuses() {
        let open: BoxError = Box::new(chassis_core::Error::circuit_open(
            "inv".into(),
            std::time::Duration::from_secs(1),
        ));
        assert_eq!(status_for_error(open).code(), Code::Unavailable);
        let own: BoxError = Box::new(Status::not_found("x"));
        assert_eq!(status_for_error(own).code(), Code::NotFound);
        let timed_out: BoxError = Box::new(chassis_core::Error::with_source(
            ErrorKind::RetriesExhausted { attempts: 2 },
            tonic::TimeoutExpired(()),
        ));
        assert_eq!(status_for_error(timed_out).code(), Code::DeadlineExceeded);
        let refused: BoxError = "connection refused".into();
        assert_eq!(status_for_error(refused).code(), Code::Unavailable);
    }
}
