//! Behaviour of the circuit breaker layer, in tokio's paused time.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use chassis_core::resilience::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, Classify, Jitter,
    OpenStateBackoff, Outcome, SlidingWindowType, State, StateTransition, TokioClock,
    TransitionReason,
};
use chassis_core::{BoxError, Error, ErrorKind};
use tokio::sync::broadcast;
use tower::{Layer, Service, ServiceExt};

mod axum_compat;
mod metrics_emitted;

/// What the downstream should do with a request.
#[derive(Debug, Clone, Copy)]
enum Req {
    Ok,
    Fail,
    /// Succeed after this long.
    Slow(Duration),
    /// Never complete.
    Hang,
}

#[derive(Debug)]
struct Boom;

impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("boom")
    }
}

impl std::error::Error for Boom {}

/// The downstream: counts the calls that reach it.
#[derive(Debug, Clone, Default)]
struct Downstream {
    calls: Arc<AtomicUsize>,
}

impl Downstream {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<Req> for Downstream {
    type Response = &'static str;
    type Error = Boom;
    type Future = Pin<Box<dyn Future<Output = Result<&'static str, Boom>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Boom>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            match req {
                Req::Ok => Ok("ok"),
                Req::Fail => Err(Boom),
                Req::Slow(d) => {
                    tokio::time::sleep(d).await;
                    Ok("slow")
                }
                Req::Hang => std::future::pending().await,
            }
        })
    }
}

type Svc = chassis_core::resilience::circuit_breaker::CircuitBreaker<
    Downstream,
    chassis_core::resilience::circuit_breaker::DefaultClassifier,
>;

fn setup(config: CircuitBreakerConfig) -> (Svc, CircuitBreakerHandle, Downstream) {
    let layer = CircuitBreakerLayer::new(config)
        .expect("valid config")
        .with_clock(TokioClock::new());
    let handle = layer.handle();
    let downstream = Downstream::default();
    (layer.layer(downstream.clone()), handle, downstream)
}

/// A breaker over a count window of `n` calls, all of which must be present to evaluate.
fn count_config(n: u32) -> CircuitBreakerConfig {
    CircuitBreakerConfig::new("test")
        .sliding_window(SlidingWindowType::CountBased, n)
        .minimum_number_of_calls(n)
        .wait_duration_in_open_state(Duration::from_secs(10))
        .permitted_number_of_calls_in_half_open_state(2)
}

async fn call(svc: &mut Svc, req: Req) -> Result<&'static str, BoxError> {
    svc.ready().await?.call(req).await
}

fn circuit_open(err: &BoxError) -> Option<(String, Duration)> {
    match Error::find_in(err.as_ref())?.kind() {
        ErrorKind::CircuitOpen { name, retry_after } => Some((name.to_string(), *retry_after)),
        _ => None,
    }
}

fn next_event(rx: &mut broadcast::Receiver<StateTransition>) -> StateTransition {
    rx.try_recv().expect("a transition event")
}

/// Trips a `count_config` breaker with failures.
async fn trip(svc: &mut Svc, n: u32) {
    for _ in 0..n {
        let _ = call(svc, Req::Fail).await;
    }
}

#[tokio::test(start_paused = true)]
async fn closed_to_open_on_failure_rate() {
    let (mut svc, handle, _) = setup(count_config(10));
    let mut events = handle.subscribe();
    for _ in 0..5 {
        call(&mut svc, Req::Ok).await.unwrap();
    }
    for _ in 0..4 {
        assert!(call(&mut svc, Req::Fail).await.is_err());
    }
    let snap = handle.snapshot();
    assert_eq!(snap.state, State::Closed);
    assert_eq!((snap.buffered_calls, snap.failed_calls), (9, 4));
    assert_eq!(snap.failure_rate, None, "below the minimum number of calls");

    // The 10th call makes the rate 5/10 = 50 %: at the threshold, the breaker opens.
    let err = call(&mut svc, Req::Fail).await.unwrap_err();
    assert!(
        err.downcast_ref::<Boom>().is_some(),
        "the call itself still failed normally"
    );
    assert_eq!(handle.state(), State::Open);
    let ev = next_event(&mut events);
    assert_eq!((ev.from, ev.to), (State::Closed, State::Open));
    assert_eq!(
        ev.reason,
        TransitionReason::FailureRateExceeded { rate: 50.0 }
    );
    assert_eq!(ev.open_for, Some(Duration::from_secs(10)));
    assert_eq!(&*ev.name, "test");
}

