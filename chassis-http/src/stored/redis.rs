//! The Redis connection of the Redis stores: configuration, connecting, and every call under a
//! timeout and a circuit breaker.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use chassis_core::resilience::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, Outcome, SlidingWindowType,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;

use super::error::{StoreError, StoreErrorKind};

/// Configuration of a Redis store: the idempotency layer's `RedisStore` and the response
/// cache's `RedisCacheStore`. Deserializes from e.g.
///
/// ```toml
/// url = "redis://redis.internal:6379"
/// prefix = "orders:"
/// timeout = "200ms"
/// [breaker]
/// name = "redis-orders"
/// minimum_number_of_calls = 10
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisStoreConfig {
    /// The Redis server. Defaults to `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prepended to every key, so services sharing a Redis do not collide (each store adds a
    /// namespace of its own after it: `idem:`, `cache:`). Defaults to `"chassis:"`; make it
    /// unique per service (e.g. `"orders:"`).
    pub prefix: String,
    /// How long one call may wait for Redis before it fails (the idempotency layer answers the
    /// request 503, the response cache passes it to the handler).
    /// Defaults to 200 ms.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long connecting waits for the first connection. Defaults to 5 s.
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
            prefix: "chassis:".to_owned(),
            timeout: Duration::from_millis(200),
            connect_timeout: Duration::from_secs(5),
            breaker: CircuitBreakerConfig::new("redis-store")
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

    chassis_core::__builder_setters! {
        /// Sets the key prefix. Defaults to `"chassis:"`.
        prefix: into String,
        /// Sets the timeout of one call. Defaults to 200 ms.
        timeout: Duration,
        /// Sets the timeout of the first connection. Defaults to 5 s.
        connect_timeout: Duration,
        /// Sets the circuit breaker around Redis.
        breaker: CircuitBreakerConfig,
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

/// A reconnecting Redis connection with the timeout and the breaker every call goes through,
/// and the key prefix (the store's namespace included).
pub(crate) struct RedisBackend {
    pub(crate) prefix: String,
    pub(crate) timeout: Duration,
    pub(crate) breaker: CircuitBreakerHandle,
    connection: ConnectionManager,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Validates `config` and connects to its Redis (waiting at most `connect_timeout`); keys
    /// are `config.prefix + namespace + ...`.
    ///
    /// Fails with [`StoreErrorKind::InvalidConfig`] for a bad configuration or URL, and with
    /// [`StoreErrorKind::Unavailable`] (the Redis error as its source) when Redis cannot be
    /// reached. Once connected, the connection is re-established in the background whenever it
    /// breaks.
    pub(crate) async fn connect(
        config: RedisStoreConfig,
        namespace: &str,
    ) -> Result<Self, StoreError> {
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
        Self::with_connection(connection, config, namespace)
    }

    /// The backend on an existing connection. `config.url` is not used.
    pub(crate) fn with_connection(
        connection: ConnectionManager,
        config: RedisStoreConfig,
        namespace: &str,
    ) -> Result<Self, StoreError> {
        config.validate()?;
        let breaker = CircuitBreakerHandle::new(config.breaker)
            .map_err(|e| invalid("breaker rejected", e))?;
        Ok(Self {
            prefix: format!("{}{namespace}", config.prefix),
            timeout: config.timeout,
            breaker,
            connection,
        })
    }

    /// Runs the command `call` makes on a clone of the connection, under the breaker and the
    /// timeout.
    pub(crate) async fn call<T, F, Fut>(&self, call: F) -> Result<T, StoreError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let permit = self.breaker.try_acquire().map_err(|open| {
            StoreError::with_source(StoreErrorKind::Unavailable { store: "redis" }, open)
        })?;
        let reply = tokio::time::timeout(self.timeout, call(self.connection.clone())).await;
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
                        after: self.timeout,
                    }
                } else {
                    StoreErrorKind::Unavailable { store: "redis" }
                };
                Err(StoreError::with_source(kind, e))
            }
            Err(_elapsed) => {
                permit.record(Outcome::Failure);
                Err(StoreError::new(StoreErrorKind::Timeout {
                    after: self.timeout,
                }))
            }
        }
    }
}

/// Milliseconds for `PX`: at least 1 (Redis refuses 0).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
