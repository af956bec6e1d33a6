//! [`ClientError`]: what went wrong calling another service, typed so callers can act.

use std::fmt;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

use crate::auth::AuthError;
use crate::error::ErrorBody;
use chassis_core::{BoxError, ErrorKind};

/// Longest body excerpt kept in [`ClientErrorKind::Status4xx`], in bytes.
const BODY_EXCERPT_LEN: usize = 1024;

/// What went wrong calling a downstream service.
///
/// The kind names the *cause*. When retries ran out, the kind is the last attempt's cause
/// (`Unreachable`, `TimedOut`, `Status5xx`…) and [`ClientError::attempts`] says how many
/// attempts were made; [`ClientError::retries_exhausted`] tells that case apart.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientErrorKind {
    /// The downstream answered 4xx: our request is wrong (or not allowed). Not retried, except
    /// 408 and 429.
    Status4xx {
        /// The status.
        status: StatusCode,
        /// The start of the response body (lossy UTF-8), for logs and for
        /// [`ClientError::api_error`].
        body: String,
    },
    /// The downstream answered 5xx (after any retries the policy allowed).
    Status5xx {
        /// The status.
        status: StatusCode,
        /// The downstream's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// No connection could be made (refused, DNS failure, connect timeout): the request was
    /// never sent.
    Unreachable,
    /// The connection failed after the request may have been sent (reset, protocol error,
    /// broken body): the downstream may or may not have acted on it.
    Transport,
    /// An attempt (or the overall deadline) timed out.
    TimedOut {
        /// The timeout that elapsed.
        after: Duration,
    },
    /// The circuit breaker for this downstream is open: the call was rejected locally, without
    /// reaching the downstream.
    CircuitOpen {
        /// Time until the breaker lets a probe through.
        retry_after: Duration,
    },
    /// A local bulkhead or rate limiter rejected the call (too many calls in flight or per
    /// second to this downstream).
    Overloaded {
        /// When a permit becomes available, if known.
        retry_after: Option<Duration>,
    },
    /// The request could not be built or sent as given (bad URL, unserialisable body).
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// The response could not be read or decoded (body error, body too large, JSON that does not
    /// match the expected type).
    InvalidResponse {
        /// What is wrong.
        reason: String,
    },
    /// The service token could not be produced.
    Auth,
}

/// The error of [`HttpClient`](super::HttpClient).
pub struct ClientError {
    kind: ClientErrorKind,
    downstream: String,
    attempts: u32,
    retries_exhausted: bool,
    /// The status of an answer that arrived but whose body could not be read or decoded.
    answered: Option<StatusCode>,
    source: Option<BoxError>,
}

impl ClientError {
    pub(crate) fn new(kind: ClientErrorKind, downstream: &str) -> Self {
        Self {
            kind,
            downstream: downstream.to_owned(),
            attempts: 1,
            retries_exhausted: false,
            answered: None,
            source: None,
        }
    }

    /// The error for a non-2xx answer that was read whole: `Status4xx` with the start of the
    /// body, `Status5xx` with the `Retry-After` delay.
    pub(crate) fn from_answer(
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
        downstream: &str,
    ) -> Self {
        let kind = if status.is_client_error() {
            let cut = body.len().min(BODY_EXCERPT_LEN);
            ClientErrorKind::Status4xx {
                status,
                body: String::from_utf8_lossy(&body[..cut]).into_owned(),
            }
        } else {
            ClientErrorKind::Status5xx {
                status,
                retry_after: super::policy::parse_retry_after(headers, SystemTime::now()),
            }
        };
        Self::new(kind, downstream)
    }

