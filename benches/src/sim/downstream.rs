//! The synthetic downstream: a tower service whose failure rate, latency distribution and
//! outage windows follow a [`DownstreamConfig`], in virtual (tokio paused) time.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chassis_core::BoxError;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;
use tokio::time::Instant;

/// One window during which the downstream misbehaves.
#[derive(Debug, Clone, Deserialize)]
pub struct Outage {
    /// When it starts, from the beginning of the run.
    #[serde(with = "humantime_serde")]
    pub start: Duration,
    /// When it ends, from the beginning of the run.
    #[serde(with = "humantime_serde")]
    pub end: Duration,
    /// Failure probability during the outage. Defaults to 1 (hard down).
    #[serde(default = "one")]
    pub failure_rate: f64,
    /// Extra latency added to every call during the outage (a slow, not dead, dependency).
    #[serde(default, with = "humantime_serde")]
    pub extra_latency: Duration,
    /// Concurrent calls served at normal latency during the outage (a lost replica, a smaller
    /// pool). Defaults to the downstream's `capacity`.
    #[serde(default)]
    pub capacity: Option<usize>,
    /// After `end`, the outage fades linearly over this long (failure rate, extra latency and
    /// lost capacity alike): a slow recovery. Defaults to zero (ends at once).
    #[serde(default, with = "humantime_serde")]
    pub ramp_down: Duration,
}

impl Outage {
    /// How much of the outage is in effect at `now`: 1 inside it, fading to 0 over the
    /// ramp-down, 0 outside.
    pub fn weight(&self, now: Duration) -> f64 {
        if now < self.start {
            0.0
        } else if now < self.end {
            1.0
        } else if now < self.end + self.ramp_down {
            1.0 - (now - self.end).as_secs_f64() / self.ramp_down.as_secs_f64()
        } else {
            0.0
        }
    }
}

fn one() -> f64 {
    1.0
}

/// How the downstream behaves.
#[derive(Debug, Clone, Deserialize)]
pub struct DownstreamConfig {
    /// Failure probability outside outages. Defaults to 0.01.
    #[serde(default = "default_failure_rate")]
    pub failure_rate: f64,
    /// Median latency. Defaults to 20 ms.
    #[serde(default = "default_median", with = "humantime_serde")]
    pub latency_p50: Duration,
    /// 99th-percentile latency (the log-normal's spread is fitted to it). Defaults to 120 ms.
    #[serde(default = "default_p99", with = "humantime_serde")]
    pub latency_p99: Duration,
    /// Concurrent calls the downstream serves at its normal latency; each call beyond it adds
    /// `overload_penalty` of latency, the way a saturated server queues. This is what turns
    /// retries into a storm. Defaults to 64.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// Latency added per call in flight above `capacity`. Defaults to 5 ms.
    #[serde(default = "default_penalty", with = "humantime_serde")]
    pub overload_penalty: Duration,
    /// Misbehaviour windows.
    #[serde(default)]
    pub outages: Vec<Outage>,
}

fn default_failure_rate() -> f64 {
    0.01
}
fn default_median() -> Duration {
    Duration::from_millis(20)
}
fn default_p99() -> Duration {
    Duration::from_millis(120)
}
fn default_capacity() -> usize {
    64
}
fn default_penalty() -> Duration {
    Duration::from_millis(5)
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        Self {
            failure_rate: default_failure_rate(),
            latency_p50: default_median(),
            latency_p99: default_p99(),
            capacity: default_capacity(),
            overload_penalty: default_penalty(),
            outages: Vec::new(),
        }
    }
}

/// The error the downstream answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownstreamFailure;

impl std::fmt::Display for DownstreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("downstream failed")
    }
}
impl std::error::Error for DownstreamFailure {}

/// A request to the downstream: the caller's request number (kept across retries, so attempts
/// can be counted per caller request).
#[derive(Debug, Clone, Copy)]
pub struct SimRequest(pub u64);

#[derive(Debug)]
struct State {
    rng: StdRng,
    in_flight: usize,
    /// Every attempt that reached the downstream: (time since start, request number).
    calls: Vec<(Duration, u64)>,
}

/// The synthetic downstream service. Clones share state.
#[derive(Debug, Clone)]
pub struct Downstream {
    config: Arc<DownstreamConfig>,
    started: Instant,
    state: Arc<Mutex<State>>,
    sigma: f64,
}

impl Downstream {
    /// A downstream starting its clock now, with a seeded random source.
    pub fn new(config: DownstreamConfig, seed: u64) -> Self {
        // Log-normal: p99 = median * exp(2.326 * sigma).
        let ratio = config.latency_p99.as_secs_f64() / config.latency_p50.as_secs_f64().max(1e-9);
        let sigma = (ratio.max(1.0)).ln() / 2.326;
        Self {
            config: Arc::new(config),
            started: Instant::now(),
            state: Arc::new(Mutex::new(State {
                rng: StdRng::seed_from_u64(seed),
                in_flight: 0,
                calls: Vec::new(),
            })),
            sigma,
        }
    }

    /// Every attempt that reached the downstream: (time since start, request number).
    pub fn calls(&self) -> Vec<(Duration, u64)> {
        self.state.lock().expect("downstream state").calls.clone()
    }

    fn plan_call(&self, request: u64) -> (Duration, bool) {
        let now = self.started.elapsed();
        let mut state = self.state.lock().expect("downstream state");
        state.calls.push((now, request));
        state.in_flight += 1;
        let outage = self
            .config
            .outages
            .iter()
            .map(|o| (o, o.weight(now)))
            .find(|(_, w)| *w > 0.0);
        let base = self.config.failure_rate;
        let failure_rate = outage.map_or(base, |(o, w)| base + (o.failure_rate - base) * w);
        let capacity = outage.map_or(self.config.capacity, |(o, w)| {
            let lost =
                self.config.capacity as f64 - o.capacity.unwrap_or(self.config.capacity) as f64;
            (self.config.capacity as f64 - lost * w).round() as usize
        });
        let fails = state.rng.random_bool(failure_rate.clamp(0.0, 1.0));
        // Box-Muller for a standard normal sample.
        let u1: f64 = state.rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = state.rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let mut latency = self.config.latency_p50.mul_f64((self.sigma * z).exp());
        let overload = state.in_flight.saturating_sub(capacity);
        latency += self.config.overload_penalty * overload as u32;
        if let Some((o, w)) = outage {
            latency += o.extra_latency.mul_f64(w);
        }
        (latency, fails)
    }
}

impl tower::Service<SimRequest> for Downstream {
    type Response = ();
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: SimRequest) -> Self::Future {
        let (latency, fails) = self.plan_call(req.0);
        let state = self.state.clone();
        Box::pin(async move {
            // The guard makes a cancelled call (caller timed out) leave the server too, which
            // is optimistic: a real server often keeps working on it.
            let _leave = InFlight(state);
            tokio::time::sleep(latency).await;
            if fails {
                Err(DownstreamFailure.into())
            } else {
                Ok(())
            }
        })
    }
}

struct InFlight(Arc<Mutex<State>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut state) = self.0.lock() {
            state.in_flight -= 1;
        }
    }
}
