//! Cost of observability on the hot path, each beside a bare baseline measured in the same run:
//!
//! - `disabled_event`: a `debug!` below the `info` filter of the chassis subscriber, vs the same
//!   macro with no subscriber at all, vs an empty closure.
//! - `json_line`: one enabled `info!` with four fields and a sensitive one inside a span that has
//!   two fields and an OpenTelemetry context, written by the chassis JSON layer (service
//!   identity, trace/span ids, the span's fields, redaction) through the real batching writer to
//!   `io::sink` (the line is still fully formatted and copied into the writer's buffer; the
//!   writer thread hands batches to the sink),
//!   and by the same layer directly to `io::sink`; vs tracing-subscriber's stock JSON formatter
//!   (`tracing_subscriber::fmt().json()`, same span and fields, an OpenTelemetry context
//!   attached; it formats into its own buffer before writing, so `io::sink` does not skip the
//!   work; it cannot write the ids nor redact); vs a bare `writeln!` of a comparable line into a
//!   reused `String`. Then, per iteration a new span (two fields) entered, the same event
//!   logged in it and the span closed, by the chassis layer with its span fields on and off: what
//!   formatting the span's fields once per span costs.
//! - `propagation`: inject + extract of a span context through an `http::HeaderMap` with the
//!   chassis (strict W3C) propagator, vs the SDK's `TraceContextPropagator`, vs inserting and
//!   reading back a constant header.
//!
//! Run: `cargo bench -p chassis-benches --bench observability`

use std::fmt::Write as _;
use std::hint::black_box;
use std::io;
use std::time::Duration;

use chassis_core::ServiceInfo;
use chassis_observability::Telemetry;
use chassis_observability::propagation::{
    HeaderExtractor, HeaderInjector, extract_context, inject_context,
};
use criterion::{Criterion, criterion_group, criterion_main};
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};

fn chassis_dispatch() -> (tracing::Dispatch, chassis_observability::Telemetry) {
    Telemetry::builder(ServiceInfo::new("bench", "1.0.0"))
        .ignore_env()
        .log_filter("info")
        .make_writer(io::sink)
        .build()
        .expect("telemetry builds")
}

/// The chassis default output path: the batching writer, here over `io::sink`.
fn chassis_batched_dispatch() -> (tracing::Dispatch, chassis_observability::Telemetry) {
    Telemetry::builder(ServiceInfo::new("bench", "1.0.0"))
        .ignore_env()
        .log_filter("info")
        .writer(io::sink())
        .build()
        .expect("telemetry builds")
}

/// The span of the measured event, with two fields every line inside it carries.
fn request_span() -> tracing::Span {
    tracing::info_span!(
        "request",
        request_id = black_box("4f1c2a9e"),
        http.route = "/orders"
    )
}

/// The measured event: four fields and a redacted one.
fn order_placed() {
    tracing::info!(
        order.id = black_box(42_u64),
        amount = black_box(19.99_f64),
        customer = black_box("ann"),
        express = true,
        password = black_box("hunter2"),
        "order placed"
    )
}

fn disabled_event(c: &mut Criterion) {
    let mut g = c.benchmark_group("observability/disabled_event");
    g.bench_function("baseline_empty", |b| b.iter(|| black_box(1_u64)));
    g.bench_function("baseline_no_subscriber", |b| {
        tracing::dispatcher::with_default(&tracing::Dispatch::none(), || {
            b.iter(|| tracing::debug!(order.id = black_box(42_u64), "not recorded"))
        })
    });
    let (dispatch, _guard) = chassis_dispatch();
    g.bench_function("chassis_below_filter", |b| {
        tracing::dispatcher::with_default(&dispatch, || {
            b.iter(|| tracing::debug!(order.id = black_box(42_u64), "not recorded"))
        })
    });
    g.finish();
}

