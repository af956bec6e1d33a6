//! Simulator vs reality: the shop's payments client, with a scenario's policy, against the
//! payment-provider stand-in playing the same scenario over real HTTP on loopback, set beside
//! what the simulator predicts for that scenario and policy.
//!
//! Both sides share everything that can be shared: the scenario file and its downstream model
//! (`chassis-scenario`: the stand-in draws each charge's latency and outcome from the same
//! model the simulator uses), the policy (the same [`ResiliencePolicy`], built by the real
//! chassis `HttpClient` as `shop-payments` builds it, through its `ProviderClient`), the offered
//! load (the same open-loop schedule: request `n` leaves at `n / rate`) and the same figures
//! ([`report::summarize`] over the same records). What differs is what the simulator leaves
//! out: HTTP and JSON on real sockets, the real clock and scheduler on a shared machine, the
//! connection pool, and the payments client's own handling of the provider's answers.
//!
//! A run takes the scenario's duration in real time; [`Scenario::time_scaled`] shortens it.
//!
//! [`ResiliencePolicy`]: chassis_core::resilience::policy::ResiliencePolicy
//!
//! # Example
//! ```no_run
//! use chassis_benches::sim::Scenario;
//! use chassis_benches::sim::live::{Tolerance, compare};
//!
//! let scenario = Scenario::load("benches/scenarios/full-outage.toml")?.time_scaled(0.5)?;
//! let policy = scenario.policy("retry + budget + breaker").expect("in the file");
//! let comparison = compare(&scenario, policy)?;
//! println!("{}", comparison.row("full-outage"));
//! assert!(comparison.within(&Tolerance::default()));
//! # Ok::<(), chassis_core::BoxError>(())
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chassis_core::BoxError;
use chassis_http::client::{ClientError, ClientErrorKind};
use shop_payment_provider::{Behaviour, ProviderState};
use shop_payments::provider::{ProviderClient, ProviderReply};
use tokio::time::Instant;

use super::report::{self, Summary};
use super::run::{Outcome, RequestRecord, RunResult};
use super::{NamedPolicy, Scenario, Simulate};

/// How close the measured figures must be to the predicted ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    /// Success rates at most this many percentage points apart. Defaults to 5.
    pub success_points: f64,
    /// Attempts per request at most this fraction apart (relative to the prediction). Defaults
    /// to 0.15.
    pub attempts_ratio: f64,
}

impl Default for Tolerance {
    fn default() -> Self {
        Self {
            success_points: 5.0,
            attempts_ratio: 0.15,
        }
    }
}

/// One policy on one scenario: the simulator's prediction and the real run's measurement.
#[derive(Debug, Clone)]
pub struct Comparison {
    /// What the simulator predicts.
    pub predicted: Summary,
    /// What the payments client measured against the stand-in.
    pub measured: Summary,
}

impl Comparison {
    /// Measured minus predicted success rate, in percentage points.
    pub fn success_gap_points(&self) -> f64 {
        (self.measured.success_rate - self.predicted.success_rate) * 100.0
    }

    /// Measured attempts per request relative to the prediction, minus one (`0.1`: 10 % more).
    pub fn attempts_gap(&self) -> f64 {
        self.measured.attempts_per_request / self.predicted.attempts_per_request.max(1e-9) - 1.0
    }

    /// Whether both gaps are within `tolerance`.
    pub fn within(&self, tolerance: &Tolerance) -> bool {
        self.success_gap_points().abs() <= tolerance.success_points
            && self.attempts_gap().abs() <= tolerance.attempts_ratio
    }

    /// One Markdown table row (see [`table_header`]), `scenario` in its first column.
    pub fn row(&self, scenario: &str) -> String {
        let (p, m) = (&self.predicted, &self.measured);
        format!(
            "| {scenario} | {} | {:.1} | {:.1} | {:+.1} | {:.2} | {:.2} | {:+.0} % | {:.0} | {:.0} | {} |",
            p.policy,
            p.success_rate * 100.0,
            m.success_rate * 100.0,
            self.success_gap_points(),
            p.attempts_per_request,
            m.attempts_per_request,
            self.attempts_gap() * 100.0,
            p.p99_ms,
            m.p99_ms,
            if self.within(&Tolerance::default()) {
                "yes"
            } else {
                "no"
            },
        )
    }
}

/// The header of the Markdown table [`Comparison::row`] writes rows of.
pub fn table_header() -> &'static str {
    "| scenario | policy | success % sim | success % real | gap (pts) | attempts/req sim | attempts/req real | gap | p99 ms sim | p99 ms real | within 5 pts / 15 % |\n\
     |---|---|---|---|---|---|---|---|---|---|---|"
}

