//! Observability of the chassis HTTP server (server span, access log), in a test binary of its
//! own: every test here installs a subscriber, so no test without one races the callsite
//! interest cache of `tracing`.

#[path = "../server/support.rs"]
mod support;

use std::time::Duration;

use chassis_http::layers::StandardLayers;
use chassis_http::server::Server;
use http::{Request, StatusCode};
use http_body_util::Full;
use opentelemetry::trace::{SpanKind, Status as OtelStatus, TracerProvider as _};
use support::*;
use tracing_subscriber::layer::SubscriberExt;

const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn traceparent_trace_id_reaches_error_body_and_server_span() {
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);
    // Callsites another test thread registered while this subscriber was being set can keep a
    // stale "disabled" interest (tracing caches it process-wide): recompute it now.
    tracing::callsite::rebuild_interest_cache();

    // Layers applied with `Router::layer` run after routing: the route is known.
    let router =
        app(AppState::default()).layer(StandardLayers::new().timeout(Duration::from_millis(100)));
    let server = start(Server::bind(test_config()).await.unwrap(), router).await;
    let client = client();

    let req = Request::get(format!("http://{}/sleep/2000", server.addr))
        .header("traceparent", TRACEPARENT)
        .header("user-agent", "chassis-test/1")
        .body(Full::default())
        .unwrap();
    let reply = send(&client, req).await;
    let body = reply.error_body(StatusCode::GATEWAY_TIMEOUT, "timeout");
    assert_eq!(body["traceId"], TRACE_ID);

    // A handler-made error (the helper) carries it too.
    let req = Request::get(format!("http://{}/orders/7", server.addr))
        .header("traceparent", TRACEPARENT)
        .body(Full::default())
        .unwrap();
    let body = send(&client, req)
        .await
        .error_body(StatusCode::NOT_FOUND, "not_found");
    assert_eq!(body["traceId"], TRACE_ID);
    assert_eq!(body["error"]["details"]["orderId"], 7);
    server.stop().await;

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let span = spans
        .iter()
        .find(|s| {
            s.attributes.iter().any(|kv| {
                // An int attribute, as the HTTP semantic conventions have it.
                kv.key.as_str() == "http.response.status_code"
                    && kv.value == opentelemetry::Value::I64(504)
            })
        })
        .unwrap_or_else(|| panic!("no 504 server span in {spans:#?}"));
    let attr = |key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.as_str().into_owned())
    };
    assert_eq!(span.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(span.parent_span_id.to_string(), PARENT_SPAN_ID);
    assert_eq!(span.span_kind, SpanKind::Server);
    assert!(
        matches!(span.status, OtelStatus::Error { .. }),
        "{:?}",
        span.status
    );
    assert_eq!(attr("http.request.method").as_deref(), Some("GET"));
    assert_eq!(attr("url.path").as_deref(), Some("/sleep/2000"));
    assert_eq!(
        attr("user_agent.original").as_deref(),
        Some("chassis-test/1")
    );
    assert_eq!(attr("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(attr("error.type").as_deref(), Some("504"));
    #[cfg(feature = "axum")]
    {
        assert_eq!(span.name, "GET /sleep/{ms}");
        assert_eq!(attr("http.route").as_deref(), Some("/sleep/{ms}"));
    }
    #[cfg(not(feature = "axum"))]
    assert_eq!(span.name, "GET");
}

/// Sends this thread's events, as JSON lines, into `logs` until the guard drops.
fn json_logs_into(logs: &LogBuffer) -> tracing::subscriber::DefaultGuard {
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    // Callsites another test thread registered while this subscriber was being set can keep a
    // stale "disabled" interest (tracing caches it process-wide): recompute it now.
    tracing::callsite::rebuild_interest_cache();
    guard
}

#[tokio::test]
async fn access_log_line_per_request() {
    let logs = LogBuffer::default();
    let _guard = json_logs_into(&logs);

    let server = start_default_app().await;
    let req = Request::get(format!("http://{}/hello?x=1", server.addr))
        .header("x-request-id", "log-me-1")
        .header("traceparent", TRACEPARENT)
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client(), req).await.status, StatusCode::OK);
    get(&client(), server.addr, "/panic").await;
    // Probes are not logged.
    get(&client(), server.addr, "/health/live").await;
    server.stop().await;

    let access: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l["target"] == "chassis_http::access")
        .collect();
    assert_eq!(access.len(), 2, "{:#?}", logs.lines());
    let line = &access[0]["fields"];
    assert_eq!(line["message"], "request completed");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/hello");
    assert_eq!(line["status"], 200);
    assert_eq!(line["request_id"], "log-me-1");
    assert_eq!(line["trace_id"], TRACE_ID);
    assert!(line["duration_ms"].as_f64().unwrap() >= 0.0);
    // Emitted inside the server span.
    assert_eq!(access[0]["span"]["name"], "HTTP request");
    assert_eq!(access[1]["fields"]["status"], 500);
}

