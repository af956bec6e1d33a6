//! The resilience-tuning simulator: what a user runs to choose settings.
//!
//! A synthetic downstream ([`downstream`]) with a configurable failure rate, log-normal latency,
//! a capacity beyond which it slows down, and outage windows is driven at a fixed request rate
//! (open loop, like real traffic) in *virtual* time: tokio's paused clock jumps from timer to
//! timer, so two simulated minutes take well under a second. Each client policy in the
//! [`Scenario`] is a real [`ResiliencePolicy`](chassis_core::resilience::policy::ResiliencePolicy) from chassis-core — the same config a service
//! loads — so the numbers transfer. [`report`] turns the runs into a summary (success rate,
//! p50/p95/p99 latency seen by callers, attempts per request, time from outage start to breaker
//! open and from outage end to recovery), a per-second CSV timeline and an SVG chart.
//! [`search`] tunes a policy's parameters for one or several scenarios against a weighted
//! objective.
//!
//! The scenario library is `benches/scenarios/*.toml`: full outage, partial brownout, latency
//! spike, capacity drop, slow recovery, metastable retry storm (and `outage.toml`, two outages
//! in one run). The format and the downstream model live in the `chassis-scenario` crate
//! (re-exported here), which the shop's payment-provider stand-in shares to play the same
//! scenarios on its real HTTP endpoint; [`live`] runs the shop's payments client against it and
//! sets what it measured beside what the simulator predicts (binary `sim-vs-real`).
//!
//! # Example
//! ```
//! use chassis_benches::sim::{Scenario, Simulate};
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
pub mod live;
pub mod report;
pub mod run;
pub mod search;

use chassis_core::resilience::clock::TokioClock;
use chassis_core::resilience::hedge::HedgeLayer;
use tower::Layer;
use tower::util::BoxCloneSyncService;

pub use chassis_scenario::{NamedPolicy, Scenario, ScenarioError};

use downstream::SimRequest;
use report::{Bucket, Summary};

/// Runs a `chassis-scenario` [`Scenario`] in the simulator.
pub trait Simulate {
    /// Runs every policy in virtual time. Fails if a policy does not validate.
    fn run(&self) -> Result<ScenarioResults, chassis_core::Error>;

    /// Runs `named` once against the scenario's downstream and traffic, in virtual time (it
    /// need not be one of the scenario's own policies).
    fn run_policy(
        &self,
        named: &NamedPolicy,
    ) -> Result<(Summary, Vec<Bucket>), chassis_core::Error>;
}

fn run_policy(
    named: &NamedPolicy,
    scenario: &Scenario,
) -> Result<(Summary, Vec<Bucket>), chassis_core::Error> {
    let policy = named.policy.clone();
    let hedge = named.hedge.clone();
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
                    Some(hedge) => BoxCloneSyncService::new(layer.layer(hedge.layer(downstream))),
                    None => BoxCloneSyncService::new(layer.layer(downstream)),
                },
            )
            .await,
        )
    })?;
    Ok((
        report::summarize(
            &named.name,
            &result,
            scenario.rate,
            &scenario.downstream.outages,
        ),
        report::timeline(&result, scenario.duration.as_secs()),
    ))
}

/// The simulated calls are reads: every one may be hedged.
fn every_call(_: &SimRequest) -> bool {
    true
}

/// The results of a scenario.
#[derive(Debug, Clone)]
pub struct ScenarioResults {
    /// One summary per policy, in the scenario's order.
    pub summaries: Vec<Summary>,
    /// One per-second timeline per policy.
    pub timelines: Vec<(String, Vec<Bucket>)>,
}

impl Simulate for Scenario {
    fn run(&self) -> Result<ScenarioResults, chassis_core::Error> {
        let mut summaries = Vec::new();
        let mut timelines = Vec::new();
        for named in &self.policies {
            let (summary, timeline) = run_policy(named, self)?;
            summaries.push(summary);
            timelines.push((named.name.clone(), timeline));
        }
        Ok(ScenarioResults {
            summaries,
            timelines,
        })
    }

    fn run_policy(
        &self,
        named: &NamedPolicy,
    ) -> Result<(Summary, Vec<Bucket>), chassis_core::Error> {
        run_policy(named, self)
    }
}
