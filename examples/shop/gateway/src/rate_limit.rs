//! A token bucket per caller (API key client or end user): `rate` requests per second with
//! bursts up to `burst`.
//!
//! The chassis rate limiter meters one downstream; a gateway needs one bucket per caller, so this
//! keyed map sits in front of the handlers. Refill is computed lazily from elapsed (tokio) time,
//! so it is tested with the paused clock. End users make the set of keys open-ended: once the
//! map holds [`PRUNE_AT`] buckets, the full ones (idle long enough to refill, so no different
//! from a new bucket) are dropped, and the next pruning waits until the map has doubled.
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
    state: Mutex<State>,
}

/// Buckets held before idle ones are dropped.
pub const PRUNE_AT: usize = 4096;

#[derive(Debug)]
struct State {
    buckets: HashMap<String, Bucket>,
    /// Prune when the map reaches this many buckets.
    prune_at: usize,
}

impl KeyedRateLimiter {
    /// `rate` tokens per second, at most `burst` stored.
    pub fn new(rate: f64, burst: u32) -> Self {
        Self {
            rate: rate.max(0.001),
            burst: f64::from(burst.max(1)),
            state: Mutex::new(State {
                buckets: HashMap::new(),
                prune_at: PRUNE_AT,
            }),
        }
    }

    /// Takes a token for `key`; `Err(retry_after)` when the bucket is empty.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut state = self.state.lock().expect("rate limiter lock");
        if state.buckets.len() >= state.prune_at && !state.buckets.contains_key(key) {
            let (rate, burst) = (self.rate, self.burst);
            state.buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < burst
            });
            state.prune_at = (state.buckets.len() * 2).max(PRUNE_AT);
        }
        let b = state.buckets.entry(key.to_owned()).or_insert(Bucket {
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

    #[tokio::test(start_paused = true)]
    async fn idle_buckets_are_dropped_once_there_are_many() {
        let l = KeyedRateLimiter::new(10.0, 2);
        l.check("busy").unwrap();
        l.check("busy").unwrap();
        for i in 0..PRUNE_AT - 1 {
            l.check(&format!("user:{i}")).unwrap();
        }
        assert_eq!(l.state.lock().unwrap().buckets.len(), PRUNE_AT);
        // A second later every bucket has refilled but the busy one, which is drained again.
        tokio::time::advance(Duration::from_millis(1000)).await;
        l.check("busy").unwrap();
        l.check("busy").unwrap();
        l.check("newcomer").unwrap();
        let state = l.state.lock().unwrap();
        assert_eq!(
            state.buckets.len(),
            2,
            "only the busy bucket and the new one stay"
        );
        assert!(state.buckets["busy"].tokens < 1.0, "its state is kept");
        assert_eq!(state.prune_at, PRUNE_AT);
    }
}
