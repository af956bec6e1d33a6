//! OTLP export against a receiver started inside the test, decoding the real protobuf.

mod support;

use std::time::Duration;

use chassis_core::ServiceInfo;
use chassis_observability::config::TelemetryConfig;
use chassis_observability::logging::CaptureWriter;
use chassis_observability::propagation::{
    HeaderExtractor, HeaderInjector, extract_context, inject_current,
};
use chassis_observability::{ErrorKind, Telemetry};
use opentelemetry::trace::TraceContextExt as _;
use support::{Receiver, attr, captured, hex, spans};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

fn config(endpoint: &str) -> TelemetryConfig {
    let mut c = TelemetryConfig::default();
    c.tracing.endpoint = Some(endpoint.to_owned());
    c.tracing.scheduled_delay = Duration::from_millis(50);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_attributes_resource_and_parent_links_reach_the_collector() {
    let mut receiver = Receiver::start().await;
    let orders_logs = CaptureWriter::new();
    let payments_logs = CaptureWriter::new();

    let (orders, orders_guard) =
        Telemetry::builder(ServiceInfo::new("orders", "1.2.0").environment("test"))
            .ignore_env()
            .config(config(&receiver.endpoint()))
            .resource_attribute("cloud.region", "eu-west-1")
            .make_writer(orders_logs.clone())
            .build()
            .unwrap();
    let (payments, payments_guard) =
        Telemetry::builder(ServiceInfo::new("payments", "0.9.1").environment("test"))
            .ignore_env()
            .config(config(&receiver.endpoint()))
            .make_writer(payments_logs.clone())
            .build()
            .unwrap();
    assert!(orders_guard.is_exporting());

    // Service "orders": a request span, a child, and an outgoing call carrying the context.
    let mut headers = http::HeaderMap::new();
    let (orders_trace, call_span_id) = tracing::dispatcher::with_default(&orders, || {
        let request = tracing::info_span!(
            "POST /orders",
            otel.kind = "server",
            order.id = 42_i64,
            http.request.method = "POST"
        );
        let _r = request.enter();
        tracing::info_span!("reserve_stock", items = 3_i64).in_scope(|| tracing::info!("reserved"));
        let call = tracing::info_span!("call payments", otel.kind = "client");
        let _c = call.enter();
        inject_current(&mut HeaderInjector(&mut headers));
        let cx = call.context();
        (
            cx.span().span_context().trace_id(),
            cx.span().span_context().span_id(),
        )
    });
    assert!(headers.contains_key("traceparent"));

    // Service "payments": continues the trace from the headers.
    let payments_trace = tracing::dispatcher::with_default(&payments, || {
        let parent = extract_context(&HeaderExtractor(&headers));
        let span = tracing::info_span!("charge", otel.kind = "server", payment.amount = 1999_i64);
        span.set_parent(parent).unwrap();
        let _e = span.enter();
        tracing::info!("charged");
        span.context().span().span_context().trace_id()
    });
    assert_eq!(payments_trace, orders_trace);

    orders_guard.shutdown(Duration::from_secs(5)).await.unwrap();
    payments_guard
        .shutdown(Duration::from_secs(5))
        .await
        .unwrap();

    let all = spans(&receiver.drain());
    let find = |name: &str| {
        all.iter()
            .find(|(_, s)| s.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "span {name} not exported; got {:?}",
                    all.iter().map(|(_, s)| &s.name).collect::<Vec<_>>()
                )
            })
            .clone()
    };
    let (orders_res, request) = find("POST /orders");
    let (_, reserve) = find("reserve_stock");
    let (_, call) = find("call payments");
    let (payments_res, charge) = find("charge");

    // Resource attributes.
    assert_eq!(attr(&orders_res, "service.name").as_deref(), Some("orders"));
    assert_eq!(
        attr(&orders_res, "service.version").as_deref(),
        Some("1.2.0")
    );
    assert_eq!(
        attr(&orders_res, "deployment.environment").as_deref(),
        Some("test")
    );
    assert_eq!(
        attr(&orders_res, "cloud.region").as_deref(),
        Some("eu-west-1")
    );
    assert!(attr(&orders_res, "service.instance.id").is_some());
    assert_eq!(
        attr(&payments_res, "service.name").as_deref(),
        Some("payments")
    );

    // Span attributes and kinds.
    assert_eq!(attr(&request.attributes, "order.id").as_deref(), Some("42"));
    assert_eq!(
        attr(&request.attributes, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(attr(&reserve.attributes, "items").as_deref(), Some("3"));
    assert_eq!(
        attr(&charge.attributes, "payment.amount").as_deref(),
        Some("1999")
    );
    assert_eq!(request.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(call.kind, 3, "SPAN_KIND_CLIENT");

    // Parent links, within and across services.
    let trace = orders_trace.to_string();
    for s in [&request, &reserve, &call, &charge] {
        assert_eq!(hex(&s.trace_id), trace, "{}", s.name);
    }
    assert!(request.parent_span_id.is_empty());
    assert_eq!(reserve.parent_span_id, request.span_id);
    assert_eq!(call.parent_span_id, request.span_id);
    assert_eq!(hex(&call.span_id), call_span_id.to_string());
    assert_eq!(
        charge.parent_span_id, call.span_id,
        "remote parent = the caller's client span"
    );

    // Log lines of both services carry the shared trace id.
    let line: serde_json::Value = serde_json::from_str(&payments_logs.lines()[0]).unwrap();
    assert_eq!(line["trace_id"], trace);
    assert_eq!(line["span_id"], hex(&charge.span_id));
    let line: serde_json::Value = serde_json::from_str(&orders_logs.lines()[0]).unwrap();
    assert_eq!(line["trace_id"], trace);
    assert_eq!(line["span_id"], hex(&reserve.span_id));
}

/// A port nothing listens on.
async fn dead_endpoint() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}")
}

