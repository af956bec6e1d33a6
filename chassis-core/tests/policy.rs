//! The composed `ResiliencePolicy`: its order's behaviour, loading from TOML, use under axum.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use chassis_core::resilience::bulkhead::BulkheadConfig;
use chassis_core::resilience::circuit_breaker::{
    CircuitBreakerConfig, SlidingWindowType, State, TokioClock,
};
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::resilience::rate_limiter::RateLimiterConfig;
use chassis_core::resilience::retry::{Backoff, Jitter, RetryBudgetConfig, RetryConfig};
use chassis_core::{BoxError, Error, ErrorKind};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

/// What the scripted downstream does on one attempt.
#[derive(Clone, Copy, Debug)]
enum Step {
    Ok,
    Fail,
    Hang,
}

/// A downstream following `script` (the last step repeats), counting attempts.
#[derive(Clone)]
struct Scripted {
    script: Arc<Vec<Step>>,
    calls: Arc<AtomicU32>,
}

impl Scripted {
    fn new(script: &[Step]) -> Self {
        Self {
            script: Arc::new(script.to_vec()),
            calls: Arc::new(AtomicU32::new(0)),
        }
    }

    fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Service<u32> for Scripted {
    type Response = u32;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<u32, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u32) -> Self::Future {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) as usize;
        let step = self.script[n.min(self.script.len() - 1)];
        Box::pin(async move {
            match step {
                Step::Ok => Ok(req),
                Step::Fail => Err("downstream failed".into()),
                Step::Hang => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(req)
                }
            }
        })
    }
}

fn retry(max_attempts: u32) -> RetryConfig {
    RetryConfig::new("default")
        .max_attempts(max_attempts)
        .backoff(
            Backoff::exponential(Duration::from_millis(100))
                .max(Duration::from_secs(10))
                .jitter(Jitter::None),
        )
        .budget(RetryBudgetConfig::disabled())
}

/// A breaker that stays closed for `min_calls` calls, then opens at 50 % failures.
fn breaker(min_calls: u32) -> CircuitBreakerConfig {
    CircuitBreakerConfig::new("default")
        .sliding_window(SlidingWindowType::CountBased, min_calls)
        .minimum_number_of_calls(min_calls)
        .failure_rate_threshold(50.0)
        .wait_duration_in_open_state(Duration::from_secs(60))
}

fn kind(err: BoxError) -> ErrorKind {
    Error::from_boxed(err)
        .expect("a chassis error")
        .kind()
        .clone()
}

#[tokio::test(start_paused = true)]
async fn attempt_timeout_sits_inside_retry() {
    let layer = ResiliencePolicy::new()
        .timeout(Duration::from_millis(500))
        .retry(retry(3))
        .circuit_breaker(breaker(100))
        .build()
        .unwrap();
    let down = Scripted::new(&[Step::Hang, Step::Ok]);
    let start = Instant::now();
    assert_eq!(layer.layer(down.clone()).oneshot(9).await.unwrap(), 9);
    assert_eq!(down.calls(), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(500 + 100));
    // The timed-out attempt was recorded by the breaker as a failure.
    let snapshot = layer.circuit_breaker().unwrap().snapshot();
    assert_eq!((snapshot.buffered_calls, snapshot.failed_calls), (2, 1));
}

