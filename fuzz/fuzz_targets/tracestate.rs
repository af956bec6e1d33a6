//! W3C `tracestate` (chassis_observability::propagation): accepted lists re-serialise to a
//! header that parses to the same list, never more than 32 members, never longer than the input
//! or than `MAX_TRACESTATE_LEN`; OpenTelemetry's `TraceState` gets a subset of them, in order;
//! split header fields are combined; a bad tracestate never affects the traceparent, and what is
//! extracted is what is sent on.
//! Input: the header fields, one per line.
#![no_main]

use std::collections::HashMap;

use chassis_observability::propagation::{
    HeaderExtractor, MAX_TRACESTATE_LEN, MAX_TRACESTATE_MEMBERS, TRACEPARENT, TRACESTATE,
    extract_context, inject_context, parse_tracestate,
};
use libfuzzer_sys::fuzz_target;
use opentelemetry::trace::TraceContextExt;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let fields: Vec<&str> = input.split('\n').collect();
    let combined = fields.join(",");

    let parsed = parse_tracestate(&combined);
    if let Some(list) = &parsed {
        let header = list.header();
        assert!(header.len() <= combined.len());
        assert!(header.len() <= MAX_TRACESTATE_LEN);
        assert!(list.len() <= MAX_TRACESTATE_MEMBERS);
        let members: Vec<&str> = header.split(',').filter(|m| !m.is_empty()).collect();
        assert_eq!(members.len(), list.len());
        for member in &members {
            let (key, value) = member.split_once('=').expect("a member is key=value");
            assert_eq!(list.get(key), Some(value));
        }
        let again = parse_tracestate(&header).expect("a serialised tracestate parses");
        assert_eq!(&again, list);
        // OpenTelemetry's TraceState: a subsequence of the list.
        let otel = list.to_trace_state();
        let mut rest = list.iter();
        for (key, value) in &otel {
            assert!(
                rest.any(|m| m == (key, value)),
                "{key}={value} out of order"
            );
        }
    }

    // Through the propagator, as separate header fields. The extractor treats a field that is
    // not visible ASCII as absent (as documented), so the others are combined without it.
    let mut map = http::HeaderMap::new();
    map.insert(TRACEPARENT, http::HeaderValue::from_static(PARENT));
    let mut readable = Vec::new();
    for field in &fields {
        let Ok(value) = http::HeaderValue::from_str(field) else {
            return;
        };
        if value.to_str().is_ok() {
            readable.push(*field);
        }
        map.append(TRACESTATE, value);
    }
    let expected = if readable.is_empty() {
        None
    } else {
        parse_tracestate(&readable.join(","))
    };
    let cx = extract_context(&HeaderExtractor(&map));
    let sc = cx.span().span_context().clone();
    assert!(sc.is_valid(), "a bad tracestate dropped the traceparent");
    assert_eq!(
        sc.trace_state().header(),
        expected
            .as_ref()
            .map(|list| list.to_trace_state().header())
            .unwrap_or_default()
    );
    let mut sent: HashMap<String, String> = HashMap::new();
    inject_context(&cx, &mut sent);
    assert_eq!(sent[TRACEPARENT], PARENT);
    assert_eq!(
        sent.get(TRACESTATE).cloned().unwrap_or_default(),
        expected.map(|list| list.header()).unwrap_or_default()
    );
});