    /// `from_answer` (what `HttpClient::execute` makes of an error answer) for the fuzz targets in
    /// the repository's `fuzz/` crate, which feed it arbitrary answers; not part of the API.
    #[doc(hidden)]
    pub fn from_answer_for_fuzzing(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Self {
        Self::from_answer(status, headers, body, "fuzz")
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Records the status of the answer whose body failed (`InvalidResponse`, `Transport`).
    pub(crate) fn with_answered(mut self, status: StatusCode) -> Self {
        self.answered = Some(status);
        self
    }

    pub(crate) fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    pub(crate) fn set_exhausted(&mut self) {
        self.retries_exhausted = true;
    }

    pub(crate) fn invalid_request(downstream: &str, reason: impl Into<String>) -> Self {
        Self::new(
            ClientErrorKind::InvalidRequest {
                reason: reason.into(),
            },
            downstream,
        )
    }

    pub(crate) fn invalid_response(downstream: &str, reason: impl Into<String>) -> Self {
        Self::new(
            ClientErrorKind::InvalidResponse {
                reason: reason.into(),
            },
            downstream,
        )
    }

    /// Maps an error out of the client's middleware stack to its cause.
    pub(crate) fn from_stack(err: BoxError, downstream: &str) -> Self {
        let mut exhausted = false;
        let mut err = err;
        loop {
            let core = match chassis_core::Error::from_boxed(err) {
                Ok(core) => core,
                Err(other) => {
                    let mut mapped = Self::from_transport(other, downstream);
                    mapped.retries_exhausted = exhausted;
                    return mapped;
                }
            };
            let kind = match core.kind() {
                ErrorKind::RetriesExhausted { .. }
                | ErrorKind::RetryBudgetExhausted { .. }
                | ErrorKind::RequestNotCloneable => None,
                ErrorKind::CircuitOpen { retry_after, .. } => Some(ClientErrorKind::CircuitOpen {
                    retry_after: *retry_after,
                }),
                ErrorKind::BulkheadFull { .. } => {
                    Some(ClientErrorKind::Overloaded { retry_after: None })
                }
                ErrorKind::RateLimited { retry_after, .. } => Some(ClientErrorKind::Overloaded {
                    retry_after: Some(*retry_after),
                }),
                ErrorKind::Timeout { after } | ErrorKind::DeadlineExceeded { after, .. } => {
                    Some(ClientErrorKind::TimedOut { after: *after })
                }
                ErrorKind::InvalidConfig { reason } => Some(ClientErrorKind::InvalidRequest {
                    reason: reason.clone(),
                }),
                _ => Some(ClientErrorKind::Transport),
            };
            let Some(kind) = kind else {
                // A retry wrapper: the cause is its source (the last attempt's error).
                exhausted |= !matches!(core.kind(), ErrorKind::RequestNotCloneable);
                match core.into_source() {
                    Some(source) => {
                        err = source;
                        continue;
                    }
                    None => {
                        let mut mapped = Self::new(ClientErrorKind::Transport, downstream);
                        mapped.retries_exhausted = exhausted;
                        return mapped;
                    }
                }
            };
            let mut mapped = Self::new(kind, downstream).with_source(core);
            mapped.retries_exhausted = exhausted;
            return mapped;
        }
    }

    fn from_transport(err: BoxError, downstream: &str) -> Self {
        if err.downcast_ref::<AuthError>().is_some() {
            return Self::new(ClientErrorKind::Auth, downstream).with_source(err);
        }
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err.as_ref());
        let mut kind = ClientErrorKind::Transport;
        while let Some(e) = current {
            if let Some(legacy) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
                if legacy.is_connect() {
                    kind = ClientErrorKind::Unreachable;
                }
                break;
            }
            current = e.source();
        }
        Self::new(kind, downstream).with_source(err)
    }

    /// What happened.
    pub fn kind(&self) -> &ClientErrorKind {
        &self.kind
    }

    /// The downstream's name (as configured on the client).
    pub fn downstream(&self) -> &str {
        &self.downstream
    }

    /// How many attempts were made (1 when the call was not retried).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether the policy retried and gave up (attempts, budget or deadline ran out).
    pub fn retries_exhausted(&self) -> bool {
        self.retries_exhausted
    }

    /// The HTTP status the downstream answered: for `Status4xx`/`Status5xx`, and for an
    /// `InvalidResponse` or `Transport` error that arose while reading or decoding the body of
    /// an answer that did arrive (too large, cut off, not the expected JSON).
    ///
    /// A 2xx here means the downstream **did act** on the request; only its answer was lost.
    /// A caller relaying a write must not report it as failed (a client would retry it and
    /// apply it twice): see [`ClientError::answered_success`].
    pub fn status(&self) -> Option<StatusCode> {
        match &self.kind {
            ClientErrorKind::Status4xx { status, .. }
            | ClientErrorKind::Status5xx { status, .. } => Some(*status),
            _ => self.answered,
        }
    }

