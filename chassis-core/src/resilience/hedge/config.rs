//! [`HedgeConfig`], when to send the hedge, and which requests may be hedged.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;

use crate::Error;

/// Configuration of a hedging layer. Deserializes from e.g.
/// `{ name = "catalogue", delay = "50ms" }` or
/// `{ name = "catalogue", percentile = 95.0, delay = "20ms" }`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HedgeConfig {
    /// Name used in traces. Defaults to `"default"`.
    pub name: String,
    /// How long the first attempt runs alone before the hedge is sent. With `percentile`, the
    /// delay used until enough latencies are known, and the lowest delay ever used. Defaults
    /// to 50 ms.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// Sends the hedge when the first attempt has taken longer than this percentile (e.g. 95)
    /// of the recent calls' latencies, instead of after the fixed `delay`. Defaults to none.
    pub percentile: Option<f64>,
}

impl Default for HedgeConfig {
    fn default() -> Self {
        Self {
            name: "default".to_owned(),
            delay: Duration::from_millis(50),
            percentile: None,
        }
    }
}

impl HedgeConfig {
    crate::__named_config_new!();

    crate::__builder_setters! {
        /// Sets the fixed delay (the floor, with a percentile). Defaults to 50 ms.
        delay: Duration,
        /// Hedges after this percentile of recent latencies. Defaults to none (fixed delay).
        percentile: Some(f64),
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), Error> {
        if let Some(p) = self.percentile
            && !(p > 0.0 && p < 100.0)
        {
            return Err(Error::invalid_config(format!(
                "hedge '{}': percentile must be in (0, 100), not {p}",
                self.name
            )));
        }
        Ok(())
    }
}

/// Which requests may be hedged: only those for which a second copy does no harm.
///
/// Closures `Fn(&Req) -> bool` implement it; [`IdempotentRequests`] is the HTTP default.
pub trait HedgePredicate<Req> {
    /// Whether `req` may be sent twice.
    fn may_hedge(&self, req: &Req) -> bool;
}

impl<F, Req> HedgePredicate<Req> for F
where
    F: Fn(&Req) -> bool,
{
    fn may_hedge(&self, req: &Req) -> bool {
        self(req)
    }
}

/// Marks a request as idempotent in its extensions (`req.extensions_mut().insert(Idempotent)`),
/// for [`IdempotentRequests`]: e.g. a `POST` carrying an `Idempotency-Key`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Idempotent;

/// The default predicate for `http::Request`s: methods idempotent by RFC 9110 (`GET`, `HEAD`,
/// `OPTIONS`, `TRACE`, `PUT`, `DELETE`) and requests marked [`Idempotent`]. Other request types
/// are never hedged by it.
#[derive(Clone, Copy, Debug, Default)]
pub struct IdempotentRequests;

impl<B> HedgePredicate<http::Request<B>> for IdempotentRequests {
    fn may_hedge(&self, req: &http::Request<B>) -> bool {
        req.method().is_idempotent() || req.extensions().get::<Idempotent>().is_some()
    }
}

/// Recent latencies, for the percentile delay: a ring of the last `RING` calls, the delay
/// recomputed every `EVERY` samples and read lock-free.
#[derive(Debug)]
pub(crate) struct Latencies {
    percentile: f64,
    floor: u64,
    delay: AtomicU64,
    ring: Mutex<Ring>,
}

const RING: usize = 256;
const EVERY: usize = 32;

#[derive(Debug)]
struct Ring {
    samples: Vec<u64>,
    next: usize,
    since: usize,
}

impl Latencies {
    pub(crate) fn new(percentile: f64, floor: Duration) -> Self {
        let floor = floor.as_nanos() as u64;
        Self {
            percentile,
            floor,
            delay: AtomicU64::new(floor),
            ring: Mutex::new(Ring {
                samples: Vec::with_capacity(RING),
                next: 0,
                since: 0,
            }),
        }
    }

    pub(crate) fn delay(&self) -> Duration {
        Duration::from_nanos(self.delay.load(Relaxed))
    }

    pub(crate) fn percentile(&self) -> f64 {
        self.percentile
    }

    pub(crate) fn record(&self, latency: Duration) {
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        let nanos = latency.as_nanos() as u64;
        if ring.samples.len() < RING {
            ring.samples.push(nanos);
        } else {
            let at = ring.next;
            ring.samples[at] = nanos;
        }
        ring.next = (ring.next + 1) % RING;
        ring.since += 1;
        if ring.since >= EVERY {
            ring.since = 0;
            let mut sorted = ring.samples.clone();
            drop(ring);
            sorted.sort_unstable();
            let rank = ((sorted.len() as f64 * self.percentile / 100.0).ceil() as usize)
                .clamp(1, sorted.len());
            self.delay.store(sorted[rank - 1].max(self.floor), Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_percentile_delay_follows_recent_latencies_above_the_floor() {
        let l = Latencies::new(90.0, Duration::from_millis(5));
        assert_eq!(l.delay(), Duration::from_millis(5), "the floor until known");
        for ms in 1..=100 {
            l.record(Duration::from_millis(ms));
        }
        // The last recomputation saw 96 samples, 1..=96 ms: the 90th percentile is 87 ms.
        assert_eq!(l.delay(), Duration::from_millis(87));
        for _ in 0..RING {
            l.record(Duration::from_millis(1));
        }
        assert_eq!(l.delay(), Duration::from_millis(5), "never below the floor");
    }

    #[test]
    fn http_methods_and_the_marker_decide() {
        let get = http::Request::get("/").body(()).unwrap();
        let post = http::Request::post("/").body(()).unwrap();
        let mut keyed = http::Request::post("/").body(()).unwrap();
        keyed.extensions_mut().insert(Idempotent);
        assert!(IdempotentRequests.may_hedge(&get));
        assert!(!IdempotentRequests.may_hedge(&post));
        assert!(IdempotentRequests.may_hedge(&keyed));
    }

    #[test]
    fn a_percentile_out_of_range_is_refused() {
        assert!(HedgeConfig::new("x").percentile(100.0).validate().is_err());
        assert!(HedgeConfig::new("x").percentile(99.0).validate().is_ok());
    }
}
