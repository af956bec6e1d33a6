//! Rate limits per key (API key, tenant, client address), in memory or shared through Redis.
//!
//! A [`KeyedRateLimitLayer`] takes a key out of each request with a closure and asks a
//! [`RateLimitBackend`] whether that key may make another call. Each key has its own limit of
//! `rate` calls per `period` with bursts of up to `burst`, kept by the generic cell rate
//! algorithm (GCRA: one "theoretical arrival time" per key, as in governor, redis-cell and
//! go-redis's `redis_rate`). A rejected call fails with a [`chassis_core::Error`](crate::Error)
//! of kind [`ErrorKind::RateLimited`](crate::ErrorKind::RateLimited) whose `retry_after` says when
//! the key's next call will be admitted, and whose source is a [`RateLimitInfo`] (the quota
//! behind the IETF `RateLimit-Policy` and `RateLimit` header fields, which chassis-http sends).
//!
//! Two backends share the trait, so a service swaps one for the other in its configuration:
//!
//! - [`KeyedRateLimiter`]: in process memory, sharded, one short critical section per check,
//!   with idle keys evicted so memory stays bounded under millions of distinct keys. Each
//!   replica of a service keeps its own limits: N replicas admit N times the rate.
//! - `RedisRateLimiter` (feature `redis`): the same GCRA in one atomic Lua script on a Redis
//!   shared by every replica, so the limit holds across them; each call has a timeout and goes
//!   through a circuit breaker, and a configured [`FailMode`] decides what happens while Redis
//!   is unreachable.
//!
//! # Example
//!
//! ```
//! use chassis_core::resilience::keyed_rate_limit::{
//!     KeyedRateLimitConfig, KeyedRateLimitLayer, KeyedRateLimiter, RateLimitInfo,
//! };
//! use chassis_core::{BoxError, Error, ErrorKind};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Per API key: 5 calls per second, bursts of 2.
//! let limiter = KeyedRateLimiter::new(KeyedRateLimitConfig::new("api").rate(5).burst(2)).unwrap();
//! let layer = KeyedRateLimitLayer::new(limiter, |req: &(&str, u32)| req.0.to_owned());
//! let svc = layer.layer(service_fn(|req: (&str, u32)| async move { Ok::<_, BoxError>(req.1) }));
//!
//! assert_eq!(svc.clone().oneshot(("alice", 1)).await.unwrap(), 1);
//! assert_eq!(svc.clone().oneshot(("alice", 2)).await.unwrap(), 2);
//! let err = Error::from_boxed(svc.clone().oneshot(("alice", 3)).await.unwrap_err()).unwrap();
//! assert!(matches!(err.kind(), ErrorKind::RateLimited { .. }));
//! let info = RateLimitInfo::of(&err).expect("the quota travels with the rejection");
//! assert_eq!((info.limit, info.remaining), (2, 0));
//! // Another key has its own limit.
//! assert_eq!(svc.oneshot(("bob", 4)).await.unwrap(), 4);
//! # }
//! ```
//!
//! # Choosing a backend
//!
//! The in-memory limiter costs tens of nanoseconds per check and never fails; the Redis one
//! costs a round trip (a fraction of a millisecond on a local network) and can be unavailable.
//! Use Redis when the limit is a contract with a client (a paid quota per API key) that must
//! hold however many replicas serve it; keep the in-memory one for protecting a replica from
//! overload, where a per-replica limit is what is wanted.

mod future;
mod gcra;
mod layer;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod service;

use std::fmt;
use std::future::Future;
use std::time::Duration;

use serde::Deserialize;

use super::rate_limiter;
use crate::Error;

pub use self::future::ResponseFuture;
pub use self::layer::KeyedRateLimitLayer;
pub use self::memory::{KeyedRateLimiter, KeyedRateLimiterStats};
#[cfg(feature = "redis")]
pub use self::redis::{RedisRateLimitConfig, RedisRateLimiter};
pub use self::service::KeyedRateLimit;

/// The limit every key gets. Deserializes from e.g.
/// `{ name = "api", rate = 100, period = "1s", burst = 20, max_keys = 100000 }`.
///
/// ```
/// use chassis_core::resilience::keyed_rate_limit::KeyedRateLimitConfig;
/// use std::time::Duration;
///
/// let from_file: KeyedRateLimitConfig =
///     toml::from_str("name = \"api\"\nrate = 10\nperiod = \"1m\"\nburst = 3").unwrap();
/// let from_code = KeyedRateLimitConfig::new("api").rate(10).period(Duration::from_secs(60)).burst(3);
/// assert_eq!(from_file, from_code);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyedRateLimitConfig {
    /// Name used in errors, metrics and the `RateLimit-Policy` header. Defaults to `"default"`.
    pub name: String,
    /// Calls admitted per `period` and key on average. Defaults to 100; must be at least 1.
    pub rate: u32,
    /// The period `rate` refers to. Defaults to one second.
    #[serde(with = "humantime_serde")]
    pub period: Duration,
    /// Calls a key may make at once after a quiet spell. Defaults to `rate` when zero (the
    /// default).
    pub burst: u32,
    /// Keys the in-memory limiter remembers at most (the Redis backend ignores it: its keys
    /// expire in Redis). Defaults to 100,000. Idle keys are forgotten first; see
    /// [`KeyedRateLimiter`] for the memory this bounds.
    pub max_keys: usize,
}

