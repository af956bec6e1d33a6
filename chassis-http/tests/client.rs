//! The resilient client against a misbehaving test server on 127.0.0.1: retries, idempotency,
//! Retry-After, the breaker, timeouts, refused connections, and what reaches the server.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use axum::{Json, Router};
use bytes::Bytes;
use chassis_core::resilience::circuit_breaker::{
    CircuitBreakerConfig, SlidingWindowType, State as BreakerState,
};
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::resilience::retry::{Backoff, Jitter, RetryBudgetConfig, RetryConfig};
use chassis_http::auth::ServiceTokenSource;
use chassis_http::client::{AllowRetry, ClientErrorKind, HttpClient};
use common::LogBuffer;
use http::{Method, Request};
use http_body_util::Full;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use serde_json::{Value, json};

/// What the test server saw, per path.
#[derive(Clone, Default)]
struct Seen {
    hits: Arc<Mutex<HashMap<String, usize>>>,
    headers: Arc<Mutex<Vec<HeaderMap>>>,
    failures_left: Arc<AtomicUsize>,
}

impl Seen {
    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
    fn hit(&self, path: &str, headers: &HeaderMap) {
        *self
            .hits
            .lock()
            .unwrap()
            .entry(path.to_owned())
            .or_default() += 1;
        self.headers.lock().unwrap().push(headers.clone());
    }
}

