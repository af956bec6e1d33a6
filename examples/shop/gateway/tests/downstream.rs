//! The gateway's downstream clients against real HTTP servers on loopback: the service token
//! and trace context they attach, what they retry, and the chassis error each failure becomes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_http::auth::{SigningKey, TokenIssuer};
use chassis_http::client::{ClientBody, ClientErrorKind, HttpClient, IDEMPOTENCY_KEY};
use serde_json::json;
use shop_common::auth::verifier_from_pem;
use shop_gateway::downstream::{self, to_api_error};
use tracing::Instrument;

struct Downstream {
    url: String,
    hits: Arc<AtomicUsize>,
}

/// Serves `router` on a free loopback port; every request is counted.
async fn serve(router: Router<Arc<AtomicUsize>>) -> Downstream {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let router = router
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                counted.fetch_add(1, Ordering::SeqCst);
                next.run(req)
            },
        ))
        .with_state(hits.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Downstream { url, hits }
}

fn issuer() -> (TokenIssuer, String) {
    let key = SigningKey::generate_ed25519()
        .unwrap()
        .with_kid("k1")
        .unwrap();
    let public = key.public_key_pem().unwrap();
    let issuer = TokenIssuer::builder(shop_common::auth::ISSUER)
        .signing_key(key)
        .build()
        .unwrap();
    (issuer, public)
}

/// A fast policy so the tests do not wait: 300 ms per attempt, 3 attempts, tiny backoff, and a
/// breaker that needs many calls (tests that want it open force it).
fn fast_policy(name: &str) -> ResiliencePolicy {
    serde_json::from_value(json!({
        "name": name,
        "timeout": "300ms",
        "retry": {"max_attempts": 3, "deadline": "5s", "backoff": {"base": "1ms", "max": "5ms", "jitter": "full"}},
        "circuit_breaker": {"minimum_number_of_calls": 100, "sliding_window_size": 100, "wait_duration_in_open_state": "30s"}
    }))
    .unwrap()
}

fn client(name: &str, url: &str) -> HttpClient {
    let (issuer, _) = issuer();
    downstream::client(name, url, &issuer, Some(fast_policy(name))).unwrap()
}

fn post_req(path: &str, key: Option<&str>) -> http::Request<ClientBody> {
    let mut req = http::Request::post(path).header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header(IDEMPOTENCY_KEY, key);
    }
    req.body(ClientBody::from(b"{}".to_vec())).unwrap()
}

fn get_req(path: &str) -> http::Request<ClientBody> {
    http::Request::get(path)
        .body(ClientBody::default())
        .unwrap()
}

/// The chassis telemetry (no exporter), so spans carry OpenTelemetry contexts as in the
/// services, installed once for the whole process. Every test calls this first: tracing caches
/// each callsite's interest process-wide, and a thread-local dispatcher set while another
/// test's thread registers the client span's callsite can leave that callsite disabled for
/// good (a race in tracing-core), so a per-test `set_default` made the trace test flaky.
fn telemetry() {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    INSTALLED.call_once(|| {
        let guard = chassis_observability::Telemetry::builder(chassis_core::ServiceInfo::new(
            "gateway", "0",
        ))
        .ignore_env()
        .install_metrics_recorder(false)
        .writer(std::io::sink())
        .init()
        .unwrap();
        // Kept for the life of the test process.
        std::mem::forget(guard);
    });
}

#[tokio::test]
async fn attaches_a_service_token_for_the_audience_and_a_trace_context() {
    telemetry();
    let (issuer, public) = issuer();
    let seen = Arc::new(std::sync::Mutex::new(None::<HeaderMap>));
    let s = seen.clone();
    let d = serve(Router::new().route(
        "/internal/products",
        get(move |headers: HeaderMap| async move {
            *s.lock().unwrap() = Some(headers);
            axum::Json(json!({"success": true, "data": []}))
        }),
    ))
    .await;
    let inventory = downstream::client("inventory", &d.url, &issuer, None).unwrap();
    let span = tracing::info_span!("request");
    let mut parent = http::HeaderMap::new();
    span.in_scope(|| {
        chassis_observability::propagation::inject_current(
            &mut chassis_observability::propagation::HeaderInjector(&mut parent),
        )
    });
    let resp = inventory
        .execute(get_req("/internal/products"))
        .instrument(span)
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let headers = seen.lock().unwrap().take().unwrap();
    let token = headers["authorization"]
        .to_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    let identity = verifier_from_pem("inventory", &public, "k1")
        .unwrap()
        .verify(&token)
        .await
        .unwrap();
    assert_eq!(identity.subject, "gateway");
    // A token for another service is refused by that service.
    assert!(
        verifier_from_pem("orders", &public, "k1")
            .unwrap()
            .verify(&token)
            .await
            .is_err()
    );
    // The call continues the caller's trace (same trace id, the client span as parent).
    let trace_id = |h: &HeaderMap| -> String {
        let tp = h["traceparent"].to_str().unwrap();
        tp.split('-').nth(1).unwrap().to_owned()
    };
    assert!(
        parent.contains_key("traceparent"),
        "no trace context in the test span"
    );
    assert!(headers.contains_key("traceparent"), "{headers:?}");
    assert_eq!(trace_id(&headers), trace_id(&parent));
    assert_ne!(headers["traceparent"], parent["traceparent"]);
}

