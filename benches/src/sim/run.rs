//! Drives one client policy against the synthetic downstream in virtual time and measures
//! what callers and the downstream saw.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::error::Error as StdError;

use chassis_core::{BoxError, Error, ErrorKind};
use tokio::time::Instant;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

use super::downstream::{Downstream, DownstreamConfig, SimRequest};

/// The client side under test: a boxed, cloneable service in front of the downstream.
pub type ClientStack = BoxCloneSyncService<SimRequest, (), BoxError>;

/// What happened to one caller request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The caller got a success.
    Success,
    /// The downstream's failure (or exhausted retries) reached the caller.
    Failed,
    /// A timeout or deadline reached the caller.
    TimedOut,
    /// The bulkhead, adaptive limit or rate limiter rejected the call without reaching the
    /// downstream.
    Rejected,
    /// The breaker specifically was open.
    CircuitOpen,
}

/// One caller request's record.
#[derive(Debug, Clone, Copy)]
pub struct RequestRecord {
    /// When the caller sent it, since the run began.
    pub sent_at: Duration,
    /// How long the caller waited for the answer.
    pub latency: Duration,
    /// What the caller got.
    pub outcome: Outcome,
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// Caller requests, in sending order.
    pub requests: Vec<RequestRecord>,
    /// Attempts that reached the downstream: (time since start, request number).
    pub downstream_calls: Vec<(Duration, u64)>,
}

fn classify(result: &Result<(), BoxError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Success,
        Err(err) => match Error::find_in(err.as_ref()).map(Error::kind) {
            Some(ErrorKind::CircuitOpen { .. }) => Outcome::CircuitOpen,
            Some(
                ErrorKind::BulkheadFull { .. }
                | ErrorKind::ConcurrencyLimited { .. }
                | ErrorKind::RateLimited { .. },
            ) => Outcome::Rejected,
            Some(ErrorKind::Timeout { .. } | ErrorKind::DeadlineExceeded { .. }) => {
                Outcome::TimedOut
            }
            Some(ErrorKind::RetriesExhausted { .. } | ErrorKind::RetryBudgetExhausted { .. }) => {
                // Report what the last attempt met, so a run of open-circuit rejections is
                // not mistaken for downstream failures.
                match StdError::source(err.as_ref())
                    .and_then(Error::find_in)
                    .map(Error::kind)
                {
                    Some(ErrorKind::CircuitOpen { .. }) => Outcome::CircuitOpen,
                    Some(ErrorKind::Timeout { .. }) => Outcome::TimedOut,
                    _ => Outcome::Failed,
                }
            }
            _ => Outcome::Failed,
        },
    }
}

/// Runs `rate` requests per second for `duration` of virtual time through the stack `build`
/// makes over a fresh downstream. Must be called inside a runtime with paused time (see
/// [`run_paused`]): a two-minute scenario then takes a fraction of a second.
pub async fn drive(
    downstream_config: DownstreamConfig,
    seed: u64,
    rate: f64,
    duration: Duration,
    build: impl FnOnce(Downstream) -> ClientStack,
) -> RunResult {
    let downstream = Downstream::new(downstream_config, seed);
    let stack = build(downstream.clone());
    let started = Instant::now();
    let records = Arc::new(Mutex::new(Vec::new()));
    let interval = Duration::from_secs_f64(1.0 / rate);
    let total = (duration.as_secs_f64() * rate).round() as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..total {
        // Open-loop load: callers arrive on schedule whatever the service's state, as real
        // traffic does; a closed loop would hide a retry storm by slowing the callers down.
        tokio::time::sleep_until(started + interval.mul_f64(n as f64)).await;
        let stack = stack.clone();
        let records = records.clone();
        tasks.spawn(async move {
            let sent = Instant::now();
            let result = stack.oneshot(SimRequest(n)).await;
            let record = RequestRecord {
                sent_at: sent - started,
                latency: sent.elapsed(),
                outcome: classify(&result),
            };
            records.lock().expect("records").push((n, record));
        });
    }
    while tasks.join_next().await.is_some() {}
    let mut records = Arc::try_unwrap(records)
        .map(|m| m.into_inner().expect("records"))
        .unwrap_or_else(|shared| shared.lock().expect("records").clone());
    records.sort_by_key(|(n, _)| *n);
    RunResult {
        requests: records.into_iter().map(|(_, r)| r).collect(),
        downstream_calls: downstream.calls(),
    }
}

/// Runs `f` on a fresh current-thread runtime with tokio's clock paused, so simulated time
/// jumps from one timer to the next.
pub fn run_paused<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("build a paused runtime")
        .block_on(f)
}
