//! W3C `tracestate` (chassis_observability::propagation): accepted states re-serialise to a
//! header that parses to the same state, never more than 32 members, never longer than the
//! input; split header fields are combined; a bad tracestate never affects the traceparent.
//! Input: the header fields, one per line.
#![no_main]

use chassis_observability::propagation::{
    HeaderExtractor, MAX_TRACESTATE_MEMBERS, TRACEPARENT, TRACESTATE, extract_context,
    parse_tracestate,
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
    if let Some(state) = &parsed {
        let header = state.header();
        assert!(header.len() <= combined.len());
        let members: Vec<&str> = header.split(',').filter(|m| !m.is_empty()).collect();
        assert!(members.len() <= MAX_TRACESTATE_MEMBERS);
        for member in &members {
            let (key, value) = member.split_once('=').expect("a member is key=value");
            assert_eq!(state.get(key), Some(value));
        }
        let again = parse_tracestate(&header).expect("a serialised tracestate parses");
        assert_eq!(again.header(), header);
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
    let sc = extract_context(&HeaderExtractor(&map))
        .span()
        .span_context()
        .clone();
    assert!(sc.is_valid(), "a bad tracestate dropped the traceparent");
    assert_eq!(
        sc.trace_state().header(),
        expected.map(|s| s.header()).unwrap_or_default()
    );
});