impl Default for KeyedRateLimitConfig {
    /// The defaults of [`RateLimiterConfig`](rate_limiter::RateLimiterConfig), for each key.
    fn default() -> Self {
        let rate_limiter::RateLimiterConfig {
            name,
            rate,
            period,
            burst,
            ..
        } = rate_limiter::RateLimiterConfig::default();
        Self {
            name,
            rate,
            period,
            burst,
            max_keys: 100_000,
        }
    }
}

impl KeyedRateLimitConfig {
    crate::__named_config_new!();

    crate::__builder_setters! {
        /// Sets the calls admitted per period and key. Defaults to 100.
        rate: u32,
        /// Sets the period of `rate`. Defaults to one second.
        period: Duration,
        /// Sets the burst size. Defaults to `rate`.
        burst: u32,
        /// Sets how many keys the in-memory limiter remembers at most. Defaults to 100,000.
        max_keys: usize,
    }

    pub(crate) fn effective_burst(&self) -> u32 {
        rate_limiter::effective_burst(self.rate, self.burst)
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), Error> {
        let problem = rate_limiter::rate_problem(self.rate, self.period)
            .or((self.max_keys == 0).then_some("max_keys must be at least 1"));
        match problem {
            Some(why) => Err(Error::invalid_config(format!(
                "keyed rate limiter '{}': {why}",
                self.name
            ))),
            None => Ok(()),
        }
    }
}

/// The quota of one key as a limiter saw it when it rejected a call: the numbers of the IETF
/// `RateLimit-Policy` (`"name";q=limit;w=window`) and `RateLimit` (`"name";r=remaining;t=reset`)
/// header fields (draft-ietf-httpapi-ratelimit-headers).
///
/// It is the [`source`](std::error::Error::source) of the [`ErrorKind::RateLimited`](crate::ErrorKind::RateLimited)
/// error a keyed limiter rejects with; [`RateLimitInfo::of`] finds it. The policy's name is the
/// limiter's, in the error kind (not repeated here, so a rejection costs one reference count
/// on the shared name, not two). [`Error::rate_limited`] holds it inline in the error, so
/// rejecting allocates nothing; a backend of one's own builds its rejections with it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// Quota units (calls) a key has at most: the burst.
    pub limit: u32,
    /// The time in which a drained key earns `limit` calls back (`burst / rate * period`).
    pub window: Duration,
    /// Calls the key may still make now (zero when a call was just rejected).
    pub remaining: u32,
    /// Time until the key has its full `limit` again.
    pub reset_after: Duration,
}

impl RateLimitInfo {
    /// The quota carried by a keyed limiter's rejection, if `err` is one.
    pub fn of(err: &Error) -> Option<&Self> {
        err.last_error()?.downcast_ref::<Self>()
    }
}

impl fmt::Display for RateLimitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "quota of {} calls per {}ms spent; full again in {}ms",
            self.limit,
            self.window.as_millis(),
            self.reset_after.as_millis()
        )
    }
}

impl std::error::Error for RateLimitInfo {}

/// What a keyed limiter does while its store cannot answer (Redis unreachable, too slow, or its
/// circuit breaker open).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailMode {
    /// Admit the call: an outage of the limiter's store does not become an outage of the
    /// service (the default; right when the limit protects against abuse rather than enforcing
    /// a contract).
    #[default]
    Open,
    /// Reject the call with [`ErrorKind::RateLimited`](crate::ErrorKind::RateLimited), the
    /// store's failure as its source: right when exceeding the limit costs more than refusing
    /// service for a while.
    Closed,
}

/// A keyed rate limiter behind [`KeyedRateLimitLayer`]: the in-memory [`KeyedRateLimiter`] or
/// the Redis-backed `RedisRateLimiter` (feature `redis`).
///
/// `check` takes one call's permit for `key`: `Ok(())` admits it; a rejection is an
/// [`Error`] of kind [`ErrorKind::RateLimited`](crate::ErrorKind::RateLimited) with the time
/// until the key's next permit and, as its source, the [`RateLimitInfo`] (or the store's
/// failure, for a backend failing closed).
pub trait RateLimitBackend<K> {
    /// The decision, as a future (a ready one for the in-memory limiter).
    type Future: Future<Output = Result<(), Error>> + Send + 'static;

    /// Takes a permit for one call of `key`.
    fn check(&self, key: K) -> Self::Future;
}

/// Takes the rate-limit key out of a request.
///
/// Closures `Fn(&Req) -> K` implement it:
///
/// ```
/// use chassis_core::resilience::keyed_rate_limit::KeyExtractor;
///
/// let by_tenant = |req: &(u32, String)| req.0;
/// assert_eq!(by_tenant.extract(&(7, "GET /".to_owned())), 7);
/// ```
pub trait KeyExtractor<Req> {
    /// The key type.
    type Key;

    /// The key of `req`.
    fn extract(&self, req: &Req) -> Self::Key;
}

impl<F, Req, K> KeyExtractor<Req> for F
where
    F: Fn(&Req) -> K,
{
    type Key = K;

    fn extract(&self, req: &Req) -> K {
        self(req)
    }
}