/// Predicts `policy` on `scenario` with the simulator, then measures it against the real
/// stand-in (taking the scenario's duration in real time).
///
/// # Errors
/// The policy does not validate, hedges (the payments client does not), or the stand-in cannot
/// be started.
pub fn compare(scenario: &Scenario, policy: &NamedPolicy) -> Result<Comparison, BoxError> {
    let (predicted, _) = scenario.run_policy(policy)?;
    let measured = measure(scenario, policy)?;
    Ok(Comparison {
        predicted,
        measured,
    })
}

/// Runs the scenario's offered load through the shop's payments client built with `policy`
/// against a payment-provider stand-in playing the scenario on a loopback port, and summarises
/// it as the simulator summarises its runs. Attempts are counted where the simulator counts
/// them: as charge requests reaching the provider.
///
/// The stand-in runs on its own thread with a single-threaded runtime (as its binary does), the
/// client on a two-worker runtime (as the payments service on this two-core machine).
///
/// # Errors
/// As [`compare`].
pub fn measure(scenario: &Scenario, policy: &NamedPolicy) -> Result<Summary, BoxError> {
    if policy.hedge.is_some() {
        return Err(format!(
            "policy `{}` hedges, and the payments client does not hedge charges",
            policy.name
        )
        .into());
    }
    policy.policy.build()?;
    let stand_in = StandIn::start()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = runtime.block_on(drive(scenario, policy, &stand_in));
    drop(runtime);
    stand_in.stop();
    let result = result?;
    Ok(report::summarize(
        &policy.name,
        &result,
        scenario.rate,
        &scenario.downstream.outages,
    ))
}

async fn drive(
    scenario: &Scenario,
    policy: &NamedPolicy,
    stand_in: &StandIn,
) -> Result<RunResult, BoxError> {
    let client = ProviderClient::new(&stand_in.url, &policy.policy)?;
    let records = Arc::new(Mutex::new(Vec::new()));
    let interval = Duration::from_secs_f64(1.0 / scenario.rate);
    let total = (scenario.duration.as_secs_f64() * scenario.rate).round() as u64;
    // A fresh key prefix per run: the stand-in outlives nothing, but a key must never replay an
    // answer from another run.
    let run = std::process::id();
    stand_in
        .state
        .play(scenario.downstream.clone(), scenario.seed);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        // The simulator's open loop: request n leaves at n / rate, whatever happened before.
        tokio::time::sleep_until(started + interval.mul_f64(n as f64)).await;
        let client = client.clone();
        let records = records.clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            // As payments charges an order: one idempotency key per order, kept across retries.
            let order = format!("sim-{run}-{n}");
            let result = client
                .charge(&format!("charge-{order}"), 1200, "card_ok", &order)
                .await;
            let record = RequestRecord {
                sent_at: sent - started,
                latency: sent.elapsed(),
                outcome: classify(&result),
            };
            records.lock().expect("records").push((n, record));
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut records = std::mem::take(&mut *records.lock().expect("records"));
    records.sort_by_key(|(n, _)| *n);
    let calls = stand_in.state.playback_calls();
    stand_in.state.stop_playing();
    Ok(RunResult {
        requests: records.into_iter().map(|(_, r)| r).collect(),
        downstream_calls: calls.into_iter().map(|at| (at, 0)).collect(),
    })
}

/// The caller's view of a charge, in the simulator's terms.
fn classify(result: &Result<ProviderReply, ClientError>) -> Outcome {
    match result {
        Ok(ProviderReply::Charged { .. }) => Outcome::Success,
        Ok(_) => Outcome::Failed,
        Err(e) => match e.kind() {
            ClientErrorKind::CircuitOpen { .. } => Outcome::CircuitOpen,
            ClientErrorKind::Overloaded { .. } => Outcome::Rejected,
            ClientErrorKind::TimedOut { .. } => Outcome::TimedOut,
            _ => Outcome::Failed,
        },
    }
}

/// The payment-provider stand-in on a loopback port, on a thread of its own.
struct StandIn {
    url: String,
    state: ProviderState,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl StandIn {
    fn start() -> Result<Self, BoxError> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = ProviderState::new(Behaviour::default(), Vec::new());
        let app = shop_payment_provider::app(state.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("payment-provider".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener =
                        tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                    tokio::select! {
                        served = axum::serve(listener, app) => {
                            if let Err(e) = served {
                                eprintln!("payment-provider stand-in: {e}");
                            }
                        }
                        _ = stopped => {}
                    }
                });
            })?;
        Ok(Self {
            url,
            state,
            stop,
            thread,
        })
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}