    /// Whether the downstream answered with a 2xx whose body could not be read or decoded:
    /// the request succeeded, its answer did not arrive whole.
    pub fn answered_success(&self) -> bool {
        self.answered.is_some_and(|s| s.is_success())
    }

    /// When to try again, if the downstream or a local layer said.
    pub fn retry_after(&self) -> Option<Duration> {
        match &self.kind {
            ClientErrorKind::CircuitOpen { retry_after } => Some(*retry_after),
            ClientErrorKind::Overloaded { retry_after }
            | ClientErrorKind::Status5xx { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The downstream's chassis JSON error body, when a `Status4xx` body is one.
    pub fn api_error(&self) -> Option<ErrorBody> {
        match &self.kind {
            ClientErrorKind::Status4xx { body, .. } => serde_json::from_str(body).ok(),
            _ => None,
        }
    }

    /// Whether the call was rejected locally (open circuit, bulkhead, rate limit) without load
    /// on the downstream.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self.kind,
            ClientErrorKind::CircuitOpen { .. } | ClientErrorKind::Overloaded { .. }
        )
    }
}

impl fmt::Debug for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ClientError");
        d.field("kind", &self.kind)
            .field("downstream", &self.downstream)
            .field("attempts", &self.attempts)
            .field("retries_exhausted", &self.retries_exhausted);
        if let Some(status) = self.answered {
            d.field("answered", &status);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = &self.downstream;
        match &self.kind {
            ClientErrorKind::Status4xx { status, .. } => write!(f, "{name} answered {status}")?,
            ClientErrorKind::Status5xx { status, .. } => write!(f, "{name} answered {status}")?,
            ClientErrorKind::Unreachable => write!(f, "{name} is unreachable")?,
            ClientErrorKind::Transport => write!(f, "connection to {name} failed")?,
            ClientErrorKind::TimedOut { after } => {
                write!(f, "call to {name} timed out after {}ms", after.as_millis())?
            }
            ClientErrorKind::CircuitOpen { retry_after } => write!(
                f,
                "circuit to {name} is open; retry after {}ms",
                retry_after.as_millis()
            )?,
            ClientErrorKind::Overloaded { .. } => {
                write!(f, "too many calls to {name} (local limit)")?
            }
            ClientErrorKind::InvalidRequest { reason } => {
                write!(f, "invalid request to {name}: {reason}")?
            }
            ClientErrorKind::InvalidResponse { reason } => {
                write!(f, "invalid response from {name}: {reason}")?
            }
            ClientErrorKind::Auth => write!(f, "no service token for {name}")?,
        }
        if self.attempts > 1 {
            write!(f, " ({} attempts)", self.attempts)?;
        }
        Ok(())
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwraps_retry_errors_to_the_cause() {
        let err: BoxError = Box::new(chassis_core::Error::with_source(
            ErrorKind::RetriesExhausted { attempts: 3 },
            chassis_core::Error::timeout(Duration::from_millis(200)),
        ));
        let mapped = ClientError::from_stack(err, "inventory").with_attempts(3);
        assert_eq!(
            mapped.kind(),
            &ClientErrorKind::TimedOut {
                after: Duration::from_millis(200)
            }
        );
        assert!(mapped.retries_exhausted());
        assert_eq!(
            mapped.to_string(),
            "call to inventory timed out after 200ms (3 attempts)"
        );
    }

    #[test]
    fn circuit_open_is_a_rejection() {
        let err: BoxError = Box::new(chassis_core::Error::circuit_open(
            "inventory".into(),
            Duration::from_secs(5),
        ));
        let mapped = ClientError::from_stack(err, "inventory");
        assert!(mapped.is_rejection());
        assert_eq!(mapped.retry_after(), Some(Duration::from_secs(5)));
        assert!(!mapped.retries_exhausted());
    }
}
