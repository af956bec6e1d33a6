//! A token bucket per API key: `rate` requests per second with bursts up to `burst`.
//!
//! The chassis rate limiter meters one downstream; a gateway needs one bucket per caller, so this
//! keyed map sits in front of the handlers. Refill is computed lazily from elapsed (tokio) time,
//! so it is tested with the paused clock.
//!
//! # Example
//! ```
//! use shop_gateway::rate_limit::KeyedRateLimiter;
//!
//! let limiter = KeyedRateLimiter::new(1.0, 2);
//! assert!(limiter.check("a").is_ok());
//! assert!(limiter.check("a").is_ok());
//! assert!(limiter.check("a").is_err(), "burst of 2 used up");
//! assert!(limiter.check("b").is_ok(), "other keys have their own bucket");
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets by key.
#[derive(Debug)]
pub struct KeyedRateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl KeyedRateLimiter {
    /// `rate` tokens per second, at most `burst` stored.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate: rate.max(0.001),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`; `Err(retry_after)` when the bucket is empty.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.updated = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refills_at_the_configured_rate() {
        let l = KeyedRateLimiter::new(10.0, 5);
        for _ in 0..5 {
            l.check("k").unwrap();
        }
        let wait = l.check("k").unwrap_err();
        assert!(
            wait > Duration::from_millis(90) && wait <= Duration::from_millis(100),
            "{wait:?}"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        l.check("k").unwrap();
        assert!(l.check("k").is_err());
        // A long pause refills to the burst, not beyond.
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..5 {
            l.check("k").unwrap();
        }
        assert!(l.check("k").is_err());
    }
}
