//! The per-caller rate limit (API key client or end user): the chassis keyed limiter
//! (`chassis_core::resilience::keyed_rate_limit`, GCRA), in this process's memory or, when
//! the gateway runs as several replicas, in Redis so that every replica draws on one limit per
//! caller.
//!
//! A rejection is a `chassis_core::Error` of kind `RateLimited`; the gateway answers it with
//! `ApiError::from_core`: `429 rate_limited` with `Retry-After`, `RateLimit-Policy` and
//! `RateLimit`.
//!
//! Configuration (environment, see [`RateLimitSettings::from_env`]): `GATEWAY_RATE_LIMIT`
//! (requests per second per caller, default 500), `GATEWAY_RATE_BURST` (default: the rate),
//! `GATEWAY_RATE_LIMIT_FAIL` (`open` or `closed`: what a check answers while Redis cannot,
//! default `open`), `GATEWAY_RATE_LIMIT_TIMEOUT_MS` (how long a check waits for Redis before it
//! counts as unanswered, default 50).
//!
//! # Example
//! ```
//! use shop_gateway::rate_limit::{CallerLimiter, RateLimitSettings};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limiter = CallerLimiter::memory(&RateLimitSettings::new(1, 2)).unwrap();
//! assert!(limiter.check("a").await.is_ok());
//! assert!(limiter.check("a").await.is_ok());
//! assert!(limiter.check("a").await.is_err(), "burst of 2 used up");
//! assert!(limiter.check("b").await.is_ok(), "other keys have their own limit");
//! # }
//! ```

use chassis_core::resilience::keyed_rate_limit::{
    FailMode, KeyedRateLimitConfig, KeyedRateLimiter, RateLimitBackend, RedisRateLimitConfig,
    RedisRateLimiter,
};
use chassis_core::{BoxError, Error};
use std::time::Duration;

/// The limit's name, in the `RateLimit-Policy` header and the limiter's metrics.
pub const POLICY: &str = "gateway-caller";

/// How long a check waits for Redis by default: the chassis limiter's default.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);

/// The limit every caller gets, and what to do while Redis is unavailable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimitSettings {
    /// Requests per second per caller.
    pub rate: u32,
    /// Requests a caller may make at once after a quiet spell.
    pub burst: u32,
    /// With Redis: admit (`Open`) or refuse (`Closed`) while Redis cannot answer.
    pub fail_mode: FailMode,
    /// With Redis: how long one check waits for its answer. Checks that time out count
    /// towards the limiter's circuit breaker, which then answers with `fail_mode` for a while
    /// without asking Redis.
    pub redis_timeout: Duration,
}

impl RateLimitSettings {
    /// `rate` per second with bursts of `burst`, failing open.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate,
            burst,
            fail_mode: FailMode::Open,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
        }
    }

    /// `GATEWAY_RATE_LIMIT` (default 500), `GATEWAY_RATE_BURST` (default the rate),
    /// `GATEWAY_RATE_LIMIT_FAIL` (`open`, the default, or `closed`),
    /// `GATEWAY_RATE_LIMIT_TIMEOUT_MS` (default 50).
    pub fn from_env() -> Result<Self, BoxError> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`from_env`](Self::from_env) reading its variables through `var`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, BoxError> {
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let number = |k: &str, v: String| {
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{k} must be a whole number of at least 1, not {v:?}"))
        };
        let rate = match var("GATEWAY_RATE_LIMIT") {
            Some(v) => number("GATEWAY_RATE_LIMIT", v)?,
            None => 500,
        };
        let burst = match var("GATEWAY_RATE_BURST") {
            Some(v) => number("GATEWAY_RATE_BURST", v)?,
            None => rate,
        };
        let fail_mode = match var("GATEWAY_RATE_LIMIT_FAIL").as_deref().map(str::trim) {
            None | Some("open") => FailMode::Open,
            Some("closed") => FailMode::Closed,
            Some(other) => {
                return Err(format!(
                    "GATEWAY_RATE_LIMIT_FAIL must be `open` or `closed`, not {other:?}"
                )
                .into());
            }
        };
        let redis_timeout = match var("GATEWAY_RATE_LIMIT_TIMEOUT_MS") {
            Some(v) => Duration::from_millis(number("GATEWAY_RATE_LIMIT_TIMEOUT_MS", v)?.into()),
            None => DEFAULT_REDIS_TIMEOUT,
        };
        Ok(Self {
            rate,
            burst,
            fail_mode,
            redis_timeout,
        })
    }

    fn limit(&self) -> KeyedRateLimitConfig {
        KeyedRateLimitConfig::new(POLICY)
            .rate(self.rate)
            .burst(self.burst)
    }
}

/// The limiter of the callers: in memory (one replica) or in Redis (shared by the replicas).
#[derive(Clone, Debug)]
pub enum CallerLimiter {
    /// This process's memory: each replica limits on its own.
    Memory(KeyedRateLimiter<String>),
    /// Redis: one limit per caller across every replica pointing at it.
    Redis(RedisRateLimiter),
}

impl CallerLimiter {
    /// An in-memory limiter.
    pub fn memory(settings: &RateLimitSettings) -> Result<Self, Error> {
        Ok(Self::Memory(KeyedRateLimiter::new(settings.limit())?))
    }

    /// A limiter on the Redis at `url`, its keys under `prefix`; fails when Redis does not
    /// answer within the connect timeout, so a misconfigured gateway does not start.
    pub async fn redis(
        settings: &RateLimitSettings,
        url: &str,
        prefix: &str,
    ) -> Result<Self, Error> {
        let config = RedisRateLimitConfig::new(settings.limit(), url)
            .prefix(prefix)
            .on_unavailable(settings.fail_mode)
            .timeout(settings.redis_timeout);
        Ok(Self::Redis(RedisRateLimiter::connect(config).await?))
    }

    /// Takes a permit for one request of `caller`; a `RateLimited` error when it has none.
    pub async fn check(&self, caller: &str) -> Result<(), Error> {
        match self {
            Self::Memory(limiter) => limiter.check(&caller.to_owned()),
            Self::Redis(limiter) => RateLimitBackend::check(limiter, caller).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn settings_default_and_read_their_variables() {
        let d = RateLimitSettings::from_vars(vars(&[])).unwrap();
        assert_eq!(d, RateLimitSettings::new(500, 500));
        assert_eq!(d.redis_timeout, Duration::from_millis(50));
        let s = RateLimitSettings::from_vars(vars(&[
            ("GATEWAY_RATE_LIMIT", "20"),
            ("GATEWAY_RATE_LIMIT_FAIL", "closed"),
            ("GATEWAY_RATE_LIMIT_TIMEOUT_MS", "750"),
        ]))
        .unwrap();
        assert_eq!((s.rate, s.burst, s.fail_mode), (20, 20, FailMode::Closed));
        assert_eq!(s.redis_timeout, Duration::from_millis(750));
        for bad in ["0", "soon", "-5"] {
            let err = RateLimitSettings::from_vars(vars(&[("GATEWAY_RATE_LIMIT_TIMEOUT_MS", bad)]))
                .unwrap_err()
                .to_string();
            assert!(err.contains("GATEWAY_RATE_LIMIT_TIMEOUT_MS"), "{err}");
        }
    }
}
