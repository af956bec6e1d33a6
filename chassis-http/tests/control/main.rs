//! The admin API (`chassis_http::control`) against a real service: its breaker steered over
//! HTTP while its client calls a real downstream, the tokens it asks for, its error bodies and
//! its event stream.

#[path = "../common/mod.rs"]
mod common;
mod support;

use chassis_http::client::ClientErrorKind;
use common::call_json as call;
use http::StatusCode;
use http_body_util::BodyExt as _;
use support::{ADMIN_AUDIENCE, TestService, issuer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_is_401_and_a_token_without_the_admin_scope_403() {
    let issuer = issuer();
    let service = TestService::start("orders", issuer.key_set()).await;
    let url = format!("{}/admin/control", service.admin_url());

    let (status, body) = call("GET", &url, None, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(body["success"], false);

    let reader = issuer.issue(ADMIN_AUDIENCE, &["orders:read"]).unwrap();
    let (status, body) = call("GET", &url, Some(reader.as_str()), "").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let forced = format!("{url}/breaker/inventory/force_open");
    let (status, _) = call("POST", &forced, Some(reader.as_str()), "").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        service.client.circuit_breaker().unwrap().state().as_str(),
        "closed",
        "a refused action changes nothing"
    );

    let admin = issuer.issue(ADMIN_AUDIENCE, &["admin"]).unwrap();
    let (status, body) = call("GET", &url, Some(admin.as_str()), "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["service"], "orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_forced_open_over_the_api_rejects_calls_until_reset() {
    let issuer = issuer();
    let service = TestService::start("orders", issuer.key_set()).await;
    let token = issuer.issue(ADMIN_AUDIENCE, &["admin"]).unwrap();
    let token = Some(token.as_str());
    let url = format!("{}/admin/control", service.admin_url());

    let (_, listing) = call("GET", &url, token, "").await;
    let components = listing["components"].as_array().unwrap();
    let breaker = components.iter().find(|c| c["kind"] == "breaker").unwrap();
    assert_eq!(breaker["name"], "inventory");
    assert_eq!(breaker["state"]["state"], "closed");
    assert_eq!(
        breaker["actions"],
        serde_json::json!(["force_open", "force_closed", "reset"])
    );
    let health = components.iter().find(|c| c["kind"] == "health").unwrap();
    assert_eq!(health["state"]["checks"][0]["name"], "database");
    assert_eq!(health["state"]["checks"][0]["status"], "UP");
    assert!(health["state"]["checks"][0]["latency_ms"].is_number());

    service.get_stock().await.unwrap();

    // Forcing open twice leaves the same state, and each answer is that state.
    for _ in 0..2 {
        let (status, state) = call(
            "POST",
            &format!("{url}/breaker/inventory/force_open"),
            token,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{state}");
        assert_eq!(state["state"]["state"], "forced_open");
    }
    let err = service.get_stock().await.unwrap_err();
    assert!(
        matches!(err.kind(), ClientErrorKind::CircuitOpen { .. }),
        "{err}"
    );
    let (_, one) = call("GET", &format!("{url}/breaker/inventory"), token, "").await;
    assert_eq!(one["state"]["counters"]["not_permitted"], 1);

    let (status, state) = call("POST", &format!("{url}/breaker/inventory/reset"), token, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(state["state"]["state"], "closed");
    service.get_stock().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_json_error_body_with_a_trace_id() {
    let issuer = issuer();
    let service = TestService::start("orders", issuer.key_set()).await;
    let token = issuer.issue(ADMIN_AUDIENCE, &["admin"]).unwrap();
    let token = Some(token.as_str());
    let url = format!("{}/admin/control", service.admin_url());

    let cases = [
        (
            "POST",
            "/breaker/inventory/explode",
            "",
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/breaker/inventory/reset",
            "[1]",
            StatusCode::BAD_REQUEST,
        ),
        (
            "POST",
            "/breaker/inventory/reset",
            "{not json",
            StatusCode::BAD_REQUEST,
        ),
        ("POST", "/breaker/payments/reset", "", StatusCode::NOT_FOUND),
        ("GET", "/outbox/orders", "", StatusCode::NOT_FOUND),
        (
            "DELETE",
            "/breaker/inventory",
            "",
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        ("POST", "/health/health/reset", "", StatusCode::BAD_REQUEST),
    ];
    for (method, path, body, expected) in cases {
        let (status, answer) = call(method, &format!("{url}{path}"), token, body).await;
        assert_eq!(status, expected, "{method} {path}: {answer}");
        assert_eq!(answer["success"], false, "{answer}");
        let trace_id = answer["traceId"]
            .as_str()
            .unwrap_or_else(|| panic!("{answer}"));
        assert_eq!(trace_id.len(), 32, "{answer}");
    }
    assert_eq!(
        service.client.circuit_breaker().unwrap().state().as_str(),
        "closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_sends_the_state_and_then_each_change() {
    let issuer = issuer();
    let service = TestService::start("orders", issuer.key_set()).await;
    let token = issuer.issue(ADMIN_AUDIENCE, &["admin"]).unwrap();
    let url = format!("{}/admin/control", service.admin_url());

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client
        .request(
            http::Request::get(format!("{url}/stream"))
                .header("authorization", format!("Bearer {}", token.as_str()))
                .body(Default::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut body = response.into_body();
    let mut buffer = String::new();
    let mut next_event = async || -> serde_json::Value {
        loop {
            if let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let data = event
                    .lines()
                    .find_map(|l| l.strip_prefix("data: "))
                    .unwrap_or_else(|| panic!("no data in {event:?}"));
                assert!(event.starts_with("event: state\n"), "{event:?}");
                return serde_json::from_str(data).unwrap();
            }
            let frame = body.frame().await.unwrap().unwrap();
            if let Ok(data) = frame.into_data() {
                buffer.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    };
    let first = next_event().await;
    assert_eq!(first["service"], "orders");
    assert!(first["at"].as_u64().unwrap() > 0);
    assert_eq!(first["components"][0]["state"]["state"], "closed");

    let (status, _) = call(
        "POST",
        &format!("{url}/breaker/inventory/force_open"),
        Some(token.as_str()),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The change arrives with the next event (the action wakes the sampler); events already
    // sampled before the action may come first.
    let mut seen = Vec::new();
    loop {
        let event = next_event().await;
        let state = event["components"][0]["state"]["state"]
            .as_str()
            .unwrap()
            .to_owned();
        seen.push(state.clone());
        if state == "forced_open" {
            assert!(event["components"][0]["rates"]["not_permitted"].is_number());
            break;
        }
        assert!(seen.len() < 3, "no forced_open in {seen:?}");
    }
}
