//! Hedging and fallback, in tokio's paused time: the hedge wins and the loser is cancelled,
//! non-idempotent requests are never hedged, hedges spend the retry budget; the fallback
//! answers only the errors it was given, including an open breaker in a policy stack.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::time::Duration;

use chassis_core::resilience::circuit_breaker::CircuitBreakerConfig;
use chassis_core::resilience::fallback::{FallbackLayer, OnCircuitOpen, OnRejection, OnTimeout};
use chassis_core::resilience::hedge::{HedgeConfig, HedgeLayer};
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::resilience::retry::{BackoffRetryLayer, RetryBudgetConfig, RetryConfig};
use chassis_core::{BoxError, Error};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

/// Sets its flag when dropped: an attempt cancelled before it finished.
struct Cancelled(Arc<AtomicBool>);

impl Drop for Cancelled {
    fn drop(&mut self) {
        self.0.store(true, SeqCst);
    }
}

#[derive(Clone, Debug)]
struct Req {
    idempotent: bool,
}

/// A downstream whose first attempt of each call hangs for 10 s (flagging its cancellation)
/// and whose second answers in 5 ms.
#[derive(Clone, Default)]
struct FirstHangs {
    calls: Arc<AtomicU32>,
    first_cancelled: Arc<AtomicBool>,
    first_finished: Arc<AtomicBool>,
}

