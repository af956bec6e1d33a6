//! [`RedisStore`]: keys and responses in Redis, shared by every replica of a service.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chassis_core::resilience::circuit_breaker::CircuitBreakerHandle;
use futures_util::future::BoxFuture;
use redis::aio::ConnectionManager;

use super::store::{
    Begin, Fingerprint, IdempotencyStore, Lock, StoreError, StoreErrorKind, StoreKey,
    StoredResponse,
};
pub use crate::stored::redis::RedisStoreConfig;
use crate::stored::redis::{RedisBackend, millis};

/// The store's namespace after the configured prefix.
const NAMESPACE: &str = "idem:";

/// The lock: `SET NX PX`, and when the key is taken, its value, in one atomic step.
///
/// KEYS[1]: the key. ARGV[1]: the encoded lock, ARGV[2]: its time to live (ms).
/// Returns nil when the lock was taken, else the key's value.
const BEGIN_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return false
end
return redis.call('GET', KEYS[1])
";

/// Replaces the caller's lock with the response. ARGV[1]: the lock, ARGV[2]: the encoded
/// response, ARGV[3]: its time to live (ms). Returns 1, or 0 if the key no longer holds the lock.
const COMPLETE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
";

/// Deletes the key if it holds the caller's lock. ARGV[1]: the lock. Returns 1 or 0.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// An [`IdempotencyStore`] in Redis, shared by every replica, so a retry that reaches another
/// replica replays the response of the first.
///
/// A key is `prefix + "idem:" + scope + key` ([`StoreKey`]'s `Display`). [`begin`](IdempotencyStore::begin)
/// takes the lock with `SET NX PX` (the lock expires after the layer's lock time to live, so a
/// replica that dies mid-request frees its keys); completing and releasing compare the lock's
/// random token first, in a Lua script, so a holder whose lock expired touches nothing. A
/// stored response is one string value with the layer's time to live: Redis forgets it by
/// itself. Size Redis's `maxmemory` for the responses (at most the layer's
/// `max_response_bytes` each) and prefer a `volatile-*` eviction policy.
///
/// Every call has a timeout and goes through a circuit breaker; a call that fails, times out or
/// meets an open breaker is a [`StoreError`] (the layer answers it 503), never a panic or a wait
/// longer than the timeout.
///
/// Cheap to clone; clones share one reconnecting connection.
///
/// ```no_run
/// use chassis_http::idempotency::{IdempotencyLayer, RedisStore, RedisStoreConfig};
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect(
///     RedisStoreConfig::new("redis://127.0.0.1:6379").prefix("orders:"),
/// )
/// .await?;
/// let layer = IdempotencyLayer::new(store);
/// # let _ = layer; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    backend: RedisBackend,
    begin: redis::Script,
    complete: redis::Script,
    release: redis::Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("backend", &self.inner.backend)
            .finish()
    }
}

impl RedisStore {
    /// Validates `config` and connects to its Redis (waiting at most `connect_timeout`).
    ///
    /// Fails with [`StoreErrorKind::InvalidConfig`] for a bad configuration or URL, and with
    /// [`StoreErrorKind::Unavailable`] (the Redis error as its source) when Redis cannot be
    /// reached. Once connected, the connection is re-established in the background whenever it
    /// breaks.
    pub async fn connect(config: RedisStoreConfig) -> Result<Self, StoreError> {
        Ok(Self::with_backend(
            RedisBackend::connect(config, NAMESPACE).await?,
        ))
    }

    /// Builds the store on an existing connection (e.g. one a service shares between its Redis
    /// users). `config.url` is not used.
    pub fn with_connection(
        connection: ConnectionManager,
        config: RedisStoreConfig,
    ) -> Result<Self, StoreError> {
        Ok(Self::with_backend(RedisBackend::with_connection(
            connection, config, NAMESPACE,
        )?))
    }

    fn with_backend(backend: RedisBackend) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                begin: redis::Script::new(BEGIN_SCRIPT),
                complete: redis::Script::new(COMPLETE_SCRIPT),
                release: redis::Script::new(RELEASE_SCRIPT),
            }),
        }
    }

    /// The circuit breaker around Redis (to read its state).
    pub fn breaker(&self) -> &CircuitBreakerHandle {
        &self.inner.backend.breaker
    }

    /// The Redis key of `key`: the prefix followed by the scoped key.
    pub fn redis_key(&self, key: &StoreKey) -> String {
        format!("{}{key}", self.inner.backend.prefix)
    }

    /// Runs `invocation` under the breaker and the timeout.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        self.inner
            .backend
            .call(
                |mut connection| async move { invocation.invoke_async::<T>(&mut connection).await },
            )
            .await
    }
}

impl IdempotencyStore for RedisStore {
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lock_ttl: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>> {
        Box::pin(async move {
            let lock = Lock::new(*fingerprint);
            let mut invocation = self.inner.begin.key(self.redis_key(key));
            invocation.arg(lock.encode()).arg(millis(lock_ttl));
            let found: Option<Vec<u8>> = self.invoke(invocation).await?;
            let Some(value) = found else {
                return Ok(Begin::Acquired(lock));
            };
            if let Some(held) = Lock::decode(&value) {
                return Ok(Begin::InFlight {
                    fingerprint: *held.fingerprint(),
                });
            }
            StoredResponse::decode(&value)
                .map(|response| Begin::Completed(Arc::new(response)))
                .ok_or_else(|| StoreError::new(StoreErrorKind::Corrupt))
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        lock: &'a Lock,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.inner.complete.key(self.redis_key(key));
            invocation
                .arg(lock.encode())
                .arg(response.encode())
                .arg(millis(ttl));
            let done: i64 = self.invoke(invocation).await?;
            Ok(done == 1)
        })
    }

    fn release<'a>(
        &'a self,
        key: &'a StoreKey,
        lock: &'a Lock,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let mut invocation = self.inner.release.key(self.redis_key(key));
            invocation.arg(lock.encode());
            let done: i64 = self.invoke(invocation).await?;
            Ok(done == 1)
        })
    }
}
