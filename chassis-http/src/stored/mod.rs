//! What the layers that keep responses share ([`idempotency`](crate::idempotency) and
//! [`response_cache`](crate::response_cache)): reading a response body up to a limit, the header
//! fields worth keeping, the byte layout of a kept response, the bounded expiring map of the in-memory stores, the store error, and the Redis connection under a timeout and a circuit breaker.

mod body;
pub(crate) mod codec;
mod error;
mod expiring;
mod headers;
mod layer;
mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

pub(crate) use self::body::{Read, read_response};
pub use self::error::{StoreError, StoreErrorKind};
pub(crate) use self::expiring::{ExpiringMap, Held};
pub(crate) use self::headers::storable_headers;
pub(crate) use self::layer::{invalid_config, parse_all, settings_layer};
pub(crate) use self::memory::memory_store;
pub use crate::future::ResponseFuture;