// Current-thread runtime: the exporter task cannot run while the spans are produced, so exactly
// `max_queue_size` spans are queued and the rest dropped.
#[tokio::test]
async fn missing_collector_drops_and_counts_with_one_warning() {
    let mut c = config(&dead_endpoint().await);
    c.tracing.max_queue_size = 4;
    c.tracing.scheduled_delay = Duration::from_secs(60);
    c.tracing.export_timeout = Duration::from_secs(2);
    let (dispatch, guard, logs) =
        captured(Telemetry::builder(ServiceInfo::new("orders", "1")).config(c));
    // Spans end on this thread, so the drop counter lands in the (not installed) recorder.
    let recorder = guard.metrics_recorder().unwrap();
    metrics::with_local_recorder(recorder, || {
        tracing::dispatcher::with_default(&dispatch, || {
            for i in 0..10 {
                tracing::info_span!("work", i).in_scope(|| {});
            }
        })
    });
    assert_eq!(guard.dropped_spans(), 6, "queue of 4, 10 spans");
    let exposition = guard.prometheus_handle().unwrap().render();
    assert!(
        exposition.contains(r#"otel_spans_dropped_total{reason="queue_full"} 6"#),
        "{exposition}"
    );
    let warnings = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("span export queue is full"))
        .count();
    assert_eq!(warnings, 1, "{:?}", logs.lines());

    // Shutdown tries to export the 4 queued spans: connection refused, counted, not fatal.
    let stats = guard.export_stats();
    support::shut_down(guard, Duration::from_secs(5)).await;
    assert_eq!(stats.dropped(), 10, "4 more lost to the failed export");
    assert_eq!(stats.exported(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_collector_never_blocks_and_shutdown_meets_its_deadline() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            open.push(s);
        }
    });
    let mut c = config(&format!("http://{addr}"));
    c.tracing.export_timeout = Duration::from_secs(3);
    c.tracing.max_queue_size = 16;
    let (dispatch, guard, _logs) =
        captured(Telemetry::builder(ServiceInfo::new("orders", "1")).config(c));
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..1000 {
            tracing::info_span!("work", i).in_scope(|| {});
        }
    });
    assert!(
        guard.dropped_spans() >= 1000 - 16 - 16,
        "{}",
        guard.dropped_spans()
    );
    let started = tokio::time::Instant::now();
    let err = guard
        .shutdown(Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::ShutdownTimedOut { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warnings_and_errors_become_span_events_info_lines_stay_in_the_log() {
    let mut receiver = Receiver::start().await;
    let (dispatch, guard, logs) = captured(
        Telemetry::builder(ServiceInfo::new("orders", "1")).config(config(&receiver.endpoint())),
    );
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info_span!("checkout").in_scope(|| {
            tracing::info!("informed");
            tracing::warn!("warned");
            tracing::error!(order.id = 42_i64, "failed");
        });
        tracing::info_span!("quiet").in_scope(|| tracing::info!("all good"));
    });
    guard.shutdown(Duration::from_secs(5)).await.unwrap();

    let all = spans(&receiver.drain());
    let span = |name: &str| {
        all.iter()
            .map(|(_, s)| s)
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("span {name} not exported"))
            .clone()
    };
    let checkout = span("checkout");
    let events: Vec<_> = checkout.events.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(events, ["warned", "failed"]);
    assert_eq!(
        checkout.status.as_ref().map(|s| s.code),
        Some(2),
        "STATUS_CODE_ERROR from the error event"
    );
    let quiet = span("quiet");
    assert!(quiet.events.is_empty());
    assert_ne!(quiet.status.as_ref().map_or(0, |s| s.code), 2);
    // Every line is in the log.
    let bodies: Vec<String> = logs
        .lines()
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["body"].to_string())
        .collect();
    assert_eq!(
        bodies,
        [
            r#""informed""#,
            r#""warned""#,
            r#""failed""#,
            r#""all good""#
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn span_details_are_off_by_default_and_exported_when_asked_for() {
    let mut receiver = Receiver::start().await;
    for details in [false, true] {
        let (dispatch, guard, _logs) = captured(
            Telemetry::builder(ServiceInfo::new("orders", "1"))
                .config(config(&receiver.endpoint()))
                .span_details(details),
        );
        let name = format!("details {details}");
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info_span!("work", order.id = 7_i64).in_scope(|| {});
        });
        guard.shutdown(Duration::from_secs(5)).await.unwrap();
        let all = spans(&receiver.drain());
        let (_, work) = all
            .iter()
            .find(|(_, s)| s.name == "work")
            .unwrap_or_else(|| panic!("{name}: span not exported"))
            .clone();
        assert_eq!(attr(&work.attributes, "order.id").as_deref(), Some("7"));
        for key in ["code.file.path", "code.line.number", "thread.id", "busy_ns"] {
            assert_eq!(
                attr(&work.attributes, key).is_some(),
                details,
                "{name}: {key} in {:?}",
                work.attributes.iter().map(|a| &a.key).collect::<Vec<_>>()
            );
        }
    }
}
