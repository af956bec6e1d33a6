//! The one error type of `chassis-messaging`.
//!
//! Every fallible operation of the crate (connecting, declaring topology, publishing, decoding a
//! delivery, the outbox and inbox stores) fails with [`Error`]: an opaque struct whose
//! [`ErrorKind`] says what happened and carries what a caller needs to act on it (which exchange
//! and routing key were unroutable, which operation timed out and after how long). The error
//! that caused it, when there is one (a lapin or sqlx error), is the
//! [`std::error::Error::source`].
//!
//! ```
//! use chassis_messaging::error::{Error, ErrorKind};
//!
//! let err = Error::unroutable("shop.events", "order.placed");
//! assert!(matches!(err.kind(), ErrorKind::Unroutable { exchange, .. } if exchange == "shop.events"));
//! assert_eq!(
//!     err.to_string(),
//!     "message to exchange 'shop.events' with routing key 'order.placed' was unroutable"
//! );
//! ```

use std::fmt;
use std::time::Duration;

/// A type-erased error, the source of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The connection or channel to the broker failed, is not (yet) open or was lost while
    /// the operation was in flight. Retrying later may succeed.
    Connection,
    /// A broker (or store) operation did not complete within its deadline.
    Timeout {
        /// What was being done, e.g. `"publish confirm"`, `"connect"`, `"queue.declare"`.
        operation: &'static str,
        /// The deadline that elapsed.
        after: Duration,
    },
    /// The broker negatively acknowledged a published message (it did not take responsibility
    /// for it). Publishing again may succeed.
    Nacked,
    /// A `mandatory` message could not be routed to any queue and was returned by the broker.
    Unroutable {
        /// Exchange the message was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
    },
    /// A delivery could not be decoded (not valid JSON, wrong payload shape, bad header type).
    Decode {
        /// Why.
        reason: String,
    },
    /// A delivery decoded but is not a valid event (missing or wrong CloudEvents attribute).
    Validation {
        /// Why.
        reason: String,
    },
    /// A valid event whose payload version this reader does not know (neither its own nor
    /// one it upcasts from); see [`version`](crate::version).
    UnsupportedVersion {
        /// The event's CloudEvents `type`.
        event_type: String,
        /// The version it carries.
        version: u32,
        /// The versions this reader accepts, ascending.
        readable: Vec<u32>,
    },
    /// Declaring or binding exchanges and queues failed (or the topology config is invalid).
    Topology,
    /// The outbox/inbox database failed.
    Database,
    /// A payload could not be serialized.
    Serialization,
    /// The component is shutting down or was closed; the operation was not performed.
    Shutdown,
    /// A configuration value was rejected.
    InvalidConfig {
        /// What is wrong with it.
        reason: String,
    },
}

chassis_core::__define_error! {
    /// The error of every `chassis-messaging` operation: an [`ErrorKind`] plus, where there is
    /// one, the underlying error as its source.
    pub struct Error(ErrorKind);
    display = kind_and_source;
}

impl Error {
    /// Shorthand for [`ErrorKind::Connection`] caused by `source`.
    pub fn connection(source: impl Into<BoxError>) -> Self {
        Self::with_source(ErrorKind::Connection, source)
    }

    /// Shorthand for [`ErrorKind::Timeout`].
    pub fn timeout(operation: &'static str, after: Duration) -> Self {
        Self::new(ErrorKind::Timeout { operation, after })
    }

    /// Shorthand for [`ErrorKind::Unroutable`].
    pub fn unroutable(exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unroutable {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        })
    }

    /// Shorthand for [`ErrorKind::Decode`].
    pub fn decode(reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::Decode {
            reason: reason.into(),
        })
    }

    /// Shorthand for [`ErrorKind::Validation`].
    pub fn validation(reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::Validation {
            reason: reason.into(),
        })
    }

    /// Shorthand for [`ErrorKind::InvalidConfig`].
    pub fn invalid_config(reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidConfig {
            reason: reason.into(),
        })
    }

    /// Shorthand for [`ErrorKind::Shutdown`].
    pub fn shutdown() -> Self {
        Self::new(ErrorKind::Shutdown)
    }

    /// Takes the underlying error out.
    pub fn into_source(self) -> Option<BoxError> {
        self.source
    }

    /// Whether trying the same operation again later may succeed (connection loss, timeouts,
    /// nacks, a database hiccup). Unroutable, undecodable and invalid messages and bad
    /// configuration fail the same way every time.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Connection
                | ErrorKind::Timeout { .. }
                | ErrorKind::Nacked
                | ErrorKind::Database
        )
    }
}

/// The message of an [`Error`] without its source.
impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connection => f.write_str("broker connection failed"),
            Self::Timeout { operation, after } => {
                write!(f, "{operation} timed out after {}ms", after.as_millis())
            }
            Self::Nacked => f.write_str("the broker nacked the message"),
            Self::Unroutable {
                exchange,
                routing_key,
            } => write!(
                f,
                "message to exchange '{exchange}' with routing key '{routing_key}' was unroutable"
            ),
            Self::Decode { reason } => write!(f, "cannot decode message: {reason}"),
            Self::Validation { reason } => write!(f, "invalid message: {reason}"),
            Self::UnsupportedVersion {
                event_type,
                version,
                readable,
            } => write!(
                f,
                "unsupported event version: {event_type} version {version}, this consumer reads versions {readable:?}"
            ),
            Self::Topology => f.write_str("declaring the broker topology failed"),
            Self::Database => f.write_str("database operation failed"),
            Self::Serialization => f.write_str("cannot serialize payload"),
            Self::Shutdown => f.write_str("shutting down"),
            Self::InvalidConfig { reason } => write!(f, "invalid configuration: {reason}"),
        }
    }
}

impl From<serde_json::Error> for Error {
    fn from(err: serde_json::Error) -> Self {
        Self::with_source(ErrorKind::Serialization, err)
    }
}

/// A `Result` with [`Error`] as the error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_includes_source_and_kind_fields() {
        let err = Error::timeout("publish confirm", Duration::from_millis(1500));
        assert_eq!(err.to_string(), "publish confirm timed out after 1500ms");
        assert!(err.is_transient());
        let err = Error::connection(std::io::Error::other("reset"));
        assert_eq!(err.to_string(), "broker connection failed: reset");
        assert!(std::error::Error::source(&err).is_some());
        assert!(!Error::decode("bad json").is_transient());
    }
}
