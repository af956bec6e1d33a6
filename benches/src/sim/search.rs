//! Policy search: the policy parameters (timeout, retry count, backoff and budget, breaker
//! threshold and windows, adaptive limit) that score best on one or several scenarios under a
//! weighted [`Objective`].
//!
//! Each candidate is written as the TOML a service would load, parsed into a real
//! [`ResiliencePolicy`](chassis_core::resilience::policy::ResiliencePolicy) and run in virtual
//! time against every scenario's downstream; its score is the mean over the scenarios. A
//! candidate whose load amplification exceeds [`Objective::max_amplification`] on any scenario
//! is discarded, whatever its success rate: a policy that serves callers by multiplying the
//! load on a struggling dependency is the retry storm the search must not find. The printed
//! snippet of the winner is the exact text that was run.
//!
//! # Example
//! ```
//! use chassis_benches::sim::Scenario;
//! use chassis_benches::sim::search::{Objective, SearchSpace, search};
//! use std::time::Duration;
//!
//! let scenario: Scenario = toml::from_str(r#"
//!     duration = "10s"
//!     rate = 50.0
//!     [downstream]
//!     outages = [{ start = "3s", end = "6s", failure_rate = 0.3 }]
//!     [[policies]]
//!     name = "no resilience"
//! "#).unwrap();
//! let space = SearchSpace {
//!     timeouts: vec![None],
//!     max_attempts: vec![1, 3],
//!     backoff_bases: vec![Duration::from_millis(10)],
//!     budget_ratios: vec![0.2],
//!     breakers: vec![None],
//!     adaptive_limit: vec![false],
//! };
//! let found = search(&[scenario], &Objective::default(), &space, 10, 1).unwrap();
//! // Retrying a failure that is 30 % likely serves more callers than not retrying.
//! assert!(found[0].snippet.contains("max_attempts = 3"), "{}", found[0].snippet);
//! ```

use std::fmt::Write as _;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Deserialize;

use super::report::{Bucket, Summary};
use super::{NamedPolicy, Scenario, Simulate};

/// What makes a policy good: a weighted sum, per scenario, of its caller success rate (higher is
/// better), its callers' p99 latency and its load amplification (lower is better).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Objective {
    /// Weight of the success rate (0..1). Defaults to 1.
    pub success: f64,
    /// Weight of the p99 latency, per second. Defaults to 0.05 (a second of p99 costs five
    /// points of success rate).
    pub p99: f64,
    /// Weight of the attempts per request above 1. Defaults to 0.5.
    pub amplification: f64,
    /// Candidates making more attempts per request than this on any scenario are discarded.
    /// Defaults to 1.2.
    pub max_amplification: Option<f64>,
}

impl Default for Objective {
    fn default() -> Self {
        Self {
            success: 1.0,
            p99: 0.05,
            amplification: 0.5,
            max_amplification: Some(1.2),
        }
    }
}

impl Objective {
    /// The score of one run, or `None` when it breaks the amplification bound.
    pub fn score(&self, s: &Summary) -> Option<f64> {
        if self
            .max_amplification
            .is_some_and(|max| s.attempts_per_request > max)
        {
            return None;
        }
        Some(
            self.success * s.success_rate
                - self.p99 * s.p99_ms / 1000.0
                - self.amplification * (s.attempts_per_request - 1.0).max(0.0),
        )
    }
}

/// A circuit breaker's tuned parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BreakerParams {
    /// Failure rate (percent) that opens it.
    pub failure_rate: f64,
    /// Time-based window, in seconds.
    pub window_secs: u32,
    /// How long it stays open before probing.
    pub wait: Duration,
}

/// The values tried for each parameter; candidates are drawn from their product.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchSpace {
    /// Per-attempt timeouts (`None`: no timeout).
    pub timeouts: Vec<Option<Duration>>,
    /// Attempts per call (1: no retry).
    pub max_attempts: Vec<u32>,
    /// Backoff bases (full jitter, doubling, capped at 20 times the base).
    pub backoff_bases: Vec<Duration>,
    /// Retry budget ratios (with one retry per second always allowed).
    pub budget_ratios: Vec<f32>,
    /// Breakers (`None`: no breaker).
    pub breakers: Vec<Option<BreakerParams>>,
    /// Whether to add an adaptive concurrency limit (Vegas).
    pub adaptive_limit: Vec<bool>,
}

