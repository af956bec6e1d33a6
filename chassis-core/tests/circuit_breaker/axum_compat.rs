//! The layer under axum, unchanged: around a whole `Router`, and as a route layer behind
//! `HandleErrorLayer` (axum needs `Error = Infallible` there).

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use axum::routing::get;
use chassis_core::resilience::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerLayer, HttpStatusClassifier, SlidingWindowType, State,
    TokioClock,
};
use chassis_core::{BoxError, Error};
use http::{Request, StatusCode};
use tower::{Service, ServiceBuilder, ServiceExt};

fn config() -> CircuitBreakerConfig {
    CircuitBreakerConfig::new("axum")
        .sliding_window(SlidingWindowType::CountBased, 2)
        .minimum_number_of_calls(2)
        .wait_duration_in_open_state(Duration::from_secs(5))
        .permitted_number_of_calls_in_half_open_state(2)
}

fn get_req(path: &str) -> Request<Body> {
    Request::builder().uri(path).body(Body::empty()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn wraps_a_whole_router() {
    let layer = CircuitBreakerLayer::new(config())
        .unwrap()
        .with_clock(TokioClock::new())
        .with_classifier(HttpStatusClassifier::new());
    let handle = layer.handle();
    let router = Router::new().route("/ok", get(|| async { "fine" })).route(
        "/broken",
        get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
    );
    let mut svc = ServiceBuilder::new().layer(layer).service(router);

    let res = ServiceExt::<Request<Body>>::ready(&mut svc)
        .await
        .unwrap()
        .call(get_req("/ok"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let res = ServiceExt::<Request<Body>>::ready(&mut svc)
        .await
        .unwrap()
        .call(get_req("/missing"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND, "4xx is not a failure");
    assert_eq!(handle.snapshot().failure_rate, Some(0.0));
    let res = ServiceExt::<Request<Body>>::ready(&mut svc)
        .await
        .unwrap()
        .call(get_req("/broken"))
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    // The window of 2 now holds the 404 (success) and the 500 (failure): 50 %, open.
    assert_eq!(handle.state(), State::Open);
    let err: BoxError = ServiceExt::<Request<Body>>::ready(&mut svc)
        .await
        .err()
        .unwrap();
    assert!(Error::find_in(err.as_ref()).unwrap().is_rejection());
}

#[tokio::test(start_paused = true)]
async fn as_a_route_layer_with_handle_error_layer() {
    let layer = CircuitBreakerLayer::new(config())
        .unwrap()
        .with_clock(TokioClock::new())
        .with_classifier(HttpStatusClassifier::new());
    let handle = layer.handle();
    let app = Router::new()
        .route("/flaky", get(|| async { StatusCode::BAD_GATEWAY }))
        .route("/ok", get(|| async { "fine" }))
        .layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(|err: BoxError| async move {
                    match Error::find_in(err.as_ref()).and_then(Error::retry_after) {
                        Some(after) => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            [("retry-after", after.as_secs().to_string())],
                            err.to_string(),
                        ),
                        None => (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            [("retry-after", String::new())],
                            err.to_string(),
                        ),
                    }
                }))
                .layer(layer),
        );

    for _ in 0..2 {
        let res = app.clone().oneshot(get_req("/flaky")).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_GATEWAY);
    }
    assert_eq!(handle.state(), State::Open);
    let res = app.clone().oneshot(get_req("/ok")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "5");

    tokio::time::advance(Duration::from_secs(5)).await;
    // Two successful probes close it again.
    for _ in 0..2 {
        let res = app.clone().oneshot(get_req("/ok")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    assert_eq!(handle.state(), State::Closed);
}
