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
//! [`search`] tunes a policy's parameters for one or several scenarios against a weighted
//! objective.
//!
//! The scenario library is `benches/scenarios/*.toml`: full outage, partial brownout, latency
//! spike, capacity drop, slow recovery, metastable retry storm (and `outage.toml`, two outages
//! in one run).
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
pub mod search;

use std::time::Duration;

use chassis_core::resilience::clock::TokioClock;
use chassis_core::resilience::hedge::{HedgeConfig, HedgeLayer};
use chassis_core::resilience::policy::ResiliencePolicy;
use serde::Deserialize;
use tower::Layer;
use tower::util::BoxCloneSyncService;

use downstream::{DownstreamConfig, SimRequest};
use report::{Bucket, Summary};

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

impl NamedPolicy {
    /// Runs this policy once against `scenario`'s downstream and traffic, in virtual time.
    pub fn run(&self, scenario: &Scenario) -> Result<(Summary, Vec<Bucket>), chassis_core::Error> {
        let policy = self.policy.clone();
        let hedge = self.hedge.clone();
        let result = run::run_paused(async {
            // Built inside the paused runtime so the policy's clocks are the virtual ones.
            // The breaker's and the retry budget's default clock is a real coarse clock; in
            // virtual time they must read tokio's paused clock, or their windows and waits
            // would never move.
            let layer = policy.build()?.with_clock(TokioClock::new());
            let hedge = match hedge {
                Some(config) => {
                    let hedge = HedgeLayer::new(config, every_call as fn(&SimRequest) -> bool)?;
                    Some(match layer.retry().and_then(|r| r.budget_handle()) {
                        Some(budget) => hedge.with_retry_budget(budget),
                        None => hedge,
                    })
                }
                None => None,
            };
            Ok::<_, chassis_core::Error>(
                run::drive(
                    scenario.downstream.clone(),
                    scenario.seed,
                    scenario.rate,
                    scenario.duration,
                    move |downstream| match hedge {
                        Some(hedge) => {
                            BoxCloneSyncService::new(layer.layer(hedge.layer(downstream)))
                        }
                        None => BoxCloneSyncService::new(layer.layer(downstream)),
                    },
                )
                .await,
            )
        })?;
        Ok((
            report::summarize(
                &self.name,
                &result,
                scenario.rate,
                &scenario.downstream.outages,
            ),
            report::timeline(&result, scenario.duration.as_secs()),
        ))
    }
}

/// The simulated calls are reads: every one may be hedged.
fn every_call(_: &SimRequest) -> bool {
    true
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
            let (summary, timeline) = named.run(self)?;
            summaries.push(summary);
            timelines.push((named.name.clone(), timeline));
        }
        Ok(ScenarioResults {
            summaries,
            timelines,
        })
    }
}
