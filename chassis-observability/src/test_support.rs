//! What the unit tests of several modules share.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// A span context of trace `trace` and span `span` (both hex) with `flags` and no trace state;
/// `remote` says whether it came from another process.
pub(crate) fn span_context(
    trace: &str,
    span: &str,
    flags: TraceFlags,
    remote: bool,
) -> SpanContext {
    SpanContext::new(
        TraceId::from_hex(trace).unwrap(),
        SpanId::from_hex(span).unwrap(),
        flags,
        remote,
        TraceState::default(),
    )
}