#[tokio::test(start_paused = true)]
async fn the_breaker_records_every_attempt() {
    let layer = ResiliencePolicy::new()
        .retry(retry(3))
        .circuit_breaker(breaker(100))
        .build()
        .unwrap();
    let down = Scripted::new(&[Step::Fail]);
    let err = layer.layer(down.clone()).oneshot(1).await.unwrap_err();
    assert_eq!(kind(err), ErrorKind::RetriesExhausted { attempts: 3 });
    let snapshot = layer.circuit_breaker().unwrap().snapshot();
    assert_eq!(snapshot.buffered_calls, 3);
    assert_eq!(snapshot.failed_calls, 3);
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_stops_retrying_at_once() {
    let layer = ResiliencePolicy::new()
        .retry(retry(6))
        .circuit_breaker(breaker(2))
        .build()
        .unwrap();
    let handle = layer.circuit_breaker().unwrap();
    let down = Scripted::new(&[Step::Fail]);
    let svc = layer.layer(down.clone());

    // Attempts 1 and 2 fail and trip the breaker; the third is rejected before reaching the
    // downstream and ends the call: no further backoff waits, no more attempts.
    let start = Instant::now();
    let err = svc.clone().oneshot(1).await.unwrap_err();
    assert!(matches!(kind(err), ErrorKind::CircuitOpen { .. }));
    assert_eq!(down.calls(), 2);
    assert_eq!(start.elapsed(), Duration::from_millis(100 + 200));
    assert_eq!(handle.state(), State::Open);

    // The next call is rejected without any attempt or wait.
    let start = Instant::now();
    let err = svc.oneshot(2).await.unwrap_err();
    assert!(matches!(kind(err), ErrorKind::CircuitOpen { .. }));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(down.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_retried_call_holds_one_bulkhead_permit() {
    let layer = ResiliencePolicy::new()
        .bulkhead(BulkheadConfig::new("default").max_concurrent(1))
        .retry(retry(3))
        .build()
        .unwrap();
    let bulkhead = layer.bulkhead().unwrap().clone();
    let down = Scripted::new(&[Step::Fail, Step::Fail, Step::Ok]);
    let svc = layer.layer(down.clone());

    let retried = tokio::spawn(svc.clone().oneshot(1));
    tokio::time::sleep(Duration::from_millis(150)).await; // between attempts 2 and 3
    assert_eq!(down.calls(), 2);
    assert_eq!(bulkhead.available_permits(), 0);
    let err = svc.clone().oneshot(2).await.unwrap_err();
    assert!(matches!(kind(err), ErrorKind::BulkheadFull { .. }));

    // With one permit, the retries could not run if each attempt needed its own.
    assert_eq!(retried.await.unwrap().unwrap(), 1);
    assert_eq!(down.calls(), 3);
    assert_eq!(bulkhead.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_rate_limiter_meters_calls_not_attempts() {
    let layer = ResiliencePolicy::new()
        .rate_limit(RateLimiterConfig::new("default").rate(1).burst(1))
        .retry(retry(3))
        .build()
        .unwrap();
    let down = Scripted::new(&[Step::Fail, Step::Fail, Step::Ok]);
    let svc = layer.layer(down.clone());
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), 1);
    assert_eq!(down.calls(), 3);
    // 300 ms have passed; the next permit is due at 1 s.
    let err = svc.oneshot(2).await.unwrap_err();
    assert_eq!(
        kind(err),
        ErrorKind::RateLimited {
            name: "default".into(),
            retry_after: Duration::from_millis(700)
        }
    );
}

#[tokio::test(start_paused = true)]
async fn an_empty_policy_only_boxes_errors() {
    let layer = ResiliencePolicy::new().build().unwrap();
    let down = Scripted::new(&[Step::Fail]);
    let err = layer.layer(down.clone()).oneshot(1).await.unwrap_err();
    assert_eq!(err.to_string(), "downstream failed");
    assert!(layer.circuit_breaker().is_none() && layer.retry().is_none());
}

#[tokio::test(start_paused = true)]
async fn the_deadline_cuts_an_attempt_and_the_breaker_counts_it_as_cancelled() {
    let layer = ResiliencePolicy::new()
        .retry(retry(3).deadline(Duration::from_millis(250)))
        .circuit_breaker(breaker(100))
        .build()
        .unwrap();
    let down = Scripted::new(&[Step::Hang]);
    let start = Instant::now();
    let err = layer.layer(down.clone()).oneshot(1).await.unwrap_err();
    assert_eq!(
        kind(err),
        ErrorKind::DeadlineExceeded {
            after: Duration::from_millis(250),
            attempts: 1
        }
    );
    assert_eq!(start.elapsed(), Duration::from_millis(250));
    // The attempt cut short is recorded when the call's future is dropped: a failure by
    // default (`classify_cancelled`).
    let snapshot = layer.circuit_breaker().unwrap().snapshot();
    assert_eq!((snapshot.buffered_calls, snapshot.failed_calls), (1, 1));
}

#[tokio::test(start_paused = true)]
async fn permits_taken_by_poll_ready_come_back_when_the_service_is_dropped() {
    let layer = ResiliencePolicy::new()
        .bulkhead(BulkheadConfig::new("default").max_concurrent(1))
        .circuit_breaker(breaker(2).permitted_number_of_calls_in_half_open_state(1))
        .build()
        .unwrap()
        .with_clock(TokioClock::new());
    let handle = layer.circuit_breaker().unwrap();
    let bulkhead = layer.bulkhead().unwrap().clone();
    let mut svc = layer.layer(Scripted::new(&[Step::Ok]));
    svc.ready().await.unwrap();
    assert_eq!(bulkhead.available_permits(), 0);
    drop(svc);
    assert_eq!(bulkhead.available_permits(), 1);

    // The half-open probe permit of a readied, unused service is not lost either.
    let down = Scripted::new(&[Step::Fail, Step::Fail, Step::Ok]);
    let svc = layer.layer(down.clone());
    for _ in 0..2 {
        svc.clone().oneshot(1).await.unwrap_err();
    }
    assert_eq!(handle.state(), State::Open);
    tokio::time::advance(Duration::from_secs(61)).await;
    let mut probe = svc.clone();
    probe.ready().await.unwrap(); // takes the one half-open permit
    assert_eq!(handle.state(), State::HalfOpen);
    drop(probe);
    assert_eq!(svc.oneshot(3).await.unwrap(), 3);
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(bulkhead.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_call_gives_its_permits_back() {
    let layer = ResiliencePolicy::new()
        .bulkhead(BulkheadConfig::new("default").max_concurrent(1))
        .retry(retry(3))
        .circuit_breaker(breaker(100))
        .build()
        .unwrap();
    let bulkhead = layer.bulkhead().unwrap().clone();
    let mut svc = layer.layer(Scripted::new(&[Step::Hang]));
    let call = svc.ready().await.unwrap().call(1);
    let call = tokio::spawn(call);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(bulkhead.available_permits(), 0);
    call.abort();
    let _ = call.await;
    assert_eq!(bulkhead.available_permits(), 1);
    let snapshot = layer.circuit_breaker().unwrap().snapshot();
    assert_eq!((snapshot.buffered_calls, snapshot.failed_calls), (1, 1));
}

#[test]
fn policy_loads_from_toml() {
    let policy: ResiliencePolicy = toml::from_str(
        r#"
        name = "payments"
        timeout = "300ms"
        rate_limit = { rate = 200, period = "1s", burst = 50 }
        bulkhead = { max_concurrent = 16, max_wait = "50ms" }

        [retry]
        max_attempts = 4
        deadline = "1s"
        backoff = { base = "20ms", max = "200ms", jitter = "decorrelated" }
        budget = { ttl = "5s", min_retries_per_sec = 2, retry_ratio = 0.1 }

        [circuit_breaker]
        failure_rate_threshold = 25.0
        minimum_number_of_calls = 10
        wait_duration_in_open_state = "5s"
        "#,
    )
    .unwrap();
    let expected = ResiliencePolicy::new()
        .name("payments")
        .timeout(Duration::from_millis(300))
        .rate_limit(RateLimiterConfig::default().rate(200).burst(50))
        .bulkhead(
            BulkheadConfig::default()
                .max_concurrent(16)
                .max_wait(Duration::from_millis(50)),
        )
        .retry(
            RetryConfig::default()
                .max_attempts(4)
                .deadline(Duration::from_secs(1))
                .backoff(
                    Backoff::exponential(Duration::from_millis(20))
                        .max(Duration::from_millis(200))
                        .jitter(Jitter::Decorrelated),
                )
                .budget(RetryBudgetConfig::new(Duration::from_secs(5), 2, 0.1)),
        )
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .failure_rate_threshold(25.0)
                .minimum_number_of_calls(10)
                .wait_duration_in_open_state(Duration::from_secs(5)),
        );
    assert_eq!(policy, expected);

    let layer = policy.build().unwrap();
    assert_eq!(layer.circuit_breaker().unwrap().name(), "payments");
    assert_eq!(layer.bulkhead().unwrap().name(), "payments");
    assert_eq!(layer.rate_limit().unwrap().name(), "payments");
    assert_eq!(layer.retry().unwrap().name(), "payments");
    assert_eq!(layer.attempt_timeout(), Some(Duration::from_millis(300)));

    // Errors in any part surface when building, typed.
    let err = policy
        .clone()
        .retry(retry(3).attempt_timeout(Duration::from_secs(1)))
        .build()
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidConfig { .. }));
    let err = policy
        .clone()
        .bulkhead(BulkheadConfig::default().max_concurrent(0))
        .build()
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::InvalidConfig { .. }));
    assert!(toml::from_str::<ResiliencePolicy>("retries = {}").is_err());
}

