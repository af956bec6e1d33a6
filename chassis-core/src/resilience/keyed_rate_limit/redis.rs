//! The Redis backend: one GCRA per key in Redis, shared by every replica.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;

use super::gcra::{Gcra, Limit};
use super::{FailMode, KeyedRateLimitConfig, RateLimitBackend};
use crate::resilience::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, Outcome, SlidingWindowType,
};
use crate::{BoxError, ComponentName, Error, ErrorKind};

/// The GCRA of [`gcra`](super::gcra) in one atomic step, on Redis's clock (`TIME`), so that
/// replicas whose clocks differ still agree. Times are in microseconds; the TAT is stored as
/// an integer string with a TTL ending when the key has its full burst back, so idle keys
/// leave Redis by themselves.
///
/// KEYS[1]: the namespaced key. ARGV[1]: emission interval, ARGV[2]: tolerance (µs).
/// Returns `{admitted (0|1), retry_after_us, reset_after_us}`.
const GCRA_SCRIPT: &str = r"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat or tat < now then
  tat = now
end
local allowed_at = tat - tolerance
if allowed_at > now then
  return {0, allowed_at - now, tat - now}
end
local new_tat = tat + interval
local ttl_ms = math.max(1, math.ceil((new_tat - now) / 1000))
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', string.format('%.0f', ttl_ms))
return {1, 0, new_tat - now}
";

/// Configuration of a [`RedisRateLimiter`]. Deserializes from e.g.
///
/// ```toml
/// url = "redis://redis.internal:6379"
/// prefix = "shop:rl:"
/// timeout = "50ms"
/// on_unavailable = "open"
/// [limit]
/// name = "api-key"
/// rate = 100
/// burst = 20
/// [breaker]
/// name = "redis-rate-limit"
/// minimum_number_of_calls = 10
/// ```
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisRateLimitConfig {
    /// The limit of every key (`max_keys` does not apply: keys expire in Redis).
    pub limit: KeyedRateLimitConfig,
    /// The Redis server. Defaults to `redis://127.0.0.1:6379`.
    pub url: String,
    /// Prepended to every key, so limiters and services sharing a Redis do not collide.
    /// Defaults to `"chassis:rl:"`; make it unique per limit (e.g. `"shop:rl:api-key:"`).
    pub prefix: String,
    /// How long one check may wait for Redis before it counts as a failure and the
    /// [`FailMode`] decides. Defaults to 50 ms.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long [`RedisRateLimiter::connect`] waits for the first connection. Defaults to 5 s.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// What a check answers while Redis cannot (down, slow, or the breaker open). Defaults to
    /// [`FailMode::Open`].
    pub on_unavailable: FailMode,
    /// The circuit breaker around Redis: once it opens, checks stop waiting on Redis and answer
    /// by the [`FailMode`] at once, until a probe succeeds. Defaults to a count window of 20
    /// calls, opening at 50 % failures after 10 calls, for 5 s, with 2 probes.
    pub breaker: CircuitBreakerConfig,
}

impl Default for RedisRateLimitConfig {
    fn default() -> Self {
        Self {
            limit: KeyedRateLimitConfig::default(),
            url: "redis://127.0.0.1:6379".to_owned(),
            prefix: "chassis:rl:".to_owned(),
            timeout: Duration::from_millis(50),
            connect_timeout: Duration::from_secs(5),
            on_unavailable: FailMode::Open,
            breaker: CircuitBreakerConfig::new("redis-rate-limit")
                .sliding_window(SlidingWindowType::CountBased, 20)
                .minimum_number_of_calls(10)
                .failure_rate_threshold(50.0)
                .wait_duration_in_open_state(Duration::from_secs(5))
                .permitted_number_of_calls_in_half_open_state(2),
        }
    }
}

impl RedisRateLimitConfig {
    /// The default configuration with `limit` and the Redis at `url`.
    pub fn new(limit: KeyedRateLimitConfig, url: impl Into<String>) -> Self {
        Self {
            limit,
            url: url.into(),
            ..Self::default()
        }
    }

