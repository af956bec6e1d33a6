//! W3C Trace Context Level 2 through the chassis subscriber: what a service receives, what its
//! own spans send on. Rules are quoted from https://www.w3.org/TR/trace-context-2/ by section
//! title.

mod support;

use chassis_core::ServiceInfo;
use chassis_observability::Telemetry;
use chassis_observability::logging::CaptureWriter;
use chassis_observability::propagation::{
    HeaderExtractor, HeaderInjector, Injector, extract_context, inject_current,
};
use support::{MessageHeaders, captured};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn service(filter: &str) -> (tracing::Dispatch, Telemetry, CaptureWriter) {
    captured(Telemetry::builder(ServiceInfo::new("l2", "1.0.0")).log_filter(filter))
}

fn request(pairs: &[(&str, &str)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    map
}

/// What a service handling `incoming` in a server span sends on to the next hop over HTTP.
fn handle_and_call(dispatch: &tracing::Dispatch, incoming: &http::HeaderMap) -> http::HeaderMap {
    tracing::dispatcher::with_default(dispatch, || {
        let span = tracing::info_span!("server");
        span.set_parent(extract_context(&HeaderExtractor(incoming)))
            .unwrap();
        let _entered = span.enter();
        let child = tracing::info_span!("client call");
        let _entered = child.enter();
        let mut outgoing = http::HeaderMap::new();
        inject_current(&mut HeaderInjector(&mut outgoing));
        outgoing
    })
}

fn field(traceparent: &http::HeaderValue, n: usize) -> &str {
    traceparent.to_str().unwrap().split('-').nth(n).unwrap()
}

#[test]
fn a_trace_started_here_sets_the_random_flag() {
    // "Random Trace ID Flag": "When at least the right-most 7 bytes of the trace-id are randomly
    // (or pseudo-randomly) generated, the random-trace-id flag SHOULD be set to 1." The SDK's
    // default id generator draws the whole trace-id at random; sampled by default.
    let (d, _g, _) = service("info");
    let out = handle_and_call(&d, &http::HeaderMap::new());
    assert_eq!(field(&out["traceparent"], 3), "03", "{:?}", out);
}

#[test]
fn the_random_flag_follows_the_received_trace_id_sampled_or_not() {
    // "If the flag is set in the incoming traceparent header, it MUST also be set in all
    // outgoing traceparent headers which use the same trace-id"; "If the flag is unset ... it
    // MUST also be unset". The parent-based sampler drops the spans of an unsampled request,
    // and the SDK then gives them no flags at all: the random flag must still go out.
    let (d, _g, _) = service("info");
    for flags in ["00", "01", "02", "03"] {
        let tp = format!("00-{TRACE_ID}-00f067aa0ba902b7-{flags}");
        let out = handle_and_call(&d, &request(&[("traceparent", &tp)]));
        let sent = &out["traceparent"];
        assert_eq!(field(sent, 1), TRACE_ID);
        assert_ne!(
            field(sent, 2),
            "00f067aa0ba902b7",
            "the parent-id is this service's"
        );
        assert_eq!(field(sent, 3), flags, "received {tp}, sent {sent:?}");
    }
}

#[test]
fn the_random_flag_and_tracestate_cross_a_message_carrier() {
    let (d, _g, _) = service("info");
    let mut received = MessageHeaders::default();
    received.set("traceparent", format!("00-{TRACE_ID}-00f067aa0ba902b7-02"));
    received.set("tracestate", "congo=t61rcWkgMzE,a@b@c=1".to_owned());
    let sent = tracing::dispatcher::with_default(&d, || {
        let span = tracing::info_span!("consume");
        span.set_parent(extract_context(&received)).unwrap();
        let _entered = span.enter();
        let mut sent = MessageHeaders::default();
        inject_current(&mut sent);
        sent
    });
    assert!(
        sent.0["traceparent"].starts_with(&format!("00-{TRACE_ID}-")),
        "{:?}",
        sent.0
    );
    assert!(sent.0["traceparent"].ends_with("-02"), "{:?}", sent.0);
    assert_eq!(sent.0["tracestate"], "congo=t61rcWkgMzE,a@b@c=1");
}

#[test]
fn a_system_id_of_14_characters_keeps_the_tracestate_through_a_service() {
    // "Key": key = ( lcalpha / DIGIT ) 0*255 ( keychar ), "@" a keychar. OpenTelemetry's
    // TraceState refuses "t@" + 14 characters; the whole tracestate used to vanish with it.
    let (d, _g, _) = service("info");
    for state in [
        format!("rojo=1,t@{}=x,congo=2", "v".repeat(14)),
        format!("rojo=1,t@{}=x,congo=2", "v".repeat(15)),
        format!("rojo=1,{}@{}=x,congo=2", "t".repeat(241), "v".repeat(14)),
        format!("rojo=1,{}@v=x,congo=2", "t".repeat(242)),
    ] {
        let tp = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
        let out = handle_and_call(
            &d,
            &request(&[("traceparent", &tp), ("tracestate", &state)]),
        );
        assert_eq!(out["tracestate"], state.as_str());
    }
}

#[test]
fn dropped_members_are_named_in_one_debug_line_without_their_values() {
    // Processing Model: "Invalid tracestate entries MAY also be discarded." The others stay,
    // and the operator can see which were dropped and why.
    let (d, _g, logs) = service("info,chassis_observability::propagation=debug");
    let tp = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let incoming = request(&[
        ("traceparent", &tp),
        (
            "tracestate",
            "rojo=1,Bad=secret-one,rojo=secret-two,congo=a=b",
        ),
        ("tracestate", "ok=2"),
    ]);
    let out = handle_and_call(&d, &incoming);
    assert_eq!(out["tracestate"], "rojo=1,ok=2");

    let lines: Vec<serde_json::Value> = logs
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let dropped: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["body"] == "tracestate list-members dropped, the others kept")
        .collect();
    assert_eq!(dropped.len(), 1, "{lines:#?}");
    assert_eq!(dropped[0]["severity_text"], "DEBUG");
    assert_eq!(
        dropped[0]["dropped"],
        "#2 \"Bad\": key outside the grammar; \
         #3 \"rojo\": duplicated key, the left-most member kept; \
         #4 \"congo\": value outside the grammar"
    );
    let all = logs.contents();
    assert!(!all.contains("secret"), "a value was logged: {all}");

    // A valid tracestate logs nothing.
    let before = logs.lines().len();
    handle_and_call(
        &d,
        &request(&[("traceparent", &tp), ("tracestate", "rojo=1")]),
    );
    assert_eq!(logs.lines().len(), before);
}

