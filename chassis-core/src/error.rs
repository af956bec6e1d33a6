//! The one error type of `chassis-core`.
//!
//! Every resilience layer fails with [`Error`]: an opaque struct whose [`ErrorKind`] says what
//! happened and carries what a caller needs to act on it (the breaker's name and the time left
//! until it lets a probe through, how long a timeout waited, how many attempts a retry made).
//! The error a failed attempt produced, when there is one, is the [`std::error::Error::source`].
//!
//! Layers return it boxed as tower's [`BoxError`]; get it back with [`Error::from_boxed`] or
//! `err.downcast_ref::<chassis_core::Error>()`.
//!
//! ```
//! use chassis_core::{Error, ErrorKind};
//! use std::time::Duration;
//!
//! let err = Error::timeout(Duration::from_millis(250));
//! assert!(matches!(err.kind(), ErrorKind::Timeout { after } if *after == Duration::from_millis(250)));
//! assert_eq!(err.to_string(), "timed out after 250ms");
//! ```

use std::fmt;
use std::time::Duration;

use crate::name::ComponentName;
use crate::resilience::keyed_rate_limit::RateLimitInfo;

/// A type-erased error, as used at every tower middleware boundary.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong in a resilience layer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The circuit breaker `name` is open (or half-open with every probe permit taken) and
    /// rejects calls for about `retry_after` more.
    CircuitOpen {
        /// Name of the breaker, as configured.
        name: ComponentName,
        /// Time left until the breaker lets a probe call through.
        retry_after: Duration,
    },
    /// The bulkhead `name` had `max_concurrent` calls in flight and no permit freed up within
    /// `max_wait`.
    BulkheadFull {
        /// Name of the bulkhead, as configured.
        name: ComponentName,
        /// The concurrency limit that was reached.
        max_concurrent: usize,
        /// How long the call waited for a permit before it was rejected.
        max_wait: Duration,
    },
    /// The adaptive concurrency limit `name` had `limit` calls in flight: the call was shed at
    /// once, before the downstream's latency grew.
    ConcurrencyLimited {
        /// Name of the limiter, as configured.
        name: ComponentName,
        /// The limit in effect when the call was shed.
        limit: usize,
    },
    /// The rate limiter `name` had no permit; one becomes available after `retry_after`.
    RateLimited {
        /// Name of the rate limiter, as configured.
        name: ComponentName,
        /// Time until the next permit.
        retry_after: Duration,
    },
    /// A call (or one attempt of it) did not complete within `after`.
    Timeout {
        /// The configured timeout that elapsed.
        after: Duration,
    },
    /// The overall deadline of a retried call elapsed after `attempts` attempts.
    DeadlineExceeded {
        /// The configured overall deadline.
        after: Duration,
        /// Attempts started before the deadline.
        attempts: u32,
    },
    /// Every attempt failed. The last attempt's error is the [`std::error::Error::source`].
    RetriesExhausted {
        /// How many attempts were made (the first call included).
        attempts: u32,
    },
    /// A retry was wanted but the retry budget was spent: retries would have multiplied load on a
    /// struggling downstream. The last attempt's error is the source.
    RetryBudgetExhausted {
        /// How many attempts were made (the first call included).
        attempts: u32,
    },
    /// The call failed and would have been retried, but the request could not be cloned, so no
    /// retry was possible. The failure is the source. This outcome is never silent: it is this
    /// error, not a plain pass-through of the inner error.
    RequestNotCloneable,
    /// A configuration value was rejected when a policy or layer was built.
    InvalidConfig {
        /// What is wrong with it.
        reason: String,
    },
    /// A [lifecycle](crate::lifecycle) component failed to start; the cause is the source.
    ComponentStart {
        /// The component's name.
        component: String,
    },
    /// A running component failed and stopped the service; the cause is the source.
    ComponentFailed {
        /// The component's name.
        component: String,
    },
    /// A component's stop returned an error; the cause is the source.
    ComponentStop {
        /// The component's name.
        component: String,
    },
    /// A component did not stop within its phase's deadline and was abandoned.
    StopTimeout {
        /// The component's name.
        component: String,
        /// The deadline of its phase.
        after: Duration,
    },
    /// A second stop signal cut the graceful shutdown short.
    ShutdownForced,
    /// A [control](crate::control) action was refused: unknown to the component, or its
    /// parameters are wrong. Nothing changed.
    InvalidAction {
        /// The component's name.
        component: String,
        /// What is wrong with the action.
        reason: String,
    },
    /// A [control](crate::control) action was valid but could not be carried out (its
    /// database or broker failed); the cause is the source.
    ActionFailed {
        /// The component's name.
        component: String,
    },
}

