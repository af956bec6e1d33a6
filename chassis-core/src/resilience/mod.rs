//! Resilience primitives as tower layers.
//!
//! | module | what it does |
//! |---|---|
//! | [`circuit_breaker`] | stops calling a failing downstream, probes it, closes again when it recovers |
//! | [`retry`] | retries failed attempts with jittered backoff, under a budget and a deadline |
//! | [`time_limiter`] | bounds one call (or one attempt) in time |
//! | [`bulkhead`] | bounds concurrent calls, waiting a bounded time for a permit |
//! | [`adaptive_limit`] | bounds concurrent calls by a limit that follows latency (Vegas, AIMD), shedding the excess at once |
//! | [`rate_limiter`] | bounds calls per time window |
//! | [`hedge`] | sends a second attempt of an idempotent request when the first is slow; the first answer wins |
//! | [`fallback`] | answers chosen errors (breaker open, rejections, timeouts) with a typed fallback |
//! | [`keyed_rate_limit`] | bounds calls per time window per key (API key, user, route), GCRA in memory with idle keys evicted, or on Redis shared by replicas |
//! | [`clock`] | the time sources the breaker and the retry budget read (a coarse clock by default) |
//! | [`policy`] | stacks all of them in the documented order from one config |

pub mod adaptive_limit;
pub mod bulkhead;
pub mod circuit_breaker;
pub mod clock;
pub mod fallback;
pub mod hedge;
pub mod keyed_rate_limit;
pub mod policy;
pub mod rate_limiter;
pub mod retry;
pub mod time_limiter;

mod future;
mod rejections;
mod striped;
