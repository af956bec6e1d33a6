//! The adaptive concurrency limit against a simulated downstream with a fixed concurrency
//! capacity (a FIFO of `capacity` slots, 40-60 ms of work per call), driven by more callers
//! than it can serve, in tokio's paused time: the limit settles at the capacity, follows it
//! down when capacity drops and back up when it returns. Every call is timed
//! (`sample_every(1)`), so a sample is a finished call; the default times one in eight, which
//! one test checks converges too, in eight times the calls.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chassis_core::resilience::adaptive_limit::{
    AdaptiveLimitConfig, AdaptiveLimitLayer, LimitAlgorithm,
};
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::{BoxError, Error, ErrorKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service, ServiceExt, service_fn};

/// Callers: far more than the downstream's capacity, so the limit, not the demand, bounds
/// what is in flight.
const CALLERS: usize = 60;
/// Samples (finished calls) the limit is given to settle after each change of capacity.
const SETTLE: usize = 400;
/// Samples observed after settling.
const OBSERVE: usize = 1600;

/// A downstream serving `capacity` calls at a time, the others queued in arrival order.
#[derive(Clone)]
struct Downstream {
    slots: Arc<Semaphore>,
    rng: Arc<Mutex<StdRng>>,
}

impl Downstream {
    fn new(capacity: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(capacity)),
            rng: Arc::new(Mutex::new(StdRng::seed_from_u64(7))),
        }
    }

    /// Takes `n` slots away until the returned permit is dropped.
    async fn take_capacity(&self, n: u32) -> OwnedSemaphorePermit {
        self.slots.clone().acquire_many_owned(n).await.unwrap()
    }

    fn service(
        &self,
    ) -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
    {
        let this = self.clone();
        service_fn(move |()| {
            let this = this.clone();
            async move {
                let work =
                    Duration::from_micros(this.rng.lock().unwrap().random_range(40_000..60_000));
                let _slot = this.slots.acquire().await?;
                tokio::time::sleep(work).await;
                Ok::<_, BoxError>(())
            }
        })
    }
}

/// The limit after each finished call, while callers keep the downstream saturated.
struct Run {
    limits: Arc<Mutex<Vec<usize>>>,
    stop: Arc<AtomicBool>,
}