/// A server that misbehaves on purpose:
/// - `/flaky`: 503 while `failures_left > 0`, then 200 `{"ok":true}`;
/// - `/down`: always 503;
/// - `/busy/{secs}`: 503 with `Retry-After: secs` on the first hit, then 200;
/// - `/slow`: answers after 5 s;
/// - `/echo`: 200 with the request headers it saw;
/// - `/missing`: 404 with a chassis JSON error body.
async fn misbehaving_server(seen: Seen) -> String {
    let app = Router::new()
        .route(
            "/flaky",
            any(|State(s): State<Seen>, headers: HeaderMap| async move {
                s.hit("/flaky", &headers);
                let left = s.failures_left.load(Ordering::SeqCst);
                if left > 0 {
                    s.failures_left.store(left - 1, Ordering::SeqCst);
                    (StatusCode::SERVICE_UNAVAILABLE, "try again").into_response()
                } else {
                    Json(json!({ "ok": true })).into_response()
                }
            }),
        )
        .route(
            "/down",
            any(|State(s): State<Seen>, headers: HeaderMap| async move {
                s.hit("/down", &headers);
                (StatusCode::SERVICE_UNAVAILABLE, "down")
            }),
        )
        .route(
            "/busy/{secs}",
            get(|State(s): State<Seen>, Path(secs): Path<u64>, headers: HeaderMap| async move {
                let path = format!("/busy/{secs}");
                s.hit(&path, &headers);
                if s.hits(&path) == 1 {
                    (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", secs.to_string())], "busy")
                        .into_response()
                } else {
                    Json(json!({ "ok": true })).into_response()
                }
            }),
        )
        .route(
            "/slow",
            get(|State(s): State<Seen>, headers: HeaderMap| async move {
                s.hit("/slow", &headers);
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route(
            "/echo",
            get(|State(s): State<Seen>, headers: HeaderMap| async move {
                s.hit("/echo", &headers);
                let map: HashMap<String, String> = headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
                    .collect();
                Json(map)
            }),
        )
        .route(
            "/missing",
            get(|| async {
                (
                    StatusCode::NOT_FOUND,
                    Json(json!({"success": false, "error": {"code": "order_not_found", "message": "no order 7", "details": null}, "traceId": null})),
                )
            }),
        )
        .with_state(seen);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn fast_retry(max_attempts: u32) -> RetryConfig {
    RetryConfig::new("test")
        .max_attempts(max_attempts)
        .backoff(
            Backoff::exponential(Duration::from_millis(5))
                .max(Duration::from_millis(20))
                .jitter(Jitter::None),
        )
        .budget(RetryBudgetConfig::disabled())
}

fn client(base: &str, policy: ResiliencePolicy) -> HttpClient {
    HttpClient::builder("downstream")
        .base_url(base)
        .policy(policy)
        .build()
        .unwrap()
}

#[tokio::test]
async fn retries_a_503_then_succeeds() {
    let seen = Seen::default();
    seen.failures_left.store(2, Ordering::SeqCst);
    let base = misbehaving_server(seen.clone()).await;
    let client = client(&base, ResiliencePolicy::new().retry(fast_retry(3)));
    let body: Value = client.get_json("/flaky").await.unwrap();
    assert_eq!(body, json!({ "ok": true }));
    assert_eq!(seen.hits("/flaky"), 3);
}

#[tokio::test]
async fn gives_up_with_status_5xx_after_the_last_attempt() {
    let seen = Seen::default();
    let base = misbehaving_server(seen.clone()).await;
    let client = client(&base, ResiliencePolicy::new().retry(fast_retry(3)));
    let err = client.get_json::<Value>("/down").await.unwrap_err();
    assert!(
        matches!(err.kind(), ClientErrorKind::Status5xx { status, .. } if status.as_u16() == 503),
        "{err:?}"
    );
    assert_eq!(err.attempts(), 3);
    assert!(err.retries_exhausted());
    assert_eq!(seen.hits("/down"), 3);
}

#[tokio::test]
async fn does_not_retry_post_unless_idempotent() {
    let seen = Seen::default();
    let base = misbehaving_server(seen.clone()).await;
    let client = client(&base, ResiliencePolicy::new().retry(fast_retry(3)));

    let err = client
        .post_json::<_, Value>("/down", &json!({"a": 1}))
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ClientErrorKind::Status5xx { .. }));
    assert_eq!(err.attempts(), 1);
    assert_eq!(seen.hits("/down"), 1, "POST is not retried by default");

    // With an Idempotency-Key it is.
    let err = client
        .post_json_idempotent::<_, Value>("/down", "order-42", &json!({"a": 1}))
        .await
        .unwrap_err();
    assert_eq!(err.attempts(), 3);
    assert_eq!(seen.hits("/down"), 4);
    let keyed = seen.headers.lock().unwrap().last().unwrap().clone();
    assert_eq!(keyed["idempotency-key"], "order-42");

    // With the per-request opt-in too.
    let mut req = Request::builder()
        .method(Method::POST)
        .uri("/down")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
    req.extensions_mut().insert(AllowRetry);
    let response = client.send(req).await.unwrap();
    assert_eq!(
        response.status(),
        503,
        "send returns the last response as is"
    );
    assert_eq!(seen.hits("/down"), 7);
}

#[tokio::test]
async fn honours_retry_after() {
    let seen = Seen::default();
    let base = misbehaving_server(seen.clone()).await;
    // The backoff alone would wait 5 ms; the server asks for 1 s.
    let client = client(&base, ResiliencePolicy::new().retry(fast_retry(2)));
    let start = Instant::now();
    let body: Value = client.get_json("/busy/1").await.unwrap();
    assert_eq!(body, json!({ "ok": true }));
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(seen.hits("/busy/1"), 2);

    // A Retry-After beyond the client's limit is not waited for: the 503 comes back at once.
    let impatient = HttpClient::builder("downstream")
        .base_url(&base)
        .policy(ResiliencePolicy::new().retry(fast_retry(2)))
        .max_retry_after(Duration::from_secs(2))
        .build()
        .unwrap();
    let err = impatient.get_json::<Value>("/busy/120").await.unwrap_err();
    assert!(
        matches!(err.kind(), ClientErrorKind::Status5xx { .. }),
        "{err:?}"
    );
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(seen.hits("/busy/120"), 1);
}

#[tokio::test]
async fn breaker_opens_rejects_fast_and_recovers() {
    let seen = Seen::default();
    let base = misbehaving_server(seen.clone()).await;
    let wait = Duration::from_millis(300);
    let policy = ResiliencePolicy::new().circuit_breaker(
        CircuitBreakerConfig::new("downstream")
            .sliding_window(SlidingWindowType::CountBased, 4)
            .minimum_number_of_calls(4)
            .failure_rate_threshold(50.0)
            .wait_duration_in_open_state(wait)
            .permitted_number_of_calls_in_half_open_state(1),
    );
    let client = client(&base, policy);
    let breaker = client.circuit_breaker().unwrap().clone();

    for _ in 0..4 {
        let err = client.get_json::<Value>("/down").await.unwrap_err();
        assert!(matches!(err.kind(), ClientErrorKind::Status5xx { .. }));
    }
    assert_eq!(breaker.state(), BreakerState::Open);
    assert_eq!(seen.hits("/down"), 4);

    // Open: rejected locally, fast, without a request on the wire.
    let start = Instant::now();
    let err = client.get_json::<Value>("/down").await.unwrap_err();
    assert!(
        matches!(err.kind(), ClientErrorKind::CircuitOpen { .. }),
        "{err:?}"
    );
    assert!(err.is_rejection());
    assert!(err.retry_after().unwrap() <= wait);
    assert!(
        start.elapsed() < wait,
        "rejection must not wait for the downstream"
    );
    assert_eq!(seen.hits("/down"), 4);

    // After the wait a probe goes through; the downstream has recovered, the breaker closes.
    seen.failures_left.store(0, Ordering::SeqCst);
    tokio::time::sleep(wait + Duration::from_millis(50)).await;
    let body: Value = client.get_json("/flaky").await.unwrap();
    assert_eq!(body, json!({ "ok": true }));
    assert_eq!(breaker.state(), BreakerState::Closed);
}

#[tokio::test]
async fn attempt_timeout_is_timed_out() {
    let seen = Seen::default();
    let base = misbehaving_server(seen.clone()).await;
    let client = client(
        &base,
        ResiliencePolicy::new()
            .timeout(Duration::from_millis(150))
            .retry(fast_retry(2)),
    );
    let start = Instant::now();
    let err = client.get_json::<Value>("/slow").await.unwrap_err();
    assert_eq!(
        err.kind(),
        &ClientErrorKind::TimedOut {
            after: Duration::from_millis(150)
        },
        "{err:?}"
    );
    assert_eq!(err.attempts(), 2);
    assert!(err.retries_exhausted());
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "did not wait for the slow answer"
    );
    assert_eq!(seen.hits("/slow"), 2);
}

#[tokio::test]
async fn connection_refused_is_unreachable() {
    // A port that was just free: bind, note it, close.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = client(
        &format!("http://{addr}"),
        ResiliencePolicy::new().retry(fast_retry(3)),
    );
    let err = client.get_json::<Value>("/anything").await.unwrap_err();
    assert_eq!(err.kind(), &ClientErrorKind::Unreachable, "{err:?}");
    assert_eq!(err.attempts(), 3, "connect errors are retried");
    assert_eq!(err.downstream(), "downstream");
    assert!(err.retries_exhausted());

    // A POST is not retried, but its failure is still typed by cause.
    let err = client
        .post_json::<_, Value>("/anything", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &ClientErrorKind::Unreachable, "{err:?}");
    assert_eq!(err.attempts(), 1);
    assert!(!err.retries_exhausted());
}

#[tokio::test]
async fn overall_deadline_is_timed_out() {
    let seen = Seen::default();
    let base = misbehaving_server(seen.clone()).await;
    let deadline = Duration::from_millis(300);
    let client = client(
        &base,
        ResiliencePolicy::new().retry(fast_retry(5).deadline(deadline)),
    );
    let err = client.get_json::<Value>("/slow").await.unwrap_err();
    assert_eq!(
        err.kind(),
        &ClientErrorKind::TimedOut { after: deadline },
        "{err:?}"
    );
}

#[tokio::test]
async fn full_bulkhead_is_overloaded_and_rejected_locally() {
    let seen = Seen::default();
    let base = misbehaving_server(seen.clone()).await;
    let client = client(
        &base,
        ResiliencePolicy::new().bulkhead(
            chassis_core::resilience::bulkhead::BulkheadConfig::new("downstream")
                .max_concurrent(1)
                .max_wait(Duration::ZERO),
        ),
    );
    let busy = client.clone();
    let in_flight = tokio::spawn(async move { busy.get_json::<Value>("/slow").await });
    // Wait until the slow call holds the permit (it has reached the server).
    tokio::time::timeout(Duration::from_secs(5), async {
        while seen.hits("/slow") == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let err = client.get_json::<Value>("/echo").await.unwrap_err();
    assert_eq!(
        err.kind(),
        &ClientErrorKind::Overloaded { retry_after: None },
        "{err:?}"
    );
    assert!(err.is_rejection());
    assert_eq!(seen.hits("/echo"), 0);
    in_flight.abort();
}

#[tokio::test]
async fn oversized_response_is_invalid() {
    let seen = Seen::default();
    let base = misbehaving_server(seen).await;
    let client = HttpClient::builder("downstream")
        .base_url(&base)
        .max_response_bytes(8)
        .build()
        .unwrap();
    let err = client.get_json::<Value>("/flaky").await.unwrap_err();
    assert!(
        matches!(err.kind(), ClientErrorKind::InvalidResponse { .. }),
        "{err:?}"
    );
    // The downstream did answer 200: a caller relaying a write must know it succeeded.
    assert_eq!(err.status(), Some(StatusCode::OK), "{err:?}");
    assert!(err.answered_success());
}

#[tokio::test]
async fn status_4xx_carries_the_body_and_is_not_retried() {
    let seen = Seen::default();
    let base = misbehaving_server(seen.clone()).await;
    let client = client(&base, ResiliencePolicy::new().retry(fast_retry(3)));
    let err = client.get_json::<Value>("/missing").await.unwrap_err();
    assert!(
        matches!(err.kind(), ClientErrorKind::Status4xx { status, .. } if status.as_u16() == 404)
    );
    assert_eq!(err.attempts(), 1);
    assert!(!err.answered_success());
    assert_eq!(err.api_error().unwrap().error.code, "order_not_found");
    // Wrong JSON shape: InvalidResponse.
    let err = client.get_json::<Vec<u32>>("/flaky").await.unwrap_err();
    assert!(
        matches!(err.kind(), ClientErrorKind::InvalidResponse { .. }),
        "{err:?}"
    );
    assert!(err.answered_success(), "{err:?}");
    // No base URL and a relative path: InvalidRequest, nothing sent.
    let bare = HttpClient::builder("x").build().unwrap();
    let err = bare.get_json::<Value>("/flaky").await.unwrap_err();
    assert!(matches!(err.kind(), ClientErrorKind::InvalidRequest { .. }));
}

#[tokio::test]
async fn traceparent_and_service_token_reach_the_server_and_metrics_are_recorded() {
    let recorder = common::recorder();
    let handle = recorder.handle();
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let logs = LogBuffer::default();
    let _tracing = common::log_spans_to(&logs);

    let seen = Seen::default();
    let base = misbehaving_server(seen.clone()).await;
    let (issuer, verifier) = common::issuer_and_verifier("orders", "downstream");
    let client = HttpClient::builder("downstream")
        .base_url(&base)
        .service_token(ServiceTokenSource::new(issuer, "downstream", &["echo:read"]).unwrap())
        .build()
        .unwrap();

    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let parent = SpanContext::new(
        trace_id,
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let cx = opentelemetry::Context::new().with_remote_span_context(parent);
    let _attached = cx.attach();

    let echoed: HashMap<String, String> = client.get_json("/echo").await.unwrap();
    let traceparent = &echoed["traceparent"];
    assert!(
        traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{traceparent}"
    );
    let token = echoed["authorization"].strip_prefix("Bearer ").unwrap();
    let identity = verifier.verify(token).await.unwrap();
    assert_eq!(identity.subject, "orders");
    assert!(identity.has_scope("echo:read"));

    let text = handle.render();
    assert!(
        text.contains("http_client_request_duration_seconds"),
        "{text}"
    );
    assert!(text.contains("http_request_method=\"GET\""), "{text}");
    assert!(text.contains("http_response_status_code=\"200\""), "{text}");

    // One client span per attempt, with the semantic-convention fields.
    let spans = logs.text();
    assert!(spans.contains("HTTP client request"), "{spans}");
    assert!(spans.contains("otel.kind=\"client\""), "{spans}");
    assert!(spans.contains("http.request.method=GET"), "{spans}");
    assert!(spans.contains("http.response.status_code=200"), "{spans}");
    assert!(!spans.contains(token), "the token must not be logged");
}

#[tokio::test]
async fn a_custom_hyper_client_is_used_as_given() {
    let seen = Seen::default();
    let base = misbehaving_server(seen.clone()).await;
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let client = HttpClient::builder("downstream")
        .base_url(&base)
        .hyper_client(hyper)
        .default_header(
            http::HeaderName::from_static("x-caller"),
            http::HeaderValue::from_static("billing"),
        )
        .build()
        .unwrap();
    let echoed: HashMap<String, String> = client.get_json("/echo").await.unwrap();
    assert_eq!(echoed["x-caller"], "billing");
    assert_eq!(seen.hits("/echo"), 1);

    // Only http:// and https:// URLs are accepted, absolute or against the base URL.
    let req = Request::get("ftp://files.internal/x")
        .body(Full::default())
        .unwrap();
    let err = client.send(req).await.unwrap_err();
    assert!(
        matches!(err.kind(), ClientErrorKind::InvalidRequest { .. }),
        "{err}"
    );
}
