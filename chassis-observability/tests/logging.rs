//! Log capture: JSON line shape, trace correlation, redaction, formats and filtering.

mod support;

use chassis_core::ServiceInfo;
use chassis_observability::logging::CaptureWriter;
use chassis_observability::{LogFormat, Secret, Telemetry};
use opentelemetry::trace::TraceContextExt as _;
use support::{build_error, captured};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

fn service() -> ServiceInfo {
    let mut s = ServiceInfo::new("orders", "1.2.0").environment("production");
    s.instance_id = "orders-1".into();
    s
}

fn capture(format: LogFormat, filter: &str) -> (tracing::Dispatch, Telemetry, CaptureWriter) {
    captured(
        Telemetry::builder(service())
            .log_format(format)
            .log_filter(filter),
    )
}

/// Telemetry whose JSON lines go through the non-blocking batching writer into the capture.
fn batched() -> (tracing::Dispatch, Telemetry, CaptureWriter) {
    let logs = CaptureWriter::new();
    let (dispatch, guard) = Telemetry::builder(service())
        .ignore_env()
        .writer(logs.clone())
        .build()
        .unwrap();
    (dispatch, guard, logs)
}

fn json_lines(logs: &CaptureWriter) -> Vec<serde_json::Value> {
    logs.lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[test]
fn json_line_shape_with_trace_correlation() {
    let (dispatch, _guard, logs) = capture(LogFormat::Json, "info");
    let (trace_id, span_id) = tracing::dispatcher::with_default(&dispatch, || {
        let span = tracing::info_span!("place_order", order.id = 42);
        let _e = span.enter();
        tracing::info!(
            order.id = 42_u64,
            amount = 19.99,
            express = true,
            customer = "ann \"the\" buyer",
            items = ?vec![1, 2],
            "order placed"
        );
        let sc = span.context().span().span_context().clone();
        (sc.trace_id().to_string(), sc.span_id().to_string())
    });
    let lines = json_lines(&logs);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let l = &lines[0];
    let ts = l["timestamp"].as_str().unwrap();
    assert!(
        ts.len() >= 20 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
        "{ts}"
    );
    assert_eq!(l["severity_text"], "INFO");
    assert_eq!(l["severity_number"], 9);
    assert_eq!(l["body"], "order placed");
    assert_eq!(l["target"], "logging");
    assert_eq!(l["service.name"], "orders");
    assert_eq!(l["service.version"], "1.2.0");
    assert_eq!(l["deployment.environment"], "production");
    assert_eq!(l["service.instance.id"], "orders-1");
    assert_eq!(l["trace_id"], trace_id);
    assert_eq!(l["span_id"], span_id);
    assert_eq!(l["trace_flags"], "01");
    assert_eq!(l["span.name"], "place_order");
    assert_eq!(l["order.id"], 42);
    assert_eq!(l["amount"], 19.99);
    assert_eq!(l["express"], true);
    assert_eq!(l["customer"], "ann \"the\" buyer");
    assert_eq!(l["items"], "[1, 2]");
    assert_eq!(trace_id.len(), 32);
    assert_eq!(span_id.len(), 16);
    assert!(logs.contents().ends_with("}\n"));
}

#[test]
fn nested_spans_and_explicit_parents_correlate_to_the_right_span() {
    let (dispatch, _guard, logs) = capture(LogFormat::Json, "info");
    let (outer_id, inner_id, trace) = tracing::dispatcher::with_default(&dispatch, || {
        let outer = tracing::info_span!("outer");
        let inner = outer.in_scope(|| tracing::info_span!("inner"));
        inner.in_scope(|| tracing::info!("in inner"));
        // Explicit parent, no span entered.
        tracing::info!(parent: &outer, "explicit outer");
        tracing::info!("no span");
        let id = |s: &tracing::Span| s.context().span().span_context().span_id().to_string();
        (
            id(&outer),
            id(&inner),
            outer.context().span().span_context().trace_id().to_string(),
        )
    });
    let lines = json_lines(&logs);
    assert_eq!(lines[0]["span_id"], inner_id);
    assert_eq!(lines[0]["trace_id"], trace);
    assert_eq!(lines[1]["span_id"], outer_id);
    assert_eq!(lines[1]["trace_id"], trace);
    assert_eq!(lines[1]["span.name"], "outer");
    assert!(lines[2].get("trace_id").is_none(), "{}", lines[2]);
    assert!(lines[2].get("span.name").is_none());
}

#[test]
fn span_fields_reach_every_line_inside_the_span_once() {
    let (dispatch, _guard, logs) = capture(LogFormat::Json, "info");
    tracing::dispatcher::with_default(&dispatch, || {
        let request = tracing::info_span!(
            "HTTP request",
            otel.name = "GET /orders",
            request_id = "r-1",
            url.path = "/orders",
            api_token = "s3cret",
            http.response.status_code = tracing::field::Empty,
        );
        let _r = request.enter();
        let work = tracing::info_span!("load", url.path = "/orders/7", order.id = 7_u64);
        work.in_scope(|| {
            tracing::info!("loaded");
            // The event's own field wins over the span's.
            tracing::info!(order.id = 8_u64, "event wins");
        });
        request.record("http.response.status_code", 200_i64);
        request.record("request_id", "r-2");
        tracing::info!("after record");
        tracing::info!(request_id = "r-3", "access");
    });
    let raw = logs.lines();
    let lines = json_lines(&logs);
    assert_eq!(lines.len(), 4, "{raw:#?}");
    // Inside the inner span: the outer span's fields, the inner one's path over the outer's.
    assert_eq!(lines[0]["request_id"], "r-1");
    assert_eq!(lines[0]["url.path"], "/orders/7");
    assert_eq!(lines[0]["order.id"], 7);
    assert_eq!(lines[0]["api_token"], "[REDACTED]");
    assert_eq!(lines[0]["span.name"], "load");
    assert_eq!(lines[1]["order.id"], 8);
    // A value recorded later replaces the earlier one; an event field of the same name wins.
    assert_eq!(lines[2]["url.path"], "/orders");
    assert_eq!(lines[2]["http.response.status_code"], 200);
    assert_eq!(lines[2]["request_id"], "r-2");
    assert_eq!(lines[2]["span.name"], "HTTP request");
    assert!(lines[2].get("order.id").is_none(), "{}", raw[2]);
    assert_eq!(lines[3]["request_id"], "r-3");
    assert_eq!(lines[3]["http.response.status_code"], 200);
    for line in &raw {
        assert!(
            !line.contains("s3cret") && !line.contains("otel.name"),
            "{line}"
        );
        // Counted in the text: a JSON parser would keep one of two equal keys silently.
        for key in ["\"request_id\"", "\"url.path\"", "\"order.id\""] {
            assert!(line.matches(key).count() <= 1, "{key} twice: {line}");
        }
    }
}

#[test]
fn span_fields_can_be_turned_off() {
    let (dispatch, _guard, logs) = captured(
        Telemetry::builder(service())
            .log_filter("info")
            .log_span_fields(false),
    );
    tracing::dispatcher::with_default(&dispatch, || {
        let span = tracing::info_span!("request", request_id = "r-1");
        span.in_scope(|| tracing::info!("inside"));
    });
    let lines = json_lines(&logs);
    assert_eq!(lines[0]["span.name"], "request");
    assert!(lines[0].get("request_id").is_none(), "{}", lines[0]);
}

#[test]
fn sensitive_values_never_reach_the_json_output() {
    let (dispatch, _guard, logs) = capture(LogFormat::Json, "info");
    tracing::dispatcher::with_default(&dispatch, || {
        let api_key = Secret::new("sk-live-123".to_owned());
        tracing::info!(
            password = "hunter2",
            access_token = %"tok-abc",
            authorization = "Bearer eyJhbGci",
            http.request.header.cookie = "sid=xyz",
            client_secret = 5_u64,
            user = %"ann",
            key = %api_key,
            key_debug = ?api_key,
            "login"
        );
    });
    let text = logs.contents();
    for secret in ["hunter2", "tok-abc", "eyJhbGci", "sid=xyz", "sk-live-123"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let l = &json_lines(&logs)[0];
    for field in [
        "password",
        "access_token",
        "authorization",
        "http.request.header.cookie",
        "client_secret",
        "key",
        "key_debug",
    ] {
        assert_eq!(l[field], "[REDACTED]", "{field}");
    }
    assert_eq!(l["user"], "ann");
}

#[test]
fn sensitive_values_never_reach_the_pretty_or_compact_output() {
    for format in [LogFormat::Pretty, LogFormat::Compact] {
        let (dispatch, _guard, logs) = capture(format, "info");
        tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("login", api_key = "span-secret-1");
            let _e = span.enter();
            tracing::info!(password = "hunter2", token = ?Secret::new("t0k"), user = "ann", "login attempt");
        });
        let text = logs.contents();
        assert!(text.contains("login attempt"), "{text}");
        assert!(text.contains("ann"), "{text}");
        assert!(text.contains("[REDACTED]"), "{text}");
        for secret in ["hunter2", "t0k", "span-secret-1"] {
            assert!(!text.contains(secret), "{format}: {secret} leaked: {text}");
        }
        assert!(serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap()).is_err());
    }
}

