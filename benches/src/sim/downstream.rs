//! The synthetic downstream: a tower service whose failure rate, latency distribution and
//! outage windows follow a [`DownstreamConfig`], in virtual (tokio paused) time.
//!
//! The behaviour itself is [`DownstreamModel`] of the `chassis-scenario` crate, which the shop's
//! provider stand-in plays over HTTP too; this module gives it tokio's (paused) clock and a
//! tower face.

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chassis_core::BoxError;
use tokio::time::Instant;

pub use chassis_scenario::{CallPlan, DownstreamConfig, DownstreamModel, Outage};

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
    model: DownstreamModel,
    /// Every attempt that reached the downstream: (time since start, request number).
    calls: Vec<(Duration, u64)>,
}

/// The synthetic downstream service. Clones share state.
#[derive(Debug, Clone)]
pub struct Downstream {
    started: Instant,
    state: Arc<Mutex<State>>,
}

impl Downstream {
    /// A downstream starting its clock now, with a seeded random source.
    pub fn new(config: DownstreamConfig, seed: u64) -> Self {
        Self {
            started: Instant::now(),
            state: Arc::new(Mutex::new(State {
                model: DownstreamModel::new(config, seed),
                calls: Vec::new(),
            })),
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
        let CallPlan { latency, fails } = state.model.begin(now);
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
            state.model.end();
        }
    }
}