#[tokio::test]
async fn sampled_access_log_keeps_every_error() {
    let logs = LogBuffer::default();
    let _guard = json_logs_into(&logs);

    // No line for successful requests; errors are logged whatever the sample.
    let server = start_app(
        StandardLayers::new().access_log_sample(0),
        started_registry(),
        AppState::default(),
    )
    .await;
    for path in ["/hello", "/orders/7", "/hello", "/panic", "/hello"] {
        get(&client(), server.addr, path).await;
    }
    server.stop().await;

    let statuses: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l["target"] == "chassis_http::access")
        .map(|l| l["fields"]["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [404, 500], "{:#?}", logs.lines());
}

/// The chassis subscriber (JSON lines at `info` into the returned capture) as this thread's
/// default, with the callsite interest recomputed for it.
fn chassis_subscriber() -> (
    chassis_observability::Telemetry,
    tracing::dispatcher::DefaultGuard,
    chassis_observability::logging::CaptureWriter,
) {
    let capture = chassis_observability::logging::CaptureWriter::new();
    let (dispatch, telemetry) =
        chassis_observability::Telemetry::builder(chassis_core::ServiceInfo::new("shop", "1.0.0"))
            .ignore_env()
            .log_filter("info")
            .make_writer(capture.clone())
            .build()
            .unwrap();
    let guard = tracing::dispatcher::set_default(&dispatch);
    tracing::callsite::rebuild_interest_cache();
    (telemetry, guard, capture)
}

#[tokio::test]
async fn access_log_line_has_one_trace_id_under_the_chassis_json_format() {
    let (_telemetry, _guard, capture) = chassis_subscriber();

    let server = start_default_app().await;
    let req = Request::get(format!("http://{}/hello", server.addr))
        .header("traceparent", TRACEPARENT)
        .body(Full::default())
        .unwrap();
    assert_eq!(send(&client(), req).await.status, StatusCode::OK);
    server.stop().await;

    let lines: Vec<String> = capture
        .lines()
        .into_iter()
        .filter(|l| l.contains(r#""target":"chassis_http::access""#))
        .collect();
    assert_eq!(lines.len(), 1, "{:#?}", capture.lines());
    // Counted in the text: a JSON parser would keep one of two equal keys silently.
    assert_eq!(lines[0].matches("trace_id").count(), 1, "{}", lines[0]);
    let line: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(line["trace_id"], TRACE_ID);
    assert_eq!(line["body"], "request completed");
    assert_eq!(line["status"], 200);
    // The server span's fields ride along, formatted once per request; the event's own
    // `request_id` is not repeated by the span's.
    assert_eq!(line["url.path"], "/hello");
    assert_eq!(line["http.request.method"], "GET");
    assert!(
        lines[0].matches(r#""request_id""#).count() <= 1,
        "{}",
        lines[0]
    );
}

/// Under the chassis subscriber, whose OpenTelemetry layer has a filter of its own (info events
/// stay out of it), the server span and every span a handler opens are OpenTelemetry spans: the
/// lines of a request without a `traceparent` carry a fresh trace id, and a handler's event
/// carries its own span's id under the request's trace.
#[tokio::test]
async fn spans_reach_opentelemetry_under_the_chassis_subscriber() {
    let (_telemetry, _guard, capture) = chassis_subscriber();

    let server = start_default_app().await;
    for _ in 0..2 {
        assert_eq!(
            get(&client(), server.addr, "/traced").await.status,
            StatusCode::OK
        );
    }
    server.stop().await;

    let lines: Vec<serde_json::Value> = capture
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let access: Vec<_> = lines
        .iter()
        .filter(|l| l["target"] == "chassis_http::access")
        .collect();
    let handler: Vec<_> = lines
        .iter()
        .filter(|l| l["body"] == "handler event")
        .collect();
    assert_eq!((access.len(), handler.len()), (2, 2), "{lines:#?}");
    for (access, handler) in access.iter().zip(&handler) {
        let trace_id = access["trace_id"].as_str().unwrap_or_else(|| {
            panic!("no trace id: the server span is no OpenTelemetry span: {access}")
        });
        assert_eq!(trace_id.len(), 32, "{access}");
        assert_eq!(access["span.name"], "HTTP request");
        assert_eq!(handler["trace_id"], access["trace_id"], "{handler}");
        assert_eq!(handler["span.name"], "handler work");
        assert_ne!(
            handler["span_id"], access["span_id"],
            "the handler's span is no OpenTelemetry span: {handler}"
        );
    }
    assert_ne!(access[0]["trace_id"], access[1]["trace_id"]);
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn an_error_through_or_internal_is_logged_once() {
    use chassis_http::{ApiResult, ResultExt as _};

    async fn broken() -> ApiResult<u64> {
        let n = "seven"
            .parse::<u64>()
            .or_internal_context("decoding the stored count")?;
        Ok(n.into())
    }

    let logs = LogBuffer::default();
    let _guard = json_logs_into(&logs);

    let router = axum::Router::new()
        .route("/broken", axum::routing::get(broken))
        .layer(StandardLayers::new());
    let server = start(Server::bind(test_config()).await.unwrap(), router).await;
    let req = Request::get(format!("http://{}/broken", server.addr))
        .header("traceparent", TRACEPARENT)
        .body(Full::default())
        .unwrap();
    let reply = send(&client(), req).await;
    let body = reply.error_body(StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
    assert_eq!(body["traceId"], TRACE_ID);
    assert!(!reply.text().contains("invalid digit"), "{}", reply.text());
    server.stop().await;

    let errors: Vec<_> = logs
        .lines()
        .into_iter()
        .filter(|l| l["level"] == "ERROR")
        .collect();
    assert_eq!(errors.len(), 1, "{:#?}", logs.lines());
    assert_eq!(errors[0]["fields"]["message"], "decoding the stored count");
    assert_eq!(
        errors[0]["fields"]["error"],
        "invalid digit found in string"
    );
    // Inside the request's span, so it correlates with the access log and the trace.
    assert_eq!(errors[0]["span"]["name"], "HTTP request");
}
