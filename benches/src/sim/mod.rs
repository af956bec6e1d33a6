//! The resilience-tuning simulator: what a user runs to choose settings.
//!
//! A synthetic downstream ([`downstream`]) with a configurable failure rate, log-normal latency,
//! a capacity beyond which it slows down, and outage windows is driven at a fixed request rate
//! (open loop, like real traffic) in *virtual* time: tokio's paused clock jumps from timer to
//! timer, so two simulated minutes take well under a second. Each client policy in the
//! [`Scenario`] is a real [`ResiliencePolicy`] from chassis-core — the same config a service
//! loads — so the numbers transfer. [`report`] turns the runs into a summary (success rate,
//! p50/p95/p99 latency seen by callers, attempts per request, time from outage start to breaker
//! open and from outage end to recovery), a per-second CSV timeline and an SVG chart.
//!
//! # Example
//! ```
//! use chassis_benches::sim::Scenario;
//!
//! let scenario: Scenario = toml::from_str(r#"
//!     duration = "20s"
//!     rate = 50.0
//!     [downstream]
//!     outages = [{ start = "5s", end = "10s" }]
//!     [[policies]]
//!     name = "no resilience"
//!     [[policies]]
//!     name = "retry + breaker"
//!     timeout = "200ms"
//!     retry = { max_attempts = 3 }
//!     circuit_breaker = { minimum_number_of_calls = 10, sliding_window_size = 20, wait_duration_in_open_state = "2s" }
//! "#).unwrap();
//! let results = scenario.run().unwrap();
//! let plain = &results.summaries[0];
//! let guarded = &results.summaries[1];
//! assert!(guarded.time_to_open.is_some(), "the breaker opened during the outage");
//! assert!(guarded.attempts_per_request < 2.0);
//! assert_eq!(plain.attempts_per_request, 1.0);
//! ```

pub mod downstream;
pub mod report;
pub mod run;

use std::time::Duration;

use chassis_core::resilience::clock::TokioClock;
use chassis_core::resilience::policy::ResiliencePolicy;
use serde::Deserialize;
use tower::Layer;
use tower::util::BoxCloneSyncService;

use downstream::DownstreamConfig;
use report::{Bucket, Summary};

/// A named client policy to compare.
#[derive(Debug, Clone, Deserialize)]
pub struct NamedPolicy {
    /// Label in the reports.
    pub name: String,
    /// The policy, exactly as a service would configure it.
    #[serde(flatten)]
    pub policy: ResiliencePolicy,
}

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

/// The results of a scenario.
#[derive(Debug, Clone)]
pub struct ScenarioResults {
    /// One summary per policy, in the scenario's order.
    pub summaries: Vec<Summary>,
    /// One per-second timeline per policy.
    pub timelines: Vec<(String, Vec<Bucket>)>,
}

impl Scenario {
    /// Runs every policy in virtual time. Fails if a policy does not validate.
    pub fn run(&self) -> Result<ScenarioResults, chassis_core::Error> {
        let mut summaries = Vec::new();
        let mut timelines = Vec::new();
        for named in &self.policies {
            let policy = named.policy.clone();
            let result = run::run_paused(async {
                // Built inside the paused runtime so the policy's clocks are the virtual ones.
                // The breaker's and the retry budget's default clock is a real coarse clock; in
                // virtual time they must read tokio's paused clock, or their windows and waits
                // would never move.
                let layer = policy.build()?.with_clock(TokioClock::new());
                Ok::<_, chassis_core::Error>(
                    run::drive(
                        self.downstream.clone(),
                        self.seed,
                        self.rate,
                        self.duration,
                        move |downstream| BoxCloneSyncService::new(layer.layer(downstream)),
                    )
                    .await,
                )
            })?;
            summaries.push(report::summarize(
                &named.name,
                &result,
                self.rate,
                &self.downstream.outages,
            ));
            timelines.push((
                named.name.clone(),
                report::timeline(&result, self.duration.as_secs()),
            ));
        }
        Ok(ScenarioResults {
            summaries,
            timelines,
        })
    }
}
