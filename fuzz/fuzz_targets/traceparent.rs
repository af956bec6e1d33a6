//! W3C `traceparent` (chassis_observability::propagation): the parser and the propagator agree,
//! and whatever is accepted re-serialises to a value that parses to the same fields.
#![no_main]

use std::collections::HashMap;

use chassis_observability::propagation::{
    HeaderExtractor, TRACEPARENT, extract_context, format_traceparent, parse_traceparent,
};
use libfuzzer_sys::fuzz_target;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceState};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_traceparent(value);

    // Extraction through the composite propagator gives exactly what the parser gives.
    let carrier: HashMap<String, String> = [(TRACEPARENT.to_owned(), value.to_owned())].into();
    let cx = extract_context(&carrier);
    let sc = cx.span().span_context().clone();
    match parsed {
        None => assert!(
            !sc.is_valid(),
            "rejected traceparent {value:?} was extracted"
        ),
        Some(p) => {
            assert!(sc.is_valid() && sc.is_remote());
            assert_eq!(
                (sc.trace_id(), sc.span_id(), sc.trace_flags()),
                (p.trace_id, p.span_id, p.trace_flags)
            );
            let again = format_traceparent(&SpanContext::new(
                p.trace_id,
                p.span_id,
                p.trace_flags,
                true,
                TraceState::default(),
            ));
            assert_eq!(again.len(), 55);
            assert_eq!(parse_traceparent(&again), Some(p));
            // The ids come from the input verbatim; only the version and the unknown flags
            // may change.
            let trimmed = value.trim_matches([' ', '\t']);
            assert_eq!(&again[3..53], &trimmed[3..53]);
            if trimmed.starts_with("00-") && (trimmed.ends_with("-00") || trimmed.ends_with("-01"))
            {
                assert_eq!(again, trimmed);
            }
        }
    }

    // The same through an HTTP header map, when the value is a legal header value; the
    // extractor treats values that are not visible ASCII as absent (as documented).
    if let Ok(header) = http::HeaderValue::from_str(value) {
        let readable = header.to_str().is_ok();
        let mut map = http::HeaderMap::new();
        map.insert(TRACEPARENT, header);
        let sc = extract_context(&HeaderExtractor(&map))
            .span()
            .span_context()
            .clone();
        assert_eq!(sc.is_valid(), parsed.is_some() && readable);
    }
});