#[test]
fn too_many_members_discard_the_header_and_say_so() {
    // "There can be a maximum of 32 list-members in a list."
    let (d, _g, logs) = service("info,chassis_observability::propagation=debug");
    let tp = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let list = (1..=33)
        .map(|i| format!("k{i}={i}"))
        .collect::<Vec<_>>()
        .join(",");
    let out = handle_and_call(&d, &request(&[("traceparent", &tp), ("tracestate", &list)]));
    assert!(!out.contains_key("tracestate"), "{out:?}");
    assert_eq!(field(&out["traceparent"], 1), TRACE_ID);
    let all = logs.contents();
    assert_eq!(
        all.matches("tracestate discarded: more than 32 list-members")
            .count(),
        1,
        "{all}"
    );
}

#[test]
fn uppercase_hex_and_all_zero_ids_restart_the_trace() {
    // "trace-id": "If the trace-id value is invalid (for example if it contains non-allowed
    // characters or all zeros), vendors MUST ignore the entire header"; "parent-id": likewise
    // "if it contains non-lowercase hex characters".
    let (d, _g, _) = service("info");
    for tp in [
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
    ] {
        let out = handle_and_call(
            &d,
            &request(&[("traceparent", tp), ("tracestate", "rojo=1")]),
        );
        let sent = &out["traceparent"];
        assert_ne!(field(sent, 1), TRACE_ID, "{tp}");
        assert_ne!(field(sent, 1), "00000000000000000000000000000000", "{tp}");
        // "If the vendor failed to parse traceparent, it MUST NOT attempt to parse tracestate."
        assert!(!out.contains_key("tracestate"), "{tp}: {out:?}");
        // A new trace of this service: random trace-id.
        assert_eq!(field(sent, 3), "03", "{tp}");
    }
}

#[test]
fn a_future_version_with_extra_fields_continues_as_version_00() {
    // "Versioning of traceparent": parse the known fields, "Vendors MUST NOT parse or assume
    // anything about unknown fields", and send "the highest version of the specification
    // known to the implementation".
    let (d, _g, _) = service("info");
    let tp = format!("cc-{TRACE_ID}-00f067aa0ba902b7-03-what-the-future-will-be-like");
    let out = handle_and_call(&d, &request(&[("traceparent", &tp)]));
    let sent = &out["traceparent"];
    assert_eq!(field(sent, 0), "00");
    assert_eq!(field(sent, 1), TRACE_ID);
    assert_eq!(field(sent, 3), "03");
    assert_eq!(sent.len(), 55);
}