impl FirstHangs {
    fn service(
        &self,
    ) -> impl Service<Req, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static
    {
        let this = self.clone();
        service_fn(move |_: Req| {
            let n = this.calls.fetch_add(1, SeqCst);
            let (cancelled, finished) = (this.first_cancelled.clone(), this.first_finished.clone());
            async move {
                if n.is_multiple_of(2) {
                    let guard = Cancelled(cancelled);
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    finished.store(true, SeqCst);
                    std::mem::forget(guard);
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok::<_, BoxError>(n)
            }
        })
    }
}

fn hedging(delay_ms: u64) -> HedgeLayer<fn(&Req) -> bool> {
    HedgeLayer::new(
        HedgeConfig::new("test").delay(Duration::from_millis(delay_ms)),
        (|req: &Req| req.idempotent) as fn(&Req) -> bool,
    )
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn the_hedge_wins_and_the_slow_first_attempt_is_cancelled() {
    let downstream = FirstHangs::default();
    let layer = hedging(50);
    let svc = layer.layer(downstream.service());
    let started = Instant::now();
    let answer = svc.oneshot(Req { idempotent: true }).await.unwrap();
    assert_eq!(answer, 1, "the hedge (second call) answered");
    assert_eq!(started.elapsed(), Duration::from_millis(55));
    assert!(
        downstream.first_cancelled.load(SeqCst),
        "the loser was dropped"
    );
    assert!(!downstream.first_finished.load(SeqCst));
    assert_eq!(layer.hedges_sent(), 1);
    assert_eq!(downstream.calls.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_fast_first_attempt_sends_no_hedge() {
    let layer = hedging(50);
    let svc = layer.layer(service_fn(|_: Req| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, BoxError>(0)
    }));
    svc.oneshot(Req { idempotent: true }).await.unwrap();
    assert_eq!(layer.hedges_sent(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_non_idempotent_request_is_never_hedged() {
    let downstream = FirstHangs::default();
    let layer = hedging(50);
    let svc = layer.layer(downstream.service());
    let started = Instant::now();
    let answer = svc.oneshot(Req { idempotent: false }).await.unwrap();
    assert_eq!(answer, 0, "the only attempt answered");
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert_eq!(layer.hedges_sent(), 0);
    assert_eq!(downstream.calls.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn hedges_spend_the_retry_budget_and_stop_when_it_is_spent() {
    // One retry per second, nothing per call: room for exactly one hedge.
    let retry = BackoffRetryLayer::new(RetryConfig::new("budget").budget(RetryBudgetConfig::new(
        Duration::from_secs(1),
        1,
        0.0,
    )))
    .unwrap();
    let budget = retry.budget_handle().expect("a budget");
    let layer = hedging(50).with_retry_budget(budget.clone());
    let downstream = FirstHangs::default();
    let svc = layer.layer(downstream.service());
    let first = svc.clone().oneshot(Req { idempotent: true }).await.unwrap();
    assert_eq!(first, 1, "hedged");
    assert_eq!(budget.available_retries(), 0);
    // The budget is spent: the next slow call runs alone.
    let started = Instant::now();
    svc.oneshot(Req { idempotent: true }).await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert_eq!(layer.hedges_sent(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_percentile_delay_follows_the_calls_latencies() {
    let layer = HedgeLayer::new(
        HedgeConfig::new("p")
            .delay(Duration::from_millis(1))
            .percentile(50.0),
        |_: &u64| true,
    )
    .unwrap();
    let svc = layer.layer(service_fn(|ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok::<_, BoxError>(ms)
    }));
    // 40 ms calls, hedged after at first 1 ms: the hedge takes as long, so 40 ms calls.
    for _ in 0..64 {
        svc.clone().oneshot(40).await.unwrap();
    }
    assert_eq!(layer.current_delay(), Duration::from_millis(40));
}

#[tokio::test(start_paused = true)]
async fn the_fallback_answers_only_the_chosen_errors() {
    let failing_with = |error: fn() -> BoxError| {
        service_fn(move |_: ()| async move { Err::<&'static str, BoxError>(error()) })
    };
    let open = || -> BoxError { Error::circuit_open("db".into(), Duration::from_secs(1)).into() };
    let timeout = || -> BoxError { Error::timeout(Duration::from_millis(100)).into() };
    let plain = || -> BoxError { "invalid order".into() };

    let on_open = FallbackLayer::value(OnCircuitOpen, "cached");
    assert_eq!(
        on_open.layer(failing_with(open)).oneshot(()).await.unwrap(),
        "cached"
    );
    for other in [timeout, plain] {
        let err = on_open
            .layer(failing_with(other))
            .oneshot(())
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), other().to_string());
    }
    let on_timeout = FallbackLayer::value(OnTimeout, "late");
    assert_eq!(
        on_timeout
            .layer(failing_with(timeout))
            .oneshot(())
            .await
            .unwrap(),
        "late"
    );
    assert!(
        on_timeout
            .layer(failing_with(open))
            .oneshot(())
            .await
            .is_err()
    );
    // A closure chooses by anything in the error.
    let on_invalid = FallbackLayer::value(|e: &BoxError| e.to_string().contains("invalid"), "n/a");
    assert_eq!(
        on_invalid
            .layer(failing_with(plain))
            .oneshot(())
            .await
            .unwrap(),
        "n/a"
    );
    // Successes are never touched.
    let ok = service_fn(|_: ()| async { Ok::<_, BoxError>("fresh") });
    assert_eq!(on_open.layer(ok).oneshot(()).await.unwrap(), "fresh");
}

#[tokio::test(start_paused = true)]
async fn the_fallback_outside_a_policy_answers_for_an_open_breaker() {
    let policy = ResiliencePolicy::new()
        .name("recs")
        .circuit_breaker(CircuitBreakerConfig::new("recs"));
    let stack = policy.build().unwrap();
    let breaker = stack.circuit_breaker().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let inner = stack.layer(service_fn(move |_: ()| {
        counted.fetch_add(1, SeqCst);
        async { Ok::<_, BoxError>(vec!["live"]) }
    }));
    let svc = FallbackLayer::new(
        OnRejection,
        service_fn(|error: BoxError| async move {
            // The fallback service sees why it was asked.
            assert!(Error::find_in(error.as_ref()).unwrap().is_rejection());
            Ok::<_, BoxError>(vec!["default"])
        }),
    )
    .layer(inner);
    assert_eq!(svc.clone().oneshot(()).await.unwrap(), ["live"]);
    breaker.force_open();
    assert_eq!(svc.clone().oneshot(()).await.unwrap(), ["default"]);
    assert_eq!(calls.load(SeqCst), 1, "the open breaker kept the call away");
}