fn json_line(c: &mut Criterion) {
    let mut g = c.benchmark_group("observability/json_line");
    // Formats into a reused String: `io::sink()` is no baseline, std's `Sink::write_fmt` skips
    // the formatting altogether.
    g.bench_function("baseline_format_line", |b| {
        let mut line = String::with_capacity(256);
        b.iter(|| {
            line.clear();
            writeln!(
                line,
                r#"{{"timestamp":"2026-11-22T02:40:00.123456Z","severity_text":"INFO","body":"order placed","request_id":"4f1c2a9e","http.route":"/orders","order.id":{},"amount":{},"customer":"{}","express":{}}}"#,
                black_box(42_u64),
                black_box(19.99_f64),
                black_box("ann"),
                black_box(true)
            )
            .unwrap();
            black_box(line.len())
        })
    });
    let stock = tracing_subscriber::fmt()
        .json()
        .with_writer(io::sink)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let stock = tracing::Dispatch::new(stock);
    let otel_cx = Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    ));
    let (batched, batched_guard) = chassis_batched_dispatch();
    let (direct, _direct_guard) = chassis_dispatch();
    // Stock and chassis alternate within the run, so load changes hit both alike.
    for round in 0..2 {
        g.bench_function(format!("stock_tracing_subscriber_json/{round}"), |b| {
            tracing::dispatcher::with_default(&stock, || {
                let _cx = otel_cx.clone().attach();
                let span = request_span();
                let _e = span.enter();
                b.iter(order_placed)
            })
        });
        g.bench_function(format!("chassis_json_batched_writer/{round}"), |b| {
            tracing::dispatcher::with_default(&batched, || {
                let span = request_span();
                let _e = span.enter();
                b.iter(order_placed)
            })
        });
        g.bench_function(format!("chassis_json_direct_sink/{round}"), |b| {
            tracing::dispatcher::with_default(&direct, || {
                let span = request_span();
                let _e = span.enter();
                b.iter(order_placed)
            })
        });
    }
    // A span per line: its fields formatted once for this one line (the worst case), or not
    // at all.
    let (no_span_fields, _guard) = Telemetry::builder(ServiceInfo::new("bench", "1.0.0"))
        .ignore_env()
        .log_filter("info")
        .log_span_fields(false)
        .make_writer(io::sink)
        .build()
        .expect("telemetry builds");
    for (name, dispatch) in [
        ("chassis_span_and_line_direct_sink", &direct),
        ("chassis_span_and_line_no_span_fields", &no_span_fields),
    ] {
        g.bench_function(name, |b| {
            tracing::dispatcher::with_default(dispatch, || {
                b.iter(|| request_span().in_scope(order_placed))
            })
        });
    }
    // Whether the writer thread kept up (a dropped line is a little cheaper than a queued one;
    // the figures are only comparable when this is 0).
    eprintln!(
        "chassis_json_batched_writer: {} lines dropped",
        batched_guard.dropped_log_lines()
    );
    g.finish();
}

fn propagation(c: &mut Criterion) {
    let mut g = c.benchmark_group("observability/propagation");
    let cx = Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    ));
    g.bench_function("baseline_header_insert_get", |b| {
        b.iter(|| {
            let mut h = http::HeaderMap::new();
            h.insert(
                "traceparent",
                http::HeaderValue::from_static(
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
            );
            black_box(h.get("traceparent").map(|v| v.len()))
        })
    });
    let sdk = opentelemetry_sdk::propagation::TraceContextPropagator::new();
    g.bench_function("sdk_trace_context_inject_extract", |b| {
        b.iter(|| {
            let mut h = http::HeaderMap::new();
            sdk.inject_context(black_box(&cx), &mut HeaderInjector(&mut h));
            black_box(sdk.extract(&HeaderExtractor(&h)))
        })
    });
    g.bench_function(
        "chassis_w3c_trace_context_and_baggage_inject_extract",
        |b| {
            b.iter(|| {
                let mut h = http::HeaderMap::new();
                inject_context(black_box(&cx), &mut HeaderInjector(&mut h));
                black_box(extract_context(&HeaderExtractor(&h)))
            })
        },
    );
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = disabled_event, json_line, propagation
}
criterion_main!(benches);
