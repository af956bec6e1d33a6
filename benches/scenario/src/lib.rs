//! The resilience simulator's scenarios: what a `benches/scenarios/*.toml` file says (traffic,
//! the downstream's behaviour, the client policies to compare) and the downstream model that
//! turns the behaviour into one call's latency and outcome.
//!
//! Two programs read the same files through this crate, so they cannot drift apart:
//!
//! - the simulator (`resilience-sim`, crate `chassis-benches`) drives the model in virtual time;
//! - the shop's payment-provider stand-in plays it on its real HTTP endpoint, in real time, so
//!   the simulator's predictions can be checked against the real client over real sockets.
//!
//! [`DownstreamModel`] is the one place the behaviour is computed: the failure probability, the
//! log-normal latency fitted to the configured median and p99, the capacity beyond which every
//! call in flight adds latency, and the outage windows (with their fade-out). Each program keeps
//! its own clock and calls [`DownstreamModel::begin`] when a call arrives and
//! [`DownstreamModel::end`] when it leaves.
//!
//! [`Scenario::time_scaled`] shortens a scenario's timeline (duration and outage windows, not
//! call latencies or policies) so a run in real time takes tens of seconds rather than minutes.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use chassis_scenario::{DownstreamModel, Scenario};
//!
//! let scenario = Scenario::from_toml(r#"
//!     duration = "20s"
//!     rate = 50.0
//!     [downstream]
//!     outages = [{ start = "5s", end = "10s" }]
//!     [[policies]]
//!     name = "no resilience"
//! "#).unwrap();
//! let half = scenario.time_scaled(0.5).unwrap();
//! assert_eq!(half.duration, Duration::from_secs(10));
//! assert_eq!(half.downstream.outages[0].start, Duration::from_millis(2500));
//!
//! let mut model = DownstreamModel::new(half.downstream.clone(), half.seed);
//! let call = model.begin(Duration::from_secs(3)); // inside the (hard) outage
//! assert!(call.fails);
//! model.end();
//! ```

use std::fmt;
use std::path::Path;
use std::time::Duration;

use chassis_core::resilience::hedge::HedgeConfig;
use chassis_core::resilience::policy::ResiliencePolicy;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

/// One simulation: traffic, downstream behaviour, and the policies to compare.
#[derive(Debug, Clone, Deserialize)]
pub struct Scenario {
    /// Simulated duration. Defaults to 120 s.
    #[serde(default = "default_duration", with = "humantime_serde")]
    pub duration: Duration,
    /// Caller requests per second. Defaults to 100.
    #[serde(default = "default_rate")]
    pub rate: f64,
    /// Seed of the downstream's randomness (failures, latencies), so every policy meets the
    /// same downstream and a run is reproducible. Jittered backoff inside a policy draws from
    /// the thread's RNG, so those figures vary slightly between runs. Defaults to 42.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// The downstream's behaviour.
    #[serde(default)]
    pub downstream: DownstreamConfig,
    /// The policies to compare, each run against an identical downstream (same seed).
    pub policies: Vec<NamedPolicy>,
}

fn default_duration() -> Duration {
    Duration::from_secs(120)
}
fn default_rate() -> f64 {
    100.0
}
fn default_seed() -> u64 {
    42
}

impl Scenario {
    /// Parses a scenario from TOML.
    ///
    /// # Errors
    /// The text is not a valid scenario.
    pub fn from_toml(text: &str) -> Result<Self, ScenarioError> {
        toml::from_str(text).map_err(|e| ScenarioError(e.to_string()))
    }

    /// Reads and parses a scenario file.
    ///
    /// # Errors
    /// The file cannot be read or is not a valid scenario; the message names the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| ScenarioError(format!("{}: {}", path.display(), e.0)))
    }

    /// The scenario with its timeline multiplied by `factor`: the duration and every outage's
    /// start, end and ramp-down. Call latencies, the request rate and the policies stay as they
    /// are, because they are what is compared; only the length of the story changes (`0.5`
    /// plays a 60 s scenario in 30 s, its 15 s outage as 7.5 s).
    ///
    /// # Errors
    /// `factor` is not a positive finite number.
    pub fn time_scaled(&self, factor: f64) -> Result<Self, ScenarioError> {
        if !(factor.is_finite() && factor > 0.0) {
            return Err(ScenarioError(format!(
                "the time scale must be a positive number, got {factor}"
            )));
        }
        let mut scaled = self.clone();
        scaled.duration = self.duration.mul_f64(factor);
        for outage in &mut scaled.downstream.outages {
            outage.start = outage.start.mul_f64(factor);
            outage.end = outage.end.mul_f64(factor);
            outage.ramp_down = outage.ramp_down.mul_f64(factor);
        }
        Ok(scaled)
    }

    /// The policy named `name`, if the scenario has one.
    pub fn policy(&self, name: &str) -> Option<&NamedPolicy> {
        self.policies.iter().find(|p| p.name == name)
    }
}

/// A named client policy to compare.
#[derive(Debug, Clone, Deserialize)]
pub struct NamedPolicy {
    /// Label in the reports.
    pub name: String,
    /// Hedging of every (simulated, idempotent) call, inside the attempt timeout and spending
    /// the policy's retry budget, as a service would stack it. Defaults to none.
    #[serde(default)]
    pub hedge: Option<HedgeConfig>,
    /// The policy, exactly as a service would configure it.
    #[serde(flatten)]
    pub policy: ResiliencePolicy,
}

/// A scenario that cannot be read, parsed or scaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError(String);

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScenarioError {}

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