impl Run {
    fn start(layer: &AdaptiveLimitLayer, downstream: &Downstream) -> Self {
        let limits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let svc = layer.layer(downstream.service());
        for _ in 0..CALLERS {
            let (mut svc, layer, limits, stop) =
                (svc.clone(), layer.clone(), limits.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Relaxed) {
                    match svc.ready().await.unwrap().call(()).await {
                        Ok(()) => limits.lock().unwrap().push(layer.snapshot().limit),
                        Err(e) => {
                            assert!(Error::find_in(e.as_ref()).unwrap().is_rejection(), "{e}");
                            // A shed caller comes back a moment later.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            });
        }
        Self { limits, stop }
    }

    fn samples(&self) -> usize {
        self.limits.lock().unwrap().len()
    }

    /// Lets `n` more calls finish; returns the limits recorded after each.
    async fn next(&self, n: usize) -> Vec<usize> {
        let from = self.samples();
        while self.samples() < from + n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.limits.lock().unwrap()[from..from + n].to_vec()
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
    }
}

/// Share of `limits` within `lo..=hi`.
fn share_within(limits: &[usize], lo: usize, hi: usize) -> f64 {
    limits.iter().filter(|l| (lo..=hi).contains(*l)).count() as f64 / limits.len() as f64
}

fn median(limits: &[usize]) -> usize {
    let mut sorted = limits.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

/// Asserts that after `SETTLE` samples the limit sits at `capacity` to `capacity + 12` at
/// least 90 % of the time, with a median at most 8 above it: Vegas keeps `alpha..beta` = 3..6
/// calls queued above the capacity and grows in steps of `beta`; the rest of the time are the
/// no-load probes, which halve it briefly.
async fn settles_at(run: &Run, capacity: usize, phase: &str) {
    run.next(SETTLE).await;
    let limits = run.next(OBSERVE).await;
    let within = share_within(&limits, capacity, capacity + 12);
    let m = median(&limits);
    assert!(
        within >= 0.9 && (capacity..=capacity + 8).contains(&m),
        "{phase}: {:.0} % of limits in {capacity}..={}, median {m}: {limits:?}",
        within * 100.0,
        capacity + 12
    );
}

#[tokio::test(start_paused = true)]
async fn vegas_converges_to_the_capacity_follows_a_drop_and_recovers() {
    let layer = AdaptiveLimitLayer::new(
        AdaptiveLimitConfig::new("vegas")
            .algorithm(LimitAlgorithm::vegas())
            .initial_limit(50)
            .max_limit(200)
            .sample_every(1),
    )
    .unwrap();
    let downstream = Downstream::new(20);
    let run = Run::start(&layer, &downstream);
    // From 50, far above: down to the capacity.
    settles_at(&run, 20, "capacity 20").await;
    // Capacity falls to 8 ...
    let taken = downstream.take_capacity(12).await;
    settles_at(&run, 8, "capacity 8").await;
    // ... and comes back.
    drop(taken);
    settles_at(&run, 20, "capacity back to 20").await;
    let snapshot = layer.snapshot();
    assert!(snapshot.in_flight <= snapshot.limit, "{snapshot:?}");
}

#[tokio::test(start_paused = true)]
async fn vegas_grows_from_a_low_start_to_the_capacity() {
    let layer = AdaptiveLimitLayer::new(
        AdaptiveLimitConfig::new("vegas-up")
            .initial_limit(2)
            .max_limit(200)
            .sample_every(1),
    )
    .unwrap();
    let downstream = Downstream::new(30);
    let run = Run::start(&layer, &downstream);
    settles_at(&run, 30, "capacity 30 from limit 2").await;
}

#[tokio::test(start_paused = true)]
async fn vegas_with_the_default_sampling_converges_in_eight_times_the_calls() {
    let layer = AdaptiveLimitLayer::new(
        AdaptiveLimitConfig::new("vegas-sampled")
            .initial_limit(50)
            .max_limit(200),
    )
    .unwrap();
    let downstream = Downstream::new(20);
    let run = Run::start(&layer, &downstream);
    run.next(8 * SETTLE).await;
    let limits = run.next(OBSERVE).await;
    let within = share_within(&limits, 20, 32);
    assert!(within >= 0.9, "{:.0} %: {limits:?}", within * 100.0);
}

#[tokio::test(start_paused = true)]
async fn aimd_with_a_latency_threshold_stays_near_the_capacity() {
    let layer = AdaptiveLimitLayer::new(
        AdaptiveLimitConfig::new("aimd")
            .algorithm(LimitAlgorithm::Aimd {
                backoff_ratio: 0.9,
                latency_threshold: Some(Duration::from_millis(80)),
            })
            .initial_limit(5)
            .max_limit(200)
            .sample_every(1),
    )
    .unwrap();
    let downstream = Downstream::new(20);
    let run = Run::start(&layer, &downstream);
    run.next(SETTLE).await;
    let limits = run.next(OBSERVE).await;
    // AIMD saws between backing off below the capacity and creeping above it.
    let within = share_within(&limits, 14, 32);
    assert!(within >= 0.9, "{:.0} %: {limits:?}", within * 100.0);
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_drops_that_shrink_the_limit() {
    let layer = AdaptiveLimitLayer::new(
        AdaptiveLimitConfig::new("drops")
            .algorithm(LimitAlgorithm::aimd())
            .initial_limit(40)
            .sample_every(1),
    )
    .unwrap();
    let timing_out = service_fn(|()| async {
        Err::<(), BoxError>(Error::timeout(Duration::from_millis(100)).into())
    });
    let failing = service_fn(|()| async { Err::<(), BoxError>("refused".into()) });
    let mut failing = layer.layer(failing);
    for _ in 0..5 {
        let _ = failing.ready().await.unwrap().call(()).await;
    }
    assert_eq!(layer.snapshot().limit, 40, "plain failures are no samples");
    let mut timing_out = layer.layer(timing_out);
    for _ in 0..5 {
        let _ = timing_out.ready().await.unwrap().call(()).await;
    }
    // 40 * 0.9^5, floored at each step.
    assert_eq!(layer.snapshot().limit, 22);
    assert_eq!(layer.snapshot().in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn the_policy_sheds_over_the_limit_and_counts_a_call_with_its_retries_once() {
    let policy: ResiliencePolicy = toml::from_str(
        r#"
        name = "payments"
        adaptive_limit = { initial_limit = 1, min_limit = 1, max_limit = 1 }
        retry = { max_attempts = 3, backoff = { base = "10ms", jitter = "none" }, budget = { enabled = false } }
        "#,
    )
    .unwrap();
    let layer = policy.build().unwrap();
    let limit = layer.adaptive_limit().expect("configured").clone();
    assert_eq!(limit.name(), "payments");
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let svc = layer.layer(service_fn(move |()| {
        let n = counted.fetch_add(1, SeqCst);
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if n == 0 {
                Err::<(), BoxError>("first attempt fails".into())
            } else {
                Ok(())
            }
        }
    }));
    let first = tokio::spawn(svc.clone().oneshot(()));
    tokio::time::sleep(Duration::from_millis(60)).await;
    // The first call is between its attempts and still holds the one slot.
    assert_eq!(limit.snapshot().in_flight, 1);
    let err = svc.clone().oneshot(()).await.unwrap_err();
    let err = Error::from_boxed(err).unwrap();
    assert!(
        matches!(err.kind(), ErrorKind::ConcurrencyLimited { name, limit: 1 } if &**name == "payments"),
        "{err}"
    );
    assert!(err.is_rejection());
    first.await.unwrap().unwrap();
    assert_eq!(
        calls.load(SeqCst),
        2,
        "the shed call never reached the service"
    );
    assert_eq!(limit.snapshot().in_flight, 0);
}

#[test]
fn invalid_limits_are_typed_errors() {
    for config in [
        AdaptiveLimitConfig::new("x").min_limit(0),
        AdaptiveLimitConfig::new("x").initial_limit(10).max_limit(5),
    ] {
        let err = AdaptiveLimitLayer::new(config).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::InvalidConfig { .. }),
            "{err}"
        );
    }
}
