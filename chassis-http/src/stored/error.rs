//! [`StoreError`]: how a store of kept responses fails.

use std::fmt;
use std::time::Duration;

/// What went wrong in a store of kept responses (an
/// [`IdempotencyStore`](crate::idempotency::IdempotencyStore) or a
/// [`CacheStore`](crate::response_cache::CacheStore)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreErrorKind {
    /// The store could not be reached or refused the command (the cause is the source); also
    /// while the circuit breaker around it is open.
    Unavailable {
        /// Which store (`"redis"`, `"memory"`).
        store: &'static str,
    },
    /// The store did not answer within `after`.
    Timeout {
        /// The time allowed for one call.
        after: Duration,
    },
    /// Every entry of a bounded store holds an in-flight request; no key can be taken until
    /// one completes or expires.
    Full {
        /// The bound.
        max_entries: usize,
    },
    /// A stored value could not be read back (written by something else under the key).
    Corrupt,
    /// A configuration value was rejected.
    InvalidConfig {
        /// What is wrong with it.
        reason: String,
    },
}

impl fmt::Display for StoreErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable { store } => write!(f, "store ({store}) unavailable"),
            Self::Timeout { after } => {
                write!(f, "store did not answer within {}ms", after.as_millis())
            }
            Self::Full { max_entries } => write!(
                f,
                "store full: all {max_entries} entries are requests in flight"
            ),
            Self::Corrupt => write!(f, "store holds a value it cannot read"),
            Self::InvalidConfig { reason } => {
                write!(f, "invalid store configuration: {reason}")
            }
        }
    }
}

chassis_core::__define_error! {
    /// The error of a store of kept responses. The idempotency layer answers it `503
    /// idempotency_store_unavailable` with a `Retry-After` (the breaker's, when it is open),
    /// never running the request without its key; the response cache passes the request to
    /// its handler, as if nothing were cached.
    pub struct StoreError(StoreErrorKind);
    display = kind_and_source;
}

impl StoreError {
    /// When to try again: the open breaker's wait if the store's breaker rejected the call,
    /// else one second.
    pub fn retry_after(&self) -> Duration {
        self.source
            .as_deref()
            .and_then(|source| {
                chassis_core::Error::find_in(source as &(dyn std::error::Error + 'static))
            })
            .and_then(chassis_core::Error::retry_after)
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(1))
    }
}
