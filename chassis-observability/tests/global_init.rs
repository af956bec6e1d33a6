//! `init()` installs global state: this file is its own test binary (own process) and holds a
//! single test, so nothing else in the process races for the globals.

use std::time::Duration;

use chassis_core::ServiceInfo;
use chassis_observability::logging::CaptureWriter;
use chassis_observability::metrics::names;
use chassis_observability::propagation::{HeaderInjector, inject_current};
use chassis_observability::{ErrorKind, Telemetry};

#[tokio::test]
async fn init_installs_subscriber_recorder_and_propagator_once() {
    let logs = CaptureWriter::new();
    let guard = Telemetry::builder(ServiceInfo::new("orders", "1.2.0"))
        .ignore_env()
        .make_writer(logs.clone())
        .histogram_buckets_for(names::HTTP_SERVER_REQUEST_DURATION, [0.1, 1.0])
        .init()
        .unwrap();

    // The global subscriber writes JSON with correlation.
    let span = tracing::info_span!("request");
    let mut headers = http::HeaderMap::new();
    span.in_scope(|| {
        tracing::info!(user = "ann", "hello");
        inject_current(&mut HeaderInjector(&mut headers));
    });
    let line: serde_json::Value = serde_json::from_str(&logs.lines()[0]).unwrap();
    assert_eq!(line["body"], "hello");
    assert_eq!(line["service.name"], "orders");
    let traceparent = headers["traceparent"].to_str().unwrap();
    assert!(traceparent.contains(line["trace_id"].as_str().unwrap()));

    // The global metrics recorder feeds the Prometheus handle, with the per-metric buckets.
    metrics::histogram!(names::HTTP_SERVER_REQUEST_DURATION,
        names::labels::HTTP_REQUEST_METHOD => "GET",
        names::labels::HTTP_ROUTE => "/orders",
        names::labels::HTTP_RESPONSE_STATUS_CODE => "200")
    .record(0.5);
    let text = guard.prometheus_handle().unwrap().render();
    assert!(text.contains(r#"http_server_request_duration_seconds_bucket{http_request_method="GET",http_route="/orders",http_response_status_code="200",le="1"} 1"#), "{text}");
    assert!(
        text.contains("# HELP http_server_request_duration_seconds"),
        "{text}"
    );
    // The log writer's drop counter exists from the start, at 0.
    assert!(text.contains("\nlog_lines_dropped_total 0\n"), "{text}");
    assert!(text.contains("# HELP log_lines_dropped_total"), "{text}");

    // The global OpenTelemetry propagator is the W3C one.
    let mut map = std::collections::HashMap::new();
    span.in_scope(|| {
        opentelemetry::global::get_text_map_propagator(|p| {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            p.inject_context(&tracing::Span::current().context(), &mut map)
        })
    });
    assert_eq!(map["traceparent"], traceparent);

    // A second init changes nothing and says why.
    let err = Telemetry::builder(ServiceInfo::new("again", "1"))
        .ignore_env()
        .make_writer(CaptureWriter::new())
        .init()
        .unwrap_err();
    assert_eq!(err.kind(), &ErrorKind::GlobalSubscriberExists);
    tracing::info!("still ours");
    assert!(logs.lines().last().unwrap().contains("still ours"));

    guard.shutdown(Duration::from_secs(5)).await.unwrap();
}
