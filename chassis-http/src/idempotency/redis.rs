//! [`RedisStore`]: keys and responses in Redis, shared by every replica of a service.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chassis_core::resilience::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, Outcome, SlidingWindowType,
};
use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;

use super::store::{
    Begin, Fingerprint, IdempotencyStore, Lock, StoreError, StoreErrorKind, StoreKey,
    StoredResponse,
};

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

/// Configuration of a [`RedisStore`]. Deserializes from e.g.
///
/// ```toml
/// url = "redis://redis.internal:6379"
/// prefix = "orders:idem:"
/// timeout = "200ms"
/// [breaker]
/// name = "redis-idempotency"
/// minimum_number_of_calls = 10
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisStoreConfig {
    /// The Redis server. Defaults to `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prepended to every key, so services sharing a Redis do not collide. Defaults to
    /// `"chassis:idem:"`; make it unique per service (e.g. `"orders:idem:"`).
    pub prefix: String,
    /// How long one call may wait for Redis before it fails (and the request is answered 503).
    /// Defaults to 200 ms.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long [`RedisStore::connect`] waits for the first connection. Defaults to 5 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// The circuit breaker around Redis: once it opens, calls fail at once instead of waiting
    /// for their timeout, until a probe succeeds. Defaults to a count window of 20 calls,
    /// opening at 50 % failures after 10 calls, for 5 s, with 2 probes.
    pub breaker: CircuitBreakerConfig,
}

impl Default for RedisStoreConfig {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: "chassis:idem:".to_owned(),
            timeout: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(5),
            breaker: CircuitBreakerConfig::new("redis-idempotency")
                .sliding_window(SlidingWindowType::CountBased, 20)
                .minimum_number_of_calls(10)
                .failure_rate_threshold(50.0)
                .wait_duration_in_open_state(Duration::from_secs(5))
                .permitted_number_of_calls_in_half_open_state(2),
        }
    }
}

impl RedisStoreConfig {
    /// The default configuration with the Redis at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ..Self::default()
        }
    }

    /// Sets the key prefix. Defaults to `"chassis:idem:"`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the timeout of one call. Defaults to 200 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the timeout of the first connection. Defaults to 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets the circuit breaker around Redis.
    pub fn breaker(mut self, breaker: CircuitBreakerConfig) -> Self {
        self.breaker = breaker;
        self
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), StoreError> {
        self.breaker
            .validate()
            .map_err(|e| invalid("breaker rejected", e))?;
        if self.timeout.is_zero() {
            return Err(StoreError::new(StoreErrorKind::InvalidConfig {
                reason: "timeout must be positive".to_owned(),
            }));
        }
        Ok(())
    }
}

fn invalid(reason: &str, source: impl Into<chassis_core::BoxError>) -> StoreError {
    StoreError::with_source(
        StoreErrorKind::InvalidConfig {
            reason: reason.to_owned(),
        },
        source,
    )
}

/// An [`IdempotencyStore`] in Redis, shared by every replica, so a retry that reaches another
/// replica replays the response of the first.
///
/// A key is `prefix + scope + key` ([`StoreKey`]'s `Display`). [`begin`](IdempotencyStore::begin)
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
///     RedisStoreConfig::new("redis://127.0.0.1:6379").prefix("orders:idem:"),
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
    prefix: String,
    timeout: Duration,
    breaker: CircuitBreakerHandle,
    connection: ConnectionManager,
    begin: redis::Script,
    complete: redis::Script,
    release: redis::Script,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("breaker", &self.inner.breaker.state())
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
        config.validate()?;
        let client =
            redis::Client::open(config.url.as_str()).map_err(|e| invalid("bad redis url", e))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(config.timeout.max(Duration::from_millis(100)))
            .set_response_timeout(config.timeout)
            .set_number_of_retries(1)
            .set_max_delay(500);
        let unavailable = || StoreErrorKind::Unavailable { store: "redis" };
        let connection = tokio::time::timeout(
            config.connect_timeout,
            ConnectionManager::new_with_config(client, manager_config),
        )
        .await
        .map_err(|_| {
            StoreError::new(StoreErrorKind::Timeout {
                after: config.connect_timeout,
            })
        })?
        .map_err(|e| StoreError::with_source(unavailable(), e))?;
        Self::with_connection(connection, config)
    }

    /// Builds the store on an existing connection (e.g. one a service shares between its Redis
    /// users). `config.url` is not used.
    pub fn with_connection(
        connection: ConnectionManager,
        config: RedisStoreConfig,
    ) -> Result<Self, StoreError> {
        config.validate()?;
        let breaker = CircuitBreakerHandle::new(config.breaker)
            .map_err(|e| invalid("breaker rejected", e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                prefix: config.prefix,
                timeout: config.timeout,
                breaker,
                connection,
                begin: redis::Script::new(BEGIN_SCRIPT),
                complete: redis::Script::new(COMPLETE_SCRIPT),
                release: redis::Script::new(RELEASE_SCRIPT),
            }),
        })
    }

    /// The circuit breaker around Redis (to read its state).
    pub fn breaker(&self) -> &CircuitBreakerHandle {
        &self.inner.breaker
    }

    /// The Redis key of `key`: the prefix followed by the scoped key.
    pub fn redis_key(&self, key: &StoreKey) -> String {
        format!("{}{key}", self.inner.prefix)
    }

    /// Runs `invocation` under the breaker and the timeout.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let inner = &self.inner;
        let permit = inner.breaker.try_acquire().map_err(|open| {
            StoreError::with_source(StoreErrorKind::Unavailable { store: "redis" }, open)
        })?;
        let mut connection = inner.connection.clone();
        let reply =
            tokio::time::timeout(inner.timeout, invocation.invoke_async::<T>(&mut connection))
                .await;
        match reply {
            Ok(Ok(value)) => {
                permit.record(Outcome::Success);
                Ok(value)
            }
            Ok(Err(e)) => {
                permit.record(Outcome::Failure);
                // The connection's own response timeout (set to ours) may fire first: report it
                // as the same timeout.
                let kind = if e.is_timeout() {
                    StoreErrorKind::Timeout {
                        after: inner.timeout,
                    }
                } else {
                    StoreErrorKind::Unavailable { store: "redis" }
                };
                Err(StoreError::with_source(kind, e))
            }
            Err(_elapsed) => {
                permit.record(Outcome::Failure);
                Err(StoreError::new(StoreErrorKind::Timeout {
                    after: inner.timeout,
                }))
            }
        }
    }
}

/// Milliseconds for `PX`: at least 1 (Redis refuses 0).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
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