mod under_axum {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::error_handling::HandleErrorLayer;
    use axum::http::{Request, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::get;

    /// GET requests have no body to replay, so they can be copied; others cannot.
    fn copy_bodyless(req: &Request<Body>) -> Option<Request<Body>> {
        if req.method() != axum::http::Method::GET {
            return None;
        }
        let mut copy = Request::new(Body::empty());
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.headers_mut() = req.headers().clone();
        Some(copy)
    }

    async fn to_response(err: BoxError) -> Response {
        let status = match Error::find_in(err.as_ref()).map(Error::kind) {
            Some(ErrorKind::RetriesExhausted { .. } | ErrorKind::DeadlineExceeded { .. }) => {
                StatusCode::GATEWAY_TIMEOUT
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        (status, err.to_string()).into_response()
    }

    #[tokio::test(start_paused = true)]
    async fn the_policy_layer_works_under_axum() {
        let hits = Arc::new(AtomicU32::new(0));
        let flaky = {
            let hits = hits.clone();
            move || {
                let n = hits.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        StatusCode::SERVICE_UNAVAILABLE
                    } else {
                        StatusCode::OK
                    }
                }
            }
        };
        let slow = || async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            "late"
        };
        let layer = ResiliencePolicy::new()
            .timeout(Duration::from_millis(200))
            .retry(retry(2))
            .circuit_breaker(breaker(100))
            .bulkhead(BulkheadConfig::new("default").max_concurrent(8))
            .rate_limit(RateLimiterConfig::new("default").rate(1000))
            .build()
            .unwrap()
            .with_request_cloner(copy_bodyless)
            .with_retry_classifier(|r: Result<&Response, &BoxError>| match r {
                Ok(res) => res.status() == StatusCode::SERVICE_UNAVAILABLE,
                Err(_) => true,
            });
        let app = Router::new()
            .route("/flaky", get(flaky))
            .route("/slow", get(slow))
            .layer(
                tower::ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(to_response))
                    .layer(layer),
            );

        let res = app
            .clone()
            .oneshot(Request::get("/flaky").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(hits.load(Ordering::SeqCst), 2, "the 503 was retried");

        let start = Instant::now();
        let res = app
            .oneshot(Request::get("/slow").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(start.elapsed(), Duration::from_millis(200 + 100 + 200));
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            "all 2 attempt(s) failed; last error: timed out after 200ms"
        );
    }
}