/// The error of every `chassis-core` layer: an [`ErrorKind`] plus, where there is one, the
/// underlying error as its source.
//
// Written out rather than through `__define_error!`, whose errors hold any source boxed: a
// keyed rate limiter's rejection carries its quota inline (see `Source`).
pub struct Error {
    kind: ErrorKind,
    source: Source,
}

/// What caused an [`Error`].
///
/// A keyed rate limiter's quota is kept inline rather than boxed: a limiter under abuse
/// rejects most of its calls, and a rejection that allocates and frees costs more than the
/// check that made it. It is boxed only if the caller takes it out ([`Error::into_source`]).
enum Source {
    None,
    Boxed(BoxError),
    Quota(RateLimitInfo),
}

impl Source {
    fn as_ref(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            Self::None => None,
            Self::Boxed(e) => Some(e.as_ref()),
            Self::Quota(q) => Some(q),
        }
    }
}

impl Error {
    /// Builds an error of `kind` without a source.
    pub fn new(kind: ErrorKind) -> Self {
        Self {
            kind,
            source: Source::None,
        }
    }

    /// Builds an error of `kind` caused by `source`.
    pub fn with_source(kind: ErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Source::Boxed(source.into()),
        }
    }

    /// A keyed rate limiter's rejection: [`ErrorKind::RateLimited`] with the key's `quota` as
    /// the source. The same error as `with_source(kind, quota)`, without allocating: the quota
    /// is kept inline.
    pub fn rate_limited(name: ComponentName, retry_after: Duration, quota: RateLimitInfo) -> Self {
        Self {
            kind: ErrorKind::RateLimited { name, retry_after },
            source: Source::Quota(quota),
        }
    }

    /// What happened.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
    /// Shorthand for [`ErrorKind::Timeout`].
    pub fn timeout(after: Duration) -> Self {
        Self::new(ErrorKind::Timeout { after })
    }

    /// Shorthand for [`ErrorKind::CircuitOpen`].
    pub fn circuit_open(name: ComponentName, retry_after: Duration) -> Self {
        Self::new(ErrorKind::CircuitOpen { name, retry_after })
    }

    /// Shorthand for [`ErrorKind::InvalidConfig`].
    pub fn invalid_config(reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfig {
            reason: reason.into(),
        })
    }

    /// The underlying error (for retries: the last attempt's error), if any.
    pub fn last_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_ref()
    }

    /// Takes the underlying error out.
    pub fn into_source(self) -> Option<BoxError> {
        match self.source {
            Source::None => None,
            Source::Boxed(e) => Some(e),
            Source::Quota(q) => Some(Box::new(q)),
        }
    }

    /// Recovers a chassis error from a boxed middleware error, or gives the box back.
    pub fn from_boxed(err: BoxError) -> Result<Self, BoxError> {
        err.downcast::<Self>().map(|e| *e)
    }

    /// Finds a chassis error in `err` or anywhere in its chain of sources.
    pub fn find_in<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Self> {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = current {
            if let Some(found) = e.downcast_ref::<Self>() {
                return Some(found);
            }
            current = e.source();
        }
        None
    }

    /// Whether this error means the call was rejected before reaching the downstream service
    /// (open circuit, full bulkhead, adaptive limit, rate limit): the downstream saw no load
    /// from it.
    pub fn is_rejection(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::CircuitOpen { .. }
                | ErrorKind::BulkheadFull { .. }
                | ErrorKind::ConcurrencyLimited { .. }
                | ErrorKind::RateLimited { .. }
        )
    }

    /// Whether this error means time ran out (a timeout or an overall deadline).
    pub fn is_timeout(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Timeout { .. } | ErrorKind::DeadlineExceeded { .. }
        )
    }

    /// A hint for when to try again, if the error carries one.
    pub fn retry_after(&self) -> Option<Duration> {
        match &self.kind {
            ErrorKind::CircuitOpen { retry_after, .. }
            | ErrorKind::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(source) = self.source.as_ref() {
            d.field("source", &source);
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::CircuitOpen { name, retry_after } => write!(
                f,
                "circuit breaker '{name}' is open; retry after {}ms",
                retry_after.as_millis()
            ),
            ErrorKind::BulkheadFull {
                name,
                max_concurrent,
                max_wait,
            } => write!(
                f,
                "bulkhead '{name}' is full ({max_concurrent} calls in flight, waited {}ms)",
                max_wait.as_millis()
            ),
            ErrorKind::ConcurrencyLimited { name, limit } => write!(
                f,
                "adaptive limit '{name}' reached ({limit} calls in flight): call shed"
            ),
            ErrorKind::RateLimited { name, retry_after } => write!(
                f,
                "rate limiter '{name}' has no permit; retry after {}ms",
                retry_after.as_millis()
            ),
            ErrorKind::Timeout { after } => write!(f, "timed out after {}ms", after.as_millis()),
            ErrorKind::DeadlineExceeded { after, attempts } => write!(
                f,
                "deadline of {}ms exceeded after {attempts} attempt(s)",
                after.as_millis()
            ),
            ErrorKind::RetriesExhausted { attempts } => {
                write!(f, "all {attempts} attempt(s) failed")?;
                if let Some(source) = self.source.as_ref() {
                    write!(f, "; last error: {source}")?;
                }
                Ok(())
            }
            ErrorKind::RetryBudgetExhausted { attempts } => {
                write!(f, "retry budget exhausted after {attempts} attempt(s)")
            }
            ErrorKind::RequestNotCloneable => {
                write!(
                    f,
                    "call failed and could not be retried: the request is not cloneable"
                )
            }
            ErrorKind::InvalidConfig { reason } => write!(f, "invalid configuration: {reason}"),
            ErrorKind::ComponentStart { component } => {
                write!(f, "component '{component}' failed to start")?;
                self.write_cause(f)
            }
            ErrorKind::ComponentFailed { component } => {
                write!(f, "component '{component}' failed while running")?;
                self.write_cause(f)
            }
            ErrorKind::ComponentStop { component } => {
                write!(f, "component '{component}' failed to stop")?;
                self.write_cause(f)
            }
            ErrorKind::StopTimeout { component, after } => write!(
                f,
                "component '{component}' did not stop within {}ms",
                after.as_millis()
            ),
            ErrorKind::ShutdownForced => {
                write!(f, "shutdown forced by a second stop signal")
            }
            ErrorKind::InvalidAction { component, reason } => {
                write!(f, "invalid action on '{component}': {reason}")
            }
            ErrorKind::ActionFailed { component } => {
                write!(f, "action on '{component}' failed")?;
                self.write_cause(f)
            }
        }
    }
}

impl Error {
    /// `: cause` for the lifecycle kinds, whose message is nothing without it.
    fn write_cause(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.source.as_ref() {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_round_trip_and_chain_search() {
        let err: BoxError = Box::new(Error::with_source(
            ErrorKind::RetriesExhausted { attempts: 3 },
            std::io::Error::other("boom"),
        ));
        assert!(Error::find_in(err.as_ref()).is_some());
        let err = Error::from_boxed(err).expect("a chassis error");
        assert_eq!(err.kind(), &ErrorKind::RetriesExhausted { attempts: 3 });
        assert_eq!(err.to_string(), "all 3 attempt(s) failed; last error: boom");
        assert_eq!(
            err.last_error().map(|e| e.to_string()).as_deref(),
            Some("boom")
        );
    }

    #[test]
    fn rejection_and_retry_after() {
        let err = Error::circuit_open("payments".into(), Duration::from_secs(2));
        assert!(err.is_rejection());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
        assert!(!Error::timeout(Duration::from_secs(1)).is_rejection());
        assert!(Error::timeout(Duration::from_secs(1)).is_timeout());
    }
}