#[tokio::test]
async fn a_chassis_4xx_passes_through_with_its_code() {
    telemetry();
    let d = serve(Router::new().route(
        "/internal/orders/{id}",
        get(|| async {
            chassis_http::error::ApiError::new(
                StatusCode::NOT_FOUND,
                "order_not_found",
                "no such order",
            )
            .with_details(json!({"id": "o-1"}))
            .into_response()
        }),
    ))
    .await;
    let err = client("orders", &d.url)
        .execute(get_req("/internal/orders/o-1"))
        .await
        .unwrap_err();
    assert_eq!(d.hits.load(Ordering::SeqCst), 1, "a 404 is not retried");
    let api = to_api_error(&err);
    assert_eq!(api.status(), StatusCode::NOT_FOUND);
    assert_eq!(api.code(), "order_not_found");
    assert_eq!(api.message(), "no such order");
    assert_eq!(api.details(), Some(&json!({"id": "o-1"})));
}

#[tokio::test]
async fn a_5xx_is_retried_for_reads_and_keyed_posts_only_and_becomes_502() {
    telemetry();
    let d = serve(
        Router::new()
            .route("/r", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
            .route("/w", post(|| async { StatusCode::INTERNAL_SERVER_ERROR })),
    )
    .await;
    let c = client("orders", &d.url);
    let err = c.execute(get_req("/r")).await.unwrap_err();
    assert_eq!((err.attempts(), d.hits.load(Ordering::SeqCst)), (3, 3));
    let api = to_api_error(&err);
    assert_eq!(
        (api.status(), api.code()),
        (StatusCode::BAD_GATEWAY, "upstream_failed")
    );

    // A placement without an Idempotency-Key is sent once: it might have been applied.
    let err = c.execute(post_req("/w", None)).await.unwrap_err();
    assert_eq!((err.attempts(), d.hits.load(Ordering::SeqCst)), (1, 4));
    // With a key the downstream applies it once, so it is retried.
    let err = c.execute(post_req("/w", Some("k-1"))).await.unwrap_err();
    assert_eq!((err.attempts(), d.hits.load(Ordering::SeqCst)), (3, 7));
}

#[tokio::test]
async fn a_503_keeps_its_retry_after() {
    telemetry();
    let d = serve(Router::new().route(
        "/w",
        post(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [("retry-after", "7")],
                "down for maintenance",
            )
        }),
    ))
    .await;
    let err = client("orders", &d.url)
        .execute(post_req("/w", None))
        .await
        .unwrap_err();
    let api = to_api_error(&err);
    assert_eq!(
        (api.status(), api.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert_eq!(api.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn unreachable_is_503_and_a_timeout_is_504() {
    telemetry();
    // A port that was free a moment ago: nothing listens there.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = client("inventory", &format!("http://127.0.0.1:{port}"))
        .execute(get_req("/internal/products"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), &ClientErrorKind::Unreachable);
    let api = to_api_error(&err);
    assert_eq!(
        (api.status(), api.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    );
    assert!(api.retry_after().is_some());

    let d = serve(Router::new().route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    ))
    .await;
    let err = client("inventory", &d.url)
        .execute(get_req("/slow"))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ClientErrorKind::TimedOut { .. }),
        "{err:?}"
    );
    let api = to_api_error(&err);
    assert_eq!(
        (api.status(), api.code()),
        (StatusCode::GATEWAY_TIMEOUT, "timeout")
    );
}

#[tokio::test]
async fn an_open_circuit_answers_503_with_retry_after_without_calling() {
    telemetry();
    let d = serve(Router::new().route("/r", get(|| async { "ok" }))).await;
    let c = client("notifications", &d.url);
    c.circuit_breaker().unwrap().force_open();
    let err = c.execute(get_req("/r")).await.unwrap_err();
    assert_eq!(d.hits.load(Ordering::SeqCst), 0);
    let api = to_api_error(&err);
    assert_eq!(
        (api.status(), api.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "circuit_open")
    );
    assert!(api.retry_after().is_some_and(|d| d > Duration::ZERO));
}