    crate::__builder_setters! {
        /// Sets the key prefix. Defaults to `"chassis:rl:"`.
        prefix: into String,
        /// Sets the timeout of one check. Defaults to 50 ms.
        timeout: Duration,
        /// Sets the timeout of the first connection. Defaults to 5 s.
        connect_timeout(timeout): Duration,
        /// Sets what checks answer while Redis is unavailable. Defaults to [`FailMode::Open`].
        on_unavailable(mode): FailMode,
        /// Sets the circuit breaker around Redis.
        breaker: CircuitBreakerConfig,
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), Error> {
        self.limit.validate()?;
        self.breaker.validate()?;
        if self.timeout.is_zero() {
            return Err(Error::invalid_config(format!(
                "redis rate limiter '{}': timeout must be positive",
                self.limit.name
            )));
        }
        Ok(())
    }
}

/// A rate limit per key kept in Redis, so every replica of a service draws on the same limit.
///
/// Each check is one `EVALSHA` of a Lua script running the GCRA atomically on Redis's clock,
/// under a timeout and a [circuit breaker](crate::resilience::circuit_breaker). Keys are
/// `prefix + key` and expire once they have their full burst back, so Redis holds only the keys
/// limited right now. While Redis cannot answer, the configured [`FailMode`] decides: admit
/// ([`FailMode::Open`]) or reject with [`ErrorKind::RateLimited`] whose source is the failure
/// ([`FailMode::Closed`]); a check never panics and never waits longer than the timeout.
///
/// Cheap to clone; clones share one reconnecting connection.
///
/// ```no_run
/// use chassis_core::resilience::keyed_rate_limit::{
///     FailMode, KeyedRateLimitConfig, RedisRateLimitConfig, RedisRateLimiter,
/// };
///
/// # #[tokio::main] async fn main() -> Result<(), chassis_core::Error> {
/// let config = RedisRateLimitConfig::new(
///     KeyedRateLimitConfig::new("api-key").rate(100).burst(20),
///     "redis://127.0.0.1:6379",
/// )
/// .prefix("shop:rl:api-key:")
/// .on_unavailable(FailMode::Open);
/// let limiter = RedisRateLimiter::connect(config).await?;
/// limiter.check("key-123").await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisRateLimiter {
    inner: Arc<Inner>,
}

struct Inner {
    name: ComponentName,
    gcra: Gcra,
    prefix: String,
    timeout: Duration,
    on_unavailable: FailMode,
    breaker: CircuitBreakerHandle,
    connection: ConnectionManager,
    script: redis::Script,
    rejected: metrics::Counter,
}

impl fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("name", &self.inner.name)
            .field("interval_us", &self.inner.gcra.interval)
            .field("burst", &self.inner.gcra.burst)
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("on_unavailable", &self.inner.on_unavailable)
            .field("breaker", &self.inner.breaker.state())
            .finish()
    }
}

impl RedisRateLimiter {
    /// Validates `config` and connects to its Redis (waiting at most `connect_timeout`).
    ///
    /// Fails with [`ErrorKind::InvalidConfig`] for a bad configuration or URL, and with
    /// [`ErrorKind::ComponentStart`] (the Redis error as its source) when Redis cannot be
    /// reached. Once connected, the connection is re-established in the background whenever it
    /// breaks.
    pub async fn connect(config: RedisRateLimitConfig) -> Result<Self, Error> {
        config.validate()?;
        let client = redis::Client::open(config.url.as_str()).map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig {
                    reason: format!("redis rate limiter '{}': bad url", config.limit.name),
                },
                e,
            )
        })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(config.timeout.max(Duration::from_millis(100)))
            .set_response_timeout(config.timeout)
            .set_number_of_retries(1)
            .set_max_delay(500);
        let component = || ErrorKind::ComponentStart {
            component: format!("redis rate limiter '{}'", config.limit.name),
        };
        let connection = tokio::time::timeout(
            config.connect_timeout,
            ConnectionManager::new_with_config(client, manager_config),
        )
        .await
        .map_err(|_| Error::with_source(component(), Error::timeout(config.connect_timeout)))?
        .map_err(|e| Error::with_source(component(), e))?;
        Self::with_connection(connection, config)
    }

    /// Builds the limiter on an existing connection (e.g. one a service shares between its
    /// Redis users). `config.url` is not used.
    pub fn with_connection(
        connection: ConnectionManager,
        config: RedisRateLimitConfig,
    ) -> Result<Self, Error> {
        config.validate()?;
        let Limit {
            name,
            gcra,
            rejected,
        } = Limit::new(&config.limit)?;
        let breaker = CircuitBreakerHandle::new(config.breaker)?;
        Ok(Self {
            inner: Arc::new(Inner {
                rejected,
                name,
                gcra: gcra.to_micros(),
                prefix: config.prefix,
                timeout: config.timeout,
                on_unavailable: config.on_unavailable,
                breaker,
                connection,
                script: redis::Script::new(GCRA_SCRIPT),
            }),
        })
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The circuit breaker around Redis (to read its state, or force it open for maintenance).
    pub fn breaker(&self) -> &CircuitBreakerHandle {
        &self.inner.breaker
    }

    /// The SHA-1 of the GCRA script, as `EVALSHA` names it (to preload it with `SCRIPT LOAD`
    /// or to drive it from `redis-benchmark`). Its keys: the namespaced key; its arguments: the
    /// emission interval and the tolerance, in microseconds.
    pub fn script_sha1(&self) -> &str {
        self.inner.script.get_hash()
    }

    /// The Redis key holding `key`'s state: the prefix followed by the key.
    pub fn redis_key(&self, key: impl fmt::Display) -> String {
        format!("{}{key}", self.inner.prefix)
    }

    /// Takes one permit for `key`. Fails with [`ErrorKind::RateLimited`] (the key's
    /// [`RateLimitInfo`](super::RateLimitInfo) as source) when the key is over its limit, and, with
    /// [`FailMode::Closed`], while Redis is unavailable (the failure as source).
    pub async fn check(&self, key: impl fmt::Display) -> Result<(), Error> {
        Inner::check(self.inner.clone(), self.redis_key(key)).await
    }
}

