//! [`RedisCacheStore`]: cached responses in Redis, shared by every replica of a service.

use std::fmt;
use std::sync::Arc;

use chassis_core::resilience::circuit_breaker::CircuitBreakerHandle;
use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;

use super::store::{CacheKey, CacheStore, CachedResponse};
use crate::stored::redis::{RedisBackend, RedisStoreConfig, millis};
use crate::stored::{StoreError, StoreErrorKind};

/// The store's namespace after the configured prefix.
const NAMESPACE: &str = "cache:";

/// A [`CacheStore`] in Redis, shared by every replica: a response one replica cached is a hit
/// on the others.
///
/// A response is one string value under `prefix + "cache:" + key`, written with `SET PX` (its
/// time to live): Redis forgets it by itself. Size Redis's `maxmemory` for the responses and
/// prefer a `volatile-*` eviction policy. Every call has a timeout and goes through a circuit
/// breaker (the same connection handling as the idempotency layer's `RedisStore`); a failed
/// call is a [`StoreError`], on which the layer runs the handler as if nothing were cached.
///
/// Cheap to clone; clones share one reconnecting connection.
///
/// ```no_run
/// use chassis_http::response_cache::{RedisCacheStore, RedisStoreConfig, ResponseCacheLayer};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store =
///     RedisCacheStore::connect(RedisStoreConfig::new("redis://127.0.0.1:6379").prefix("catalog:"))
///         .await?;
/// let layer = ResponseCacheLayer::new(store);
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisCacheStore {
    backend: Arc<RedisBackend>,
}

impl fmt::Debug for RedisCacheStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCacheStore")
            .field("backend", &self.backend)
            .finish()
    }
}

impl RedisCacheStore {
    /// Validates `config` and connects to its Redis (waiting at most `connect_timeout`).
    ///
    /// Fails with [`StoreErrorKind::InvalidConfig`] for a bad configuration or URL, and with
    /// [`StoreErrorKind::Unavailable`] when Redis cannot be reached. Once connected, the
    /// connection is re-established in the background whenever it breaks.
    pub async fn connect(config: RedisStoreConfig) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Arc::new(RedisBackend::connect(config, NAMESPACE).await?),
        })
    }

    /// Builds the store on an existing connection. `config.url` is not used.
    pub fn with_connection(
        connection: ConnectionManager,
        config: RedisStoreConfig,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Arc::new(RedisBackend::with_connection(
                connection, config, NAMESPACE,
            )?),
        })
    }

    /// The circuit breaker around Redis (to read its state).
    pub fn breaker(&self) -> &CircuitBreakerHandle {
        &self.backend.breaker
    }

    /// The Redis key of `key`.
    pub fn redis_key(&self, key: &CacheKey) -> String {
        format!("{}{key}", self.backend.prefix)
    }
}

impl CacheStore for RedisCacheStore {
    fn get<'a>(
        &'a self,
        key: &'a CacheKey,
    ) -> BoxFuture<'a, Result<Option<Arc<CachedResponse>>, StoreError>> {
        Box::pin(async move {
            let redis_key = self.redis_key(key);
            let found: Option<Vec<u8>> = self
                .backend
                .call(|mut connection| async move {
                    redis::cmd("GET")
                        .arg(redis_key)
                        .query_async(&mut connection)
                        .await
                })
                .await?;
            found
                .map(|bytes| {
                    CachedResponse::decode(&bytes)
                        .map(Arc::new)
                        .ok_or_else(|| StoreError::new(StoreErrorKind::Corrupt))
                })
                .transpose()
        })
    }

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        response: &'a CachedResponse,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let redis_key = self.redis_key(key);
            let value = response.encode();
            let ttl = millis(response.ttl());
            self.backend
                .call(|mut connection| async move {
                    redis::cmd("SET")
                        .arg(redis_key)
                        .arg(value)
                        .arg("PX")
                        .arg(ttl)
                        .query_async::<()>(&mut connection)
                        .await
                })
                .await
        })
    }
}
