//! A context created in one "service", carried in headers, continued in another.

mod support;

use chassis_core::ServiceInfo;
use chassis_observability::Telemetry;
use chassis_observability::logging::CaptureWriter;
use chassis_observability::propagation::{
    HeaderExtractor, HeaderInjector, extract_context, inject_context, inject_current,
};
use opentelemetry::baggage::BaggageExt as _;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{Context, KeyValue};
use support::{MessageHeaders, captured};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

fn service(name: &str) -> (tracing::Dispatch, Telemetry, CaptureWriter) {
    captured(Telemetry::builder(ServiceInfo::new(name, "1.0.0")))
}

#[test]
fn http_headers_carry_the_trace_to_another_service() {
    let (a, _ga, _) = service("a");
    let (b, _gb, b_logs) = service("b");

    let mut headers = http::HeaderMap::new();
    let (a_trace, a_span) = tracing::dispatcher::with_default(&a, || {
        let span = tracing::info_span!("client call");
        let _e = span.enter();
        inject_current(&mut HeaderInjector(&mut headers));
        let sc = span.context().span().span_context().clone();
        (sc.trace_id(), sc.span_id())
    });
    // Sampled (01) and, as the trace started here with a random trace-id, random-trace-id (02).
    assert_eq!(
        headers["traceparent"].to_str().unwrap(),
        format!("00-{a_trace}-{a_span}-03")
    );

    let (remote, b_trace, b_span) = tracing::dispatcher::with_default(&b, || {
        let parent = extract_context(&HeaderExtractor(&headers));
        let remote = parent.span().span_context().clone();
        let span = tracing::info_span!("server handle");
        span.set_parent(parent).unwrap();
        let _e = span.enter();
        tracing::info!("handling");
        let sc = span.context().span().span_context().clone();
        (remote, sc.trace_id(), sc.span_id())
    });
    // Same trace; the remote parent is A's span; B's span is a new one in it.
    assert!(remote.is_remote());
    assert!(remote.is_sampled());
    assert_eq!(remote.trace_id(), a_trace);
    assert_eq!(
        remote.span_id(),
        a_span,
        "parent span id = the caller's span"
    );
    assert_eq!(b_trace, a_trace);
    assert_ne!(b_span, a_span);
    let line: serde_json::Value = serde_json::from_str(&b_logs.lines()[0]).unwrap();
    assert_eq!(line["trace_id"], a_trace.to_string());
    assert_eq!(line["span_id"], b_span.to_string());
}

#[test]
fn generic_carrier_with_baggage_round_trips() {
    let (a, _ga, _) = service("publisher");
    let mut msg = MessageHeaders::default();
    let a_trace = tracing::dispatcher::with_default(&a, || {
        let span = tracing::info_span!("publish");
        let cx = span
            .context()
            .with_baggage([KeyValue::new("tenant.id", "acme")]);
        inject_context(&cx, &mut msg);
        cx.span().span_context().trace_id()
    });
    assert!(msg.0.contains_key("traceparent"));
    assert_eq!(msg.0["baggage"], "tenant.id=acme");

    let cx = extract_context(&msg);
    assert_eq!(cx.span().span_context().trace_id(), a_trace);
    assert_eq!(
        cx.baggage()
            .get("tenant.id")
            .map(|v| v.to_string())
            .as_deref(),
        Some("acme")
    );
}

#[test]
fn malformed_headers_start_a_new_trace_without_failing() {
    let (b, _gb, _) = service("b");
    let mut headers = http::HeaderMap::new();
    headers.insert(
        "traceparent",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    headers.insert("tracestate", "rojo=1".parse().unwrap());
    headers.insert("baggage", "%%%;;;==".parse().unwrap());
    tracing::dispatcher::with_default(&b, || {
        let parent = extract_context(&HeaderExtractor(&headers));
        assert!(!parent.span().span_context().is_valid());
        let span = tracing::info_span!("server");
        span.set_parent(parent).unwrap();
        let sc = span.context().span().span_context().clone();
        assert!(sc.is_valid(), "a fresh root span");
        assert_ne!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    });
}

#[test]
fn inject_current_without_any_subscriber_uses_the_attached_context() {
    let remote = extract_context(&{
        let mut h = std::collections::HashMap::new();
        h.insert(
            "traceparent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        );
        h
    });
    let _attached = remote.attach();
    let mut out = MessageHeaders::default();
    inject_current(&mut out);
    assert_eq!(
        out.0["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    drop(_attached);
    let mut none = MessageHeaders::default();
    inject_context(&Context::new(), &mut none);
    assert!(none.0.is_empty());
}