/// What the downstream does with one call: wait `latency`, then fail or succeed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CallPlan {
    /// How long the call takes.
    pub latency: Duration,
    /// Whether it fails at the end.
    pub fails: bool,
}

/// The downstream's behaviour as a state machine over a caller-supplied clock: seeded
/// randomness and the count of calls in flight. Not synchronised: wrap it in a mutex to share.
#[derive(Debug)]
pub struct DownstreamModel {
    config: DownstreamConfig,
    rng: StdRng,
    in_flight: usize,
    sigma: f64,
}

impl DownstreamModel {
    /// A model of `config` drawing from a generator seeded with `seed`.
    pub fn new(config: DownstreamConfig, seed: u64) -> Self {
        // Log-normal: p99 = median * exp(2.326 * sigma).
        let ratio = config.latency_p99.as_secs_f64() / config.latency_p50.as_secs_f64().max(1e-9);
        let sigma = (ratio.max(1.0)).ln() / 2.326;
        Self {
            config,
            rng: StdRng::seed_from_u64(seed),
            in_flight: 0,
            sigma,
        }
    }

    /// The behaviour modelled.
    pub fn config(&self) -> &DownstreamConfig {
        &self.config
    }

    /// Calls in flight (begun and not ended).
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// A call arrives `now` after the run began: it is counted in flight until [`end`](Self::end)
    /// and gets its latency (including the overload penalty for the calls in flight beyond the
    /// capacity in effect now) and outcome.
    pub fn begin(&mut self, now: Duration) -> CallPlan {
        self.in_flight += 1;
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
        let fails = self.rng.random_bool(failure_rate.clamp(0.0, 1.0));
        // Box-Muller for a standard normal sample.
        let u1: f64 = self.rng.random_range(f64::EPSILON..1.0);
        let u2: f64 = self.rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        let mut latency = self.config.latency_p50.mul_f64((self.sigma * z).exp());
        let overload = self.in_flight.saturating_sub(capacity);
        latency += self.config.overload_penalty * overload as u32;
        if let Some((o, w)) = outage {
            latency += o.extra_latency.mul_f64(w);
        }
        CallPlan { latency, fails }
    }

    /// A call begun with [`begin`](Self::begin) left (answered, or abandoned by its caller).
    pub fn end(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_follows_the_configured_median_and_p99() {
        let mut model = DownstreamModel::new(DownstreamConfig::default(), 1);
        let mut latencies: Vec<Duration> = (0..20_000)
            .map(|_| {
                let plan = model.begin(Duration::ZERO);
                model.end();
                plan.latency
            })
            .collect();
        latencies.sort_unstable();
        let p50 = latencies[10_000].as_secs_f64() * 1000.0;
        let p99 = latencies[19_800].as_secs_f64() * 1000.0;
        assert!((p50 - 20.0).abs() < 1.5, "p50 {p50}");
        assert!((p99 - 120.0).abs() < 15.0, "p99 {p99}");
    }

    #[test]
    fn calls_beyond_capacity_are_slower_and_outages_fail_and_fade() {
        let config = DownstreamConfig {
            failure_rate: 0.0,
            latency_p50: Duration::from_millis(10),
            latency_p99: Duration::from_millis(10),
            capacity: 2,
            overload_penalty: Duration::from_millis(5),
            outages: vec![Outage {
                start: Duration::from_secs(10),
                end: Duration::from_secs(20),
                failure_rate: 1.0,
                extra_latency: Duration::from_millis(100),
                capacity: None,
                ramp_down: Duration::from_secs(10),
            }],
        };
        let mut model = DownstreamModel::new(config, 1);
        let first = model.begin(Duration::ZERO);
        let _second = model.begin(Duration::ZERO);
        let third = model.begin(Duration::ZERO);
        assert_eq!(model.in_flight(), 3);
        assert_eq!(third.latency - first.latency, Duration::from_millis(5));
        for _ in 0..3 {
            model.end();
        }
        let down = model.begin(Duration::from_secs(15));
        model.end();
        assert!(down.fails);
        assert_eq!(down.latency, Duration::from_millis(110));
        let fading = model.begin(Duration::from_secs(25));
        model.end();
        assert_eq!(fading.latency, Duration::from_millis(60));
        let after = model.begin(Duration::from_secs(31));
        model.end();
        assert!(!after.fails);
        assert_eq!(after.latency, Duration::from_millis(10));
    }

    #[test]
    fn time_scale_shortens_the_timeline_only() {
        let scenario = Scenario::from_toml(
            r#"
            duration = "60s"
            rate = 200.0
            [downstream]
            latency_p50 = "20ms"
            outages = [{ start = "20s", end = "40s", ramp_down = "10s", extra_latency = "300ms" }]
            [[policies]]
            name = "p"
            timeout = "250ms"
            "#,
        )
        .unwrap();
        let s = scenario.time_scaled(0.25).unwrap();
        assert_eq!(s.duration, Duration::from_secs(15));
        let o = &s.downstream.outages[0];
        assert_eq!(
            (o.start, o.end, o.ramp_down),
            (
                Duration::from_secs(5),
                Duration::from_secs(10),
                Duration::from_millis(2500)
            )
        );
        assert_eq!(o.extra_latency, Duration::from_millis(300));
        assert_eq!(s.rate, 200.0);
        assert_eq!(s.downstream.latency_p50, Duration::from_millis(20));
        assert_eq!(
            s.policy("p").unwrap().policy.timeout,
            Some(Duration::from_millis(250))
        );
        assert!(scenario.time_scaled(0.0).is_err());
        assert!(scenario.time_scaled(f64::NAN).is_err());
        assert!(Scenario::from_toml("rate = \"fast\"").is_err());
    }
}