impl Default for SearchSpace {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Self {
            timeouts: vec![None, Some(ms(250)), Some(ms(500)), Some(ms(1000))],
            max_attempts: vec![1, 2, 3],
            backoff_bases: vec![ms(10), ms(50)],
            budget_ratios: vec![0.1, 0.2],
            breakers: vec![
                None,
                Some(BreakerParams {
                    failure_rate: 50.0,
                    window_secs: 5,
                    wait: ms(2000),
                }),
                Some(BreakerParams {
                    failure_rate: 80.0,
                    window_secs: 10,
                    wait: ms(5000),
                }),
            ],
            adaptive_limit: vec![false, true],
        }
    }
}

/// One evaluated policy.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The policy as run (named `#<n>` in the order tried).
    pub policy: NamedPolicy,
    /// The TOML of the policy: paste it into a service's configuration.
    pub snippet: String,
    /// One summary per scenario, in the order given.
    pub summaries: Vec<Summary>,
    /// One timeline per scenario.
    pub timelines: Vec<Vec<Bucket>>,
    /// The mean score over the scenarios.
    pub score: f64,
}

fn humantime(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// The TOML of one point of the space.
fn snippet(
    timeout: Option<Duration>,
    attempts: u32,
    base: Duration,
    ratio: f32,
    breaker: Option<BreakerParams>,
    adaptive: bool,
) -> String {
    let mut out = String::new();
    if let Some(t) = timeout {
        let _ = writeln!(out, "timeout = \"{}\"", humantime(t));
    }
    if attempts > 1 {
        let _ = writeln!(
            out,
            "retry = {{ max_attempts = {attempts}, backoff = {{ base = \"{}\", max = \"{}\", jitter = \"full\" }}, budget = {{ retry_ratio = {ratio}, min_retries_per_sec = 1 }} }}",
            humantime(base),
            humantime(base * 20),
        );
    }
    if let Some(b) = breaker {
        let _ = writeln!(
            out,
            "circuit_breaker = {{ sliding_window_type = \"time_based\", sliding_window_size = {}, minimum_number_of_calls = 20, failure_rate_threshold = {:.1}, wait_duration_in_open_state = \"{}\", permitted_number_of_calls_in_half_open_state = 10 }}",
            b.window_secs,
            b.failure_rate,
            humantime(b.wait),
        );
    }
    if adaptive {
        let _ = writeln!(
            out,
            "adaptive_limit = {{ initial_limit = 50, max_limit = 1000 }}"
        );
    }
    out
}

/// Every point of the space as a TOML snippet, in a fixed order.
fn grid(space: &SearchSpace) -> Vec<String> {
    let mut all = Vec::new();
    for &timeout in &space.timeouts {
        for &attempts in &space.max_attempts {
            // Without retries the backoff and budget do not matter: one point, not several.
            let bases: &[Duration] = if attempts > 1 {
                &space.backoff_bases
            } else {
                &space.backoff_bases[..space.backoff_bases.len().min(1)]
            };
            let ratios: &[f32] = if attempts > 1 {
                &space.budget_ratios
            } else {
                &space.budget_ratios[..space.budget_ratios.len().min(1)]
            };
            for &base in bases {
                for &ratio in ratios {
                    for &breaker in &space.breakers {
                        for &adaptive in &space.adaptive_limit {
                            all.push(snippet(timeout, attempts, base, ratio, breaker, adaptive));
                        }
                    }
                }
            }
        }
    }
    all
}

/// Runs up to `candidates` points of `space` (all of them if there are no more; otherwise a
/// sample drawn with `seed`) on every scenario and returns those within the objective's
/// amplification bound, best first.
pub fn search(
    scenarios: &[Scenario],
    objective: &Objective,
    space: &SearchSpace,
    candidates: usize,
    seed: u64,
) -> Result<Vec<Candidate>, chassis_core::Error> {
    let mut points = grid(space);
    if points.len() > candidates {
        points.shuffle(&mut StdRng::seed_from_u64(seed));
        points.truncate(candidates);
    }
    let mut found = Vec::new();
    for (n, text) in points.into_iter().enumerate() {
        let policy = NamedPolicy {
            name: format!("#{}", n + 1),
            hedge: None,
            policy: toml::from_str(&text).map_err(|e| {
                chassis_core::Error::invalid_config(format!("search candidate {text}: {e}"))
            })?,
        };
        let mut summaries = Vec::new();
        let mut timelines = Vec::new();
        let mut total = 0.0;
        let mut within = true;
        for scenario in scenarios {
            let (summary, timeline) = scenario.run_policy(&policy)?;
            match objective.score(&summary) {
                Some(score) => total += score,
                None => within = false,
            }
            summaries.push(summary);
            timelines.push(timeline);
        }
        if within {
            found.push(Candidate {
                policy,
                snippet: text,
                summaries,
                timelines,
                score: total / scenarios.len().max(1) as f64,
            });
        }
    }
    found.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(found)
}