impl Inner {
    async fn check(self: Arc<Self>, redis_key: String) -> Result<(), Error> {
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(open) => return self.unavailable(open.into()),
        };
        let mut connection = self.connection.clone();
        let mut invocation = self.script.key(&redis_key);
        invocation.arg(self.gcra.interval).arg(self.gcra.tolerance);
        let reply = tokio::time::timeout(
            self.timeout,
            invocation.invoke_async::<(i64, i64, i64)>(&mut connection),
        )
        .await;
        match reply {
            Ok(Ok((admitted, retry_after, reset_after))) => {
                permit.record(Outcome::Success);
                if admitted == 1 {
                    Ok(())
                } else {
                    Err(self.rejection(retry_after, reset_after))
                }
            }
            Ok(Err(e)) => {
                permit.record(Outcome::Failure);
                // The connection's own response timeout (set to ours) may fire first: report
                // it as the same timeout.
                let cause: BoxError = if e.is_timeout() {
                    Error::with_source(
                        ErrorKind::Timeout {
                            after: self.timeout,
                        },
                        e,
                    )
                    .into()
                } else {
                    e.into()
                };
                self.unavailable(cause)
            }
            Err(_elapsed) => {
                permit.record(Outcome::Failure);
                self.unavailable(Error::timeout(self.timeout).into())
            }
        }
    }

    fn rejection(&self, retry_after_us: i64, reset_after_us: i64) -> Error {
        let micros = |us: i64| u64::try_from(us).unwrap_or(0);
        self.gcra.rejection(
            self.name,
            &self.rejected,
            1_000,
            micros(retry_after_us),
            micros(reset_after_us),
        )
    }

    /// The answer while Redis cannot give one.
    fn unavailable(&self, cause: BoxError) -> Result<(), Error> {
        match self.on_unavailable {
            FailMode::Open => {
                tracing::debug!(rate_limiter = %self.name, error = %cause, "redis unavailable: call admitted (fail open)");
                Ok(())
            }
            FailMode::Closed => {
                self.rejected.increment(1);
                tracing::debug!(rate_limiter = %self.name, error = %cause, "redis unavailable: call rejected (fail closed)");
                // An open breaker knows when it will probe again; otherwise a second is as good
                // a hint as any.
                let retry_after = Error::find_in(cause.as_ref())
                    .and_then(Error::retry_after)
                    .filter(|d| !d.is_zero())
                    .unwrap_or(Duration::from_secs(1));
                Err(Error::with_source(
                    ErrorKind::RateLimited {
                        name: self.name,
                        retry_after,
                    },
                    cause,
                ))
            }
        }
    }
}

impl<K: fmt::Display> RateLimitBackend<K> for RedisRateLimiter {
    type Future = BoxFuture<'static, Result<(), Error>>;

    fn check(&self, key: K) -> Self::Future {
        Box::pin(Inner::check(self.inner.clone(), self.redis_key(key)))
    }
}