#[tokio::test(start_paused = true)]
async fn failure_rate_below_threshold_stays_closed() {
    let (mut svc, handle, _) = setup(count_config(10));
    for i in 0..100 {
        let req = if i % 3 == 0 { Req::Fail } else { Req::Ok };
        let _ = call(&mut svc, req).await;
    }
    let snap = handle.snapshot();
    assert_eq!(snap.state, State::Closed);
    assert_eq!(snap.buffered_calls, 10);
    assert!(snap.failure_rate.unwrap() < 50.0);
}

#[tokio::test(start_paused = true)]
async fn minimum_number_of_calls_is_respected() {
    let config = count_config(100).minimum_number_of_calls(5);
    let (mut svc, handle, _) = setup(config);
    for _ in 0..4 {
        let _ = call(&mut svc, Req::Fail).await;
    }
    // 100 % failures, but only 4 calls: not evaluated yet.
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().failure_rate, None);
    // A *success* lifts the count to the minimum with the rate at 80 %: that opens it.
    call(&mut svc, Req::Ok).await.unwrap();
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn closed_to_open_on_slow_call_rate() {
    let config = count_config(4)
        .slow_call_duration_threshold(Duration::from_millis(100))
        .slow_call_rate_threshold(50.0);
    let (mut svc, handle, _) = setup(config);
    let mut events = handle.subscribe();
    call(&mut svc, Req::Ok).await.unwrap();
    call(&mut svc, Req::Slow(Duration::from_millis(99)))
        .await
        .unwrap();
    call(&mut svc, Req::Slow(Duration::from_millis(100)))
        .await
        .unwrap();
    assert_eq!(handle.state(), State::Closed);
    call(&mut svc, Req::Slow(Duration::from_secs(3)))
        .await
        .unwrap();
    assert_eq!(handle.state(), State::Open);
    let ev = next_event(&mut events);
    assert_eq!(
        ev.reason,
        TransitionReason::SlowCallRateExceeded { rate: 50.0 }
    );
    let snap = handle.snapshot();
    assert_eq!((snap.slow_calls, snap.failed_calls), (2, 0));
}