#[test]
fn reserved_names_do_not_duplicate_keys() {
    let (dispatch, _guard, logs) = capture(LogFormat::Json, "info");
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::warn!(target: "custom::target", body = "field body", trace_id = "fake", "real body");
    });
    let l = &json_lines(&logs)[0];
    assert_eq!(l["body"], "real body");
    assert_eq!(l["field.body"], "field body");
    assert_eq!(l["field.trace_id"], "fake");
    assert_eq!(l["target"], "custom::target");
    assert_eq!(l["severity_text"], "WARN");
    assert_eq!(l["severity_number"], 13);
}

#[test]
fn env_filter_directives_apply() {
    let (dispatch, _guard, logs) = capture(LogFormat::Json, "warn,logging::chatty=debug");
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::info!("dropped");
        tracing::debug!(target: "logging::chatty", "kept debug");
        tracing::error!("kept error");
        tracing::warn!(target: "opentelemetry_sdk", "sdk noise is off by default");
    });
    let bodies: Vec<_> = json_lines(&logs)
        .iter()
        .map(|l| l["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies, ["kept debug", "kept error"]);
}

#[test]
fn invalid_filter_is_a_typed_error() {
    let err = build_error(Telemetry::builder(service()).log_filter("info,[[["));
    assert!(
        matches!(
            err.kind(),
            chassis_observability::ErrorKind::InvalidConfig { .. }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn non_blocking_writer_flushes_on_shutdown() {
    let (dispatch, guard, logs) = batched();
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..100 {
            tracing::info!(i, "line");
        }
    });
    guard
        .shutdown(std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let lines = json_lines(&logs);
    assert_eq!(lines.len(), 100);
    assert_eq!(lines[99]["i"], 99);
}

#[test]
fn non_blocking_writer_flushes_on_drop() {
    let (dispatch, guard, logs) = batched();
    tracing::dispatcher::with_default(&dispatch, || tracing::info!("before drop"));
    drop(dispatch);
    drop(guard);
    assert_eq!(json_lines(&logs)[0]["body"], "before drop");
}