#[tokio::test(start_paused = true)]
async fn time_window_forgets_old_calls() {
    let config = CircuitBreakerConfig::new("time")
        .sliding_window(SlidingWindowType::TimeBased, 10)
        .minimum_number_of_calls(4)
        .failure_rate_threshold(60.0);
    let (mut svc, handle, _) = setup(config);
    for _ in 0..3 {
        let _ = call(&mut svc, Req::Fail).await;
    }
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!(handle.snapshot().buffered_calls, 0, "expired");
    for _ in 0..3 {
        let _ = call(&mut svc, Req::Fail).await;
    }
    assert_eq!(
        handle.state(),
        State::Closed,
        "only 3 calls in the last 10 s"
    );
    let _ = call(&mut svc, Req::Fail).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn time_window_opens_when_successes_expire() {
    let config = CircuitBreakerConfig::new("time")
        .sliding_window(SlidingWindowType::TimeBased, 10)
        .minimum_number_of_calls(4)
        .failure_rate_threshold(60.0);
    let (mut svc, handle, _) = setup(config);
    for _ in 0..4 {
        call(&mut svc, Req::Ok).await.unwrap();
    }
    tokio::time::advance(Duration::from_secs(5)).await;
    for _ in 0..4 {
        let _ = call(&mut svc, Req::Fail).await;
    }
    assert_eq!(handle.snapshot().failure_rate, Some(50.0));
    assert_eq!(handle.state(), State::Closed);
    // The successes leave the window; the next call (a success) sees 4 of 5 failed.
    tokio::time::advance(Duration::from_secs(5)).await;
    call(&mut svc, Req::Ok).await.unwrap();
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn open_rejects_fast_with_name_and_remaining_wait() {
    let (mut svc, handle, downstream) = setup(count_config(2));
    trip(&mut svc, 2).await;
    assert_eq!(handle.state(), State::Open);
    let before = downstream.calls();

    tokio::time::advance(Duration::from_secs(3)).await;
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let err = match svc.poll_ready(&mut cx) {
        Poll::Ready(Err(e)) => e,
        other => panic!("expected a rejection from poll_ready, got {other:?}"),
    };
    let (name, retry_after) = circuit_open(&err).expect("CircuitOpen");
    assert_eq!(name, "test");
    assert_eq!(retry_after, Duration::from_secs(7));
    assert_eq!(downstream.calls(), before, "the downstream saw nothing");
    assert_eq!(handle.snapshot().not_permitted_calls, 1);
}

#[tokio::test(start_paused = true)]
async fn open_to_half_open_after_wait_then_closed() {
    let (mut svc, handle, _) = setup(count_config(2));
    let mut events = handle.subscribe();
    trip(&mut svc, 2).await;
    let _ = next_event(&mut events);

    tokio::time::advance(Duration::from_millis(9_999)).await;
    assert!(circuit_open(&call(&mut svc, Req::Ok).await.unwrap_err()).is_some());
    tokio::time::advance(Duration::from_millis(1)).await;
    call(&mut svc, Req::Ok).await.unwrap();
    let ev = next_event(&mut events);
    assert_eq!(
        (ev.from, ev.to, ev.reason),
        (State::Open, State::HalfOpen, TransitionReason::WaitElapsed)
    );
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().buffered_calls, 1, "one probe done");

    call(&mut svc, Req::Ok).await.unwrap();
    let ev = next_event(&mut events);
    assert_eq!(
        (ev.from, ev.to, ev.reason),
        (
            State::HalfOpen,
            State::Closed,
            TransitionReason::ProbesSucceeded
        )
    );
    let snap = handle.snapshot();
    assert_eq!(
        (snap.state, snap.buffered_calls),
        (State::Closed, 0),
        "fresh window"
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_to_open_when_probes_fail() {
    let (mut svc, handle, _) = setup(count_config(2));
    let mut events = handle.subscribe();
    trip(&mut svc, 2).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    call(&mut svc, Req::Ok).await.unwrap();
    let _ = call(&mut svc, Req::Fail).await;
    assert_eq!(handle.state(), State::Open);
    let events: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    let last = events.last().unwrap();
    assert_eq!((last.from, last.to), (State::HalfOpen, State::Open));
    assert_eq!(
        last.reason,
        TransitionReason::ProbesFailed {
            failure_rate: 50.0,
            slow_call_rate: 0.0
        }
    );
    // Rejected again for the whole wait.
    let (_, retry_after) = circuit_open(&call(&mut svc, Req::Ok).await.unwrap_err()).unwrap();
    assert_eq!(retry_after, Duration::from_secs(10));
}

/// A probe-holding call: polled once (so it is in flight), kept alive by the caller.
fn start(svc: &mut Svc, req: Req) -> impl Future<Output = Result<&'static str, BoxError>> + use<> {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        other => panic!("not ready: {other:?}"),
    }
    svc.call(req)
}

#[tokio::test(start_paused = true)]
async fn half_open_rejects_calls_beyond_the_permitted_probes() {
    let (mut svc, handle, downstream) =
        setup(count_config(2).permitted_number_of_calls_in_half_open_state(2));
    trip(&mut svc, 2).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    let before = downstream.calls();
    let p1 = start(&mut svc, Req::Hang);
    let p2 = start(&mut svc, Req::Hang);
    assert_eq!(handle.state(), State::HalfOpen);
    for _ in 0..5 {
        let err = call(&mut svc, Req::Ok).await.unwrap_err();
        assert!(
            circuit_open(&err).is_some(),
            "excess call must be rejected: {err}"
        );
    }
    assert_eq!(
        downstream.calls(),
        before + 2,
        "only the two probes went through"
    );
    assert_eq!(handle.snapshot().not_permitted_calls, 5);
    drop((p1, p2));
}

#[tokio::test(start_paused = true)]
async fn dropped_probe_releases_permit_and_counts_as_failure() {
    let config = count_config(2).permitted_number_of_calls_in_half_open_state(1);
    let (mut svc, handle, _) = setup(config);
    let mut events = handle.subscribe();
    trip(&mut svc, 2).await;
    tokio::time::advance(Duration::from_secs(10)).await;

    // The probe is cut off by an outer timeout, which drops its future.
    let probe = start(&mut svc, Req::Hang);
    assert_eq!(handle.state(), State::HalfOpen);
    let timed_out = tokio::time::timeout(Duration::from_secs(1), probe).await;
    assert!(timed_out.is_err());

    // Not stuck half-open: the dropped probe counted as a failure and re-opened the breaker.
    assert_eq!(handle.state(), State::Open);
    let last = std::iter::from_fn(|| events.try_recv().ok())
        .last()
        .unwrap();
    assert_eq!(
        last.reason,
        TransitionReason::ProbesFailed {
            failure_rate: 100.0,
            slow_call_rate: 0.0
        }
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_call_in_closed_state_counts_as_failure() {
    let (mut svc, handle, _) = setup(count_config(4));
    let f = start(&mut svc, Req::Hang);
    drop(f);
    let snap = handle.snapshot();
    assert_eq!((snap.buffered_calls, snap.failed_calls), (1, 1));
}

/// A classifier that treats a cancelled call as harmless and `Boom` as a failure.
#[derive(Debug, Clone, Copy)]
struct CancelIsFine;

impl<T> Classify<T, Boom> for CancelIsFine {
    fn classify(&self, result: Result<&T, &Boom>) -> Outcome {
        if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }

    fn classify_cancelled(&self) -> Outcome {
        Outcome::Ignored
    }
}

#[tokio::test(start_paused = true)]
async fn cancellation_is_recorded_as_the_classifier_says() {
    let layer =
        CircuitBreakerLayer::new(count_config(2).permitted_number_of_calls_in_half_open_state(1))
            .unwrap()
            .with_clock(TokioClock::new())
            .with_classifier(CancelIsFine);
    let handle = layer.handle();
    let mut svc = layer.layer(Downstream::default());
    for _ in 0..2 {
        let _ = svc.ready().await.unwrap().call(Req::Fail).await;
    }
    tokio::time::advance(Duration::from_secs(10)).await;
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    drop(svc.call(Req::Hang));
    // Ignored: permit handed back, nothing recorded, still half-open, and a new probe may go.
    assert_eq!(handle.state(), State::HalfOpen);
    assert_eq!(handle.snapshot().buffered_calls, 0);
    svc.ready().await.unwrap().call(Req::Ok).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn permit_from_poll_ready_is_released_when_service_dropped() {
    let (mut svc, handle, _) =
        setup(count_config(2).permitted_number_of_calls_in_half_open_state(1));
    trip(&mut svc, 2).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    let mut other = svc.clone();
    // `svc` takes the only probe permit in poll_ready ...
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(matches!(svc.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    // ... a clone does not inherit it, and is rejected ...
    assert!(matches!(other.poll_ready(&mut cx), Poll::Ready(Err(_))));
    // ... until `svc` is dropped without calling.
    drop(svc);
    assert!(matches!(other.poll_ready(&mut cx), Poll::Ready(Ok(()))));
    other.call(Req::Ok).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn half_open_max_wait_reopens_when_probes_hang() {
    let config = count_config(2)
        .permitted_number_of_calls_in_half_open_state(1)
        .max_wait_duration_in_half_open_state(Duration::from_secs(5));
    let (mut svc, handle, _) = setup(config);
    let mut events = handle.subscribe();
    trip(&mut svc, 2).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    let hanging = start(&mut svc, Req::Hang);
    assert!(circuit_open(&call(&mut svc, Req::Ok).await.unwrap_err()).is_some());
    assert_eq!(handle.state(), State::HalfOpen);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(circuit_open(&call(&mut svc, Req::Ok).await.unwrap_err()).is_some());
    assert_eq!(handle.state(), State::Open);
    let last = std::iter::from_fn(|| events.try_recv().ok())
        .last()
        .unwrap();
    assert_eq!(last.reason, TransitionReason::HalfOpenTimedOut);
    // The stale probe finishing later changes nothing.
    drop(hanging);
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn open_wait_grows_with_backoff_and_restarts_after_recovery() {
    let config = count_config(2)
        .permitted_number_of_calls_in_half_open_state(1)
        .wait_duration_in_open_state(Duration::from_secs(10))
        .open_state_backoff(OpenStateBackoff::new(Duration::from_secs(40)).jitter(Jitter::None));
    let (mut svc, handle, _) = setup(config);
    let mut events = handle.subscribe();
    let mut open_for = || {
        std::iter::from_fn(|| events.try_recv().ok())
            .filter(|e| e.to == State::Open)
            .map(|e| e.open_for.unwrap())
            .last()
            .unwrap()
    };
    trip(&mut svc, 2).await;
    let mut waits = vec![open_for()];
    for _ in 0..3 {
        let wait = *waits.last().unwrap();
        tokio::time::advance(wait - Duration::from_millis(1)).await;
        assert!(circuit_open(&call(&mut svc, Req::Fail).await.unwrap_err()).is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        let _ = call(&mut svc, Req::Fail).await; // the probe fails: open again, longer
        waits.push(open_for());
    }
    let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, [10, 20, 40, 40]);

    // Recovery restarts the sequence.
    tokio::time::advance(Duration::from_secs(40)).await;
    call(&mut svc, Req::Ok).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    trip(&mut svc, 2).await;
    assert_eq!(open_for(), Duration::from_secs(10));
}

#[tokio::test(start_paused = true)]
async fn jittered_backoff_stays_within_bounds() {
    let config = count_config(1)
        .permitted_number_of_calls_in_half_open_state(1)
        .wait_duration_in_open_state(Duration::from_secs(8))
        .open_state_backoff(OpenStateBackoff::new(Duration::from_secs(64)));
    let (mut svc, handle, _) = setup(config);
    let mut events = handle.subscribe();
    trip(&mut svc, 1).await;
    for exp in [8u64, 16, 32, 64, 64] {
        let ev = std::iter::from_fn(|| events.try_recv().ok())
            .filter(|e| e.to == State::Open)
            .last()
            .unwrap();
        let wait = ev.open_for.unwrap().as_secs();
        assert!(
            (exp / 2..=exp).contains(&wait),
            "equal jitter of {exp}s gave {wait}s"
        );
        tokio::time::advance(Duration::from_secs(wait)).await;
        let _ = call(&mut svc, Req::Fail).await;
    }
}

#[tokio::test(start_paused = true)]
async fn forced_open_holds_until_reset() {
    let (mut svc, handle, downstream) = setup(count_config(2));
    let mut events = handle.subscribe();
    handle.force_open();
    assert_eq!(handle.state(), State::ForcedOpen);
    tokio::time::advance(Duration::from_secs(3600)).await;
    let err = call(&mut svc, Req::Ok).await.unwrap_err();
    assert!(circuit_open(&err).is_some());
    assert_eq!(downstream.calls(), 0);
    handle.reset();
    call(&mut svc, Req::Ok).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    let evs: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| (e.to, e.reason))
        .collect();
    assert_eq!(
        evs,
        [
            (State::ForcedOpen, TransitionReason::Forced),
            (State::Closed, TransitionReason::Reset)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn forced_closed_never_opens_until_reset() {
    let (mut svc, handle, _) = setup(count_config(2));
    trip(&mut svc, 2).await;
    assert_eq!(handle.state(), State::Open);
    handle.force_closed();
    trip(&mut svc, 20).await;
    assert_eq!(handle.state(), State::ForcedClosed);
    handle.reset();
    assert_eq!(handle.snapshot().buffered_calls, 0);
    trip(&mut svc, 2).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn subscribers_see_every_transition_in_order() {
    let (mut svc, handle, _) =
        setup(count_config(2).permitted_number_of_calls_in_half_open_state(1));
    let mut events = handle.subscribe();
    trip(&mut svc, 2).await;
    tokio::time::advance(Duration::from_secs(10)).await;
    call(&mut svc, Req::Ok).await.unwrap();
    let seen: Vec<_> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|e| (e.from, e.to))
        .collect();
    assert_eq!(
        seen,
        [
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_are_not_recorded() {
    let layer = CircuitBreakerLayer::new(count_config(2))
        .unwrap()
        .with_clock(TokioClock::new())
        .with_classifier(|r: Result<&&'static str, &Boom>| match r {
            Ok(_) => Outcome::Success,
            Err(_) => Outcome::Ignored,
        });
    let handle = layer.handle();
    let mut svc = layer.layer(Downstream::default());
    for _ in 0..10 {
        let _ = svc.ready().await.unwrap().call(Req::Fail).await;
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().buffered_calls, 0);
}

#[tokio::test(start_paused = true)]
async fn http_status_classifier_counts_5xx_not_4xx() {
    use chassis_core::resilience::circuit_breaker::HttpStatusClassifier;
    let layer = CircuitBreakerLayer::new(count_config(4))
        .unwrap()
        .with_clock(TokioClock::new())
        .with_classifier(HttpStatusClassifier::new());
    let handle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(|status: u16| async move {
        Ok::<_, Boom>(http::Response::builder().status(status).body(()).unwrap())
    }));
    for status in [404, 400, 200, 503] {
        svc.ready().await.unwrap().call(status).await.unwrap();
    }
    let snap = handle.snapshot();
    assert_eq!((snap.buffered_calls, snap.failed_calls), (4, 1));
    assert_eq!(snap.state, State::Closed);
    svc.ready().await.unwrap().call(500).await.unwrap();
    assert_eq!(handle.state(), State::Open, "2 of the last 4 were 5xx");
}

#[tokio::test(start_paused = true)]
async fn direct_permits_without_tower() {
    let handle = CircuitBreakerHandle::with_clock(
        count_config(2).permitted_number_of_calls_in_half_open_state(1),
        TokioClock::new(),
    )
    .unwrap();
    handle.try_acquire().unwrap().record(Outcome::Failure);
    handle.try_acquire().unwrap().record(Outcome::Failure);
    let err = handle.try_acquire().unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::CircuitOpen { .. }));
    tokio::time::advance(Duration::from_secs(10)).await;
    let probe = handle.try_acquire().unwrap();
    assert!(handle.try_acquire().is_err(), "only one probe");
    drop(probe); // unrecorded: the permit goes back
    handle.try_acquire().unwrap().record(Outcome::Success);
    assert_eq!(handle.state(), State::Closed);
}

#[test]
fn invalid_config_is_an_error() {
    let err =
        CircuitBreakerLayer::new(CircuitBreakerConfig::default().failure_rate_threshold(150.0))
            .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::InvalidConfig { .. }),
        "{err}"
    );
}

#[test]
fn breaker_is_shared_across_threads() {
    // Real threads, real (coarse) clock: 4 threads × 2500 failing calls through one breaker
    // open it exactly once.
    let handle = CircuitBreakerHandle::new(
        CircuitBreakerConfig::new("threads")
            .sliding_window(SlidingWindowType::TimeBased, 60)
            .minimum_number_of_calls(1000),
    )
    .unwrap();
    let mut events = handle.subscribe();
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                let mut rejected = 0;
                for _ in 0..2500 {
                    match handle.try_acquire() {
                        Ok(p) => p.record(Outcome::Failure),
                        Err(_) => rejected += 1,
                    }
                }
                rejected
            })
        })
        .collect();
    let rejected: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    assert_eq!(handle.state(), State::Open);
    assert!(
        rejected >= 10_000 - 1100,
        "most calls after the trip are rejected: {rejected}"
    );
    let opened: Vec<_> = std::iter::from_fn(|| events.try_recv().ok()).collect();
    assert_eq!(opened.len(), 1, "{opened:?}");
}

#[test]
fn services_and_futures_are_send_and_debug_is_short() {
    fn assert_send_sync<T: Send + Sync + 'static>(_: &T) {}
    fn assert_send<T: Send + 'static>(_: &T) {}
    let (mut svc, handle, _) = setup(count_config(100));
    assert_send_sync(&svc);
    assert_send_sync(&handle);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let fut = svc.call(Req::Ok);
    assert_send(&fut);
    drop(fut);
    let debug = format!("{handle:?}");
    assert!(debug.contains("\"test\""), "{debug}");
    assert!(
        debug.len() < 2_000,
        "no counter arrays in Debug: {} bytes",
        debug.len()
    );
}
