//! W3C Trace Context and W3C Baggage propagation across process boundaries.
//!
//! A span context travels in the `traceparent` / `tracestate` headers
//! ([W3C Trace Context Level 1](https://www.w3.org/TR/trace-context-1/)) and application
//! key/values in the `baggage` header ([W3C Baggage](https://www.w3.org/TR/baggage/)). This module
//! is a thin, init-free layer over the OpenTelemetry propagator API: a static
//! [`TextMapCompositePropagator`] of [`W3CTraceContextPropagator`] and the SDK's
//! [`BaggagePropagator`], so it works in a unit test or a library without any global setup.
//!
//! Carriers: [`HeaderInjector`] / [`HeaderExtractor`] for [`http::HeaderMap`], and any type
//! implementing OpenTelemetry's [`Injector`] / [`Extractor`] (chassis-messaging implements them for
//! AMQP headers; `HashMap<String, String>` works out of the box).
//!
//! # Malformed input
//!
//! Extraction never fails and never panics. Whatever the caller sends, you get a [`Context`]: with
//! the remote parent when `traceparent` is valid, without it (the next span restarts the trace)
//! when it is not. [`W3CTraceContextPropagator`] follows Level 1 to the letter where the SDK's
//! `TraceContextPropagator` (0.33) is lenient; see its docs for the list of differences.
//!
//! # Example
//!
//! ```
//! use chassis_observability::propagation::{extract_context, inject_context, HeaderExtractor, HeaderInjector};
//! use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
//! use opentelemetry::Context;
//!
//! // Service A: a span context (normally the current span's) goes into the request headers.
//! let parent = SpanContext::new(
//!     TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
//!     SpanId::from_hex("00f067aa0ba902b7").unwrap(),
//!     TraceFlags::SAMPLED,
//!     false,
//!     TraceState::default(),
//! );
//! let cx = Context::new().with_remote_span_context(parent.clone());
//! let mut headers = http::HeaderMap::new();
//! inject_context(&cx, &mut HeaderInjector(&mut headers));
//! assert_eq!(headers["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
//!
//! // Service B: the same trace continues.
//! let remote = extract_context(&HeaderExtractor(&headers));
//! assert_eq!(remote.span().span_context().trace_id(), parent.trace_id());
//! assert!(remote.span().span_context().is_remote());
//!
//! // Garbage is not an error: it simply starts a new trace.
//! headers.insert("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse().unwrap());
//! assert!(!extract_context(&HeaderExtractor(&headers)).span().span_context().is_valid());
//! ```

use std::sync::{LazyLock, OnceLock};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
pub use opentelemetry::propagation::{
    Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::BaggagePropagator;

/// The `traceparent` header name.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header name.
pub const TRACESTATE: &str = "tracestate";
/// The `baggage` header name.
pub const BAGGAGE: &str = "baggage";

/// The highest `tracestate` list-member count W3C Trace Context allows (§3.3.1.1).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(text_map_propagator);

/// A fresh composite propagator: W3C Trace Context ([`W3CTraceContextPropagator`]) followed by
/// W3C Baggage. `Telemetry::init` installs one as OpenTelemetry's global propagator so third-party
/// instrumentation propagates the same way; this module's functions do not need that.
pub fn text_map_propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(W3CTraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// Writes the span context (`traceparent`, `tracestate`) and baggage of `cx` into `carrier`.
///
/// Nothing is written for a context without a valid span context; an empty `tracestate` is not
/// sent (§3.3.1.1: vendors "SHOULD avoid sending them").
pub fn inject_context(cx: &Context, carrier: &mut dyn Injector) {
    PROPAGATOR.inject_context(cx, carrier);
}

/// Writes the context of the current `tracing` span into `carrier`.
///
/// With the chassis subscriber (or any subscriber with a tracing-opentelemetry layer) installed this
/// is the OpenTelemetry span behind [`tracing::Span::current`]; without one it falls back to
/// OpenTelemetry's own current [`Context`], so contexts attached with `Context::attach` propagate
/// too.
pub fn inject_current(carrier: &mut dyn Injector) {
    inject_context(&current_context(), carrier);
}

/// The OpenTelemetry context of the current `tracing` span, or OpenTelemetry's current context
/// when the span carries none (no tracing-opentelemetry layer, or no span entered).
pub fn current_context() -> Context {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let cx = tracing::Span::current().context();
    if cx.span().span_context().is_valid() {
        cx
    } else {
        Context::current()
    }
}

/// Reads a remote context from `carrier`. Never fails: invalid or absent headers give a context
/// without a remote span (a new trace starts), an invalid `tracestate` alone is dropped while the
/// `traceparent` is kept.
pub fn extract_context(carrier: &dyn Extractor) -> Context {
    PROPAGATOR.extract(carrier)
}

/// Like [`extract_context`], layered over an existing context `cx` instead of an empty one.
pub fn extract_with_context(cx: &Context, carrier: &dyn Extractor) -> Context {
    PROPAGATOR.extract_with_context(cx, carrier)
}

/// [`Injector`] writing into an [`http::HeaderMap`]. Keys or values that are not valid header
/// names / values are skipped (never a panic); an existing header of the same name is replaced.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }

    fn reserve(&mut self, additional: usize) {
        self.0.reserve(additional);
    }
}

/// [`Extractor`] reading from an [`http::HeaderMap`]. Header names are case-insensitive, as
/// §3.2.1 requires; values that are not visible ASCII are treated as absent.
/// [`Extractor::get_all`] returns every field of a repeated header, which
/// [`W3CTraceContextPropagator`] needs to combine split `tracestate` fields and to reject
/// duplicated `traceparent` fields.
#[derive(Debug, Clone, Copy)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }

    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let values: Vec<&str> = self
            .0
            .get_all(key)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then_some(values)
    }
}

/// A strict W3C Trace Context Level 1 propagator for `traceparent` and `tracestate`.
///
/// Injection writes version `00` with only the `sampled` flag (§3.2.2.5.2: vendors "MUST set
/// those [other flags] to zero") and omits an empty `tracestate`.
///
/// Extraction implements §3.2 (traceparent), §3.2.4 (versioning) and §3.3 (tracestate) exactly.
/// Where opentelemetry_sdk 0.33's `TraceContextPropagator` deviates, this one corrects it:
///
/// | input | SDK 0.33 | here |
/// |---|---|---|
/// | short fields (`0-…`, a 31-digit trace-id, flags `1`) | accepted (`from_str_radix`) | restart (§3.2.2: `2HEXDIGLC`, `32HEXDIGLC`, …) |
/// | a `+` sign in a field (`+f…`) | accepted | restart |
/// | version `00` with trailing data (`…-01-`) | accepted | restart (version 00 has exactly 4 fields) |
/// | higher version shorter than 55 chars or with garbage after the flags (`…-01x`) | partly accepted | §3.2.4 rules |
/// | two `traceparent` fields | first one used | restart (the value is ambiguous) |
/// | split `tracestate` fields | first one used | combined with `,` (§3.3.1.1, RFC 7230 §3.2.2) |
/// | over 32 `tracestate` members | first 32 kept | whole tracestate dropped |
/// | bad tracestate key (Level 1 ABNF) / value (control chars, non-ASCII, trailing space) | partly accepted | whole tracestate dropped (§4.3: "MAY discard the entire header") |
/// | duplicated tracestate key | dropped | dropped (§3.3.1.4: one entry per key) |
///
/// Whenever `traceparent` is invalid, `tracestate` is not parsed (§3.3: "If the vendor failed to
/// parse `traceparent`, it MUST NOT attempt to parse `tracestate`"); an invalid `tracestate`
/// never affects `traceparent`.
#[derive(Debug, Clone, Copy, Default)]
pub struct W3CTraceContextPropagator {
    _private: (),
}

impl W3CTraceContextPropagator {
    /// A new propagator.
    pub const fn new() -> Self {
        Self { _private: () }
    }
}

fn trace_context_fields() -> &'static [String; 2] {
    static FIELDS: OnceLock<[String; 2]> = OnceLock::new();
    FIELDS.get_or_init(|| [TRACEPARENT.to_owned(), TRACESTATE.to_owned()])
}

impl TextMapPropagator for W3CTraceContextPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        injector.set(TRACEPARENT, format_traceparent(sc));
        let state = sc.trace_state().header();
        if !state.is_empty() {
            injector.set(TRACESTATE, state);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match extract_span_context(extractor) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(trace_context_fields())
    }
}

/// Formats `sc` as a version-00 `traceparent` value (only the sampled flag is kept).
pub fn format_traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags() & TraceFlags::SAMPLED
    )
}

fn extract_span_context(extractor: &dyn Extractor) -> Option<SpanContext> {
    let parents = extractor.get_all(TRACEPARENT)?;
    // Two traceparent fields cannot be combined into one value (it is not a list), so the
    // caller's intent is unknown: restart, as the W3C test suite's "duplicated traceparent" case
    // expects.
    let [traceparent] = parents.as_slice() else {
        return None;
    };
    let parsed = parse_traceparent(traceparent)?;
    let state = extractor
        .get_all(TRACESTATE)
        .and_then(|fields| parse_tracestate(&fields.join(",")))
        .unwrap_or_default();
    Some(SpanContext::new(
        parsed.trace_id,
        parsed.span_id,
        parsed.trace_flags,
        true,
        state,
    ))
}

/// The three fields a `traceparent` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace-id (never all zeroes).
    pub trace_id: TraceId,
    /// The parent-id, i.e. the caller's span id (never all zeroes).
    pub span_id: SpanId,
    /// The trace-flags, reduced to the `sampled` bit (§3.2.2.5.2).
    pub trace_flags: TraceFlags,
}

/// Parses a `traceparent` value by W3C Trace Context Level 1 §3.2.2 and §3.2.4.
/// `None` means "invalid: restart the trace". Surrounding spaces/tabs are ignored.
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let b = value.trim_matches([' ', '\t']).as_bytes();
    // version = 2HEXDIGLC followed by "-" (§3.2.4: otherwise "restart the trace").
    if b.len() < 3 || b[2] != b'-' {
        return None;
    }
    let version = hex_lc(&b[0..2])?;
    // §3.2.2.1: "Version ff is invalid."
    if version == 0xff {
        return None;
    }
    if version == 0 {
        // version-format = trace-id "-" parent-id "-" trace-flags, nothing more.
        if b.len() != 55 {
            return None;
        }
    } else {
        // §3.2.4: a higher version shorter than 55 characters is not parsed; the flags must be
        // at the end of the string or followed by a dash.
        if b.len() < 55 || (b.len() > 55 && b[55] != b'-') {
            return None;
        }
    }
    if b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let trace_id = TraceId::from_bytes(hex_array::<16>(&b[3..35])?);
    let span_id = SpanId::from_bytes(hex_array::<8>(&b[36..52])?);
    let flags = hex_lc(&b[53..55])?;
    // §3.2.2.3 / §3.2.2.4: all-zero ids are invalid, the traceparent is ignored.
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some(TraceParent {
        trace_id,
        span_id,
        trace_flags: TraceFlags::new(flags) & TraceFlags::SAMPLED,
    })
}

/// One lower-case hex digit (HEXDIGLC).
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Two HEXDIGLC as a byte.
fn hex_lc(pair: &[u8]) -> Option<u8> {
    match pair {
        [hi, lo] => Some(hex_digit(*hi)? << 4 | hex_digit(*lo)?),
        _ => None,
    }
}

fn hex_array<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = hex_lc(pair)?;
    }
    Some(out)
}

/// Parses a (combined) `tracestate` value by W3C Trace Context Level 1 §3.3.1.
///
/// `None` means "discard the whole header" (§4.3: "If the tracestate header cannot be parsed the
/// vendor MAY discard the entire header"): more than 32 list-members, a member without `=`, a key
/// outside the Level 1 ABNF, a value outside it, or a duplicated key. Empty and whitespace-only
/// members are allowed and skipped (§3.3.1.1). An empty header is a valid, empty state.
pub fn parse_tracestate(value: &str) -> Option<TraceState> {
    let mut members: Vec<(&str, &str)> = Vec::new();
    for member in value.split(',') {
        // "Spaces and horizontal tabs surrounding list-members are ignored."
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        if members.len() == MAX_TRACESTATE_MEMBERS {
            return None;
        }
        let (key, val) = member.split_once('=')?;
        if !valid_tracestate_key(key) || !valid_tracestate_value(val) {
            return None;
        }
        if members.iter().any(|(k, _)| *k == key) {
            return None;
        }
        members.push((key, val));
    }
    TraceState::from_key_value(members).ok()
}

fn is_keychar(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'*' | b'/')
}

/// Level 1 §3.3.1.3.1:
///
/// ```abnf
/// key = simple-key / multi-tenant-key
/// simple-key = lcalpha 0*255( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
/// multi-tenant-key = tenant-id "@" system-id
/// tenant-id = ( lcalpha / DIGIT ) 0*240( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
/// system-id = lcalpha 0*13( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )
/// ```
fn valid_tracestate_key(key: &str) -> bool {
    let b = key.as_bytes();
    match key.split_once('@') {
        None => {
            !b.is_empty()
                && b.len() <= 256
                && b[0].is_ascii_lowercase()
                && b.iter().all(|&c| is_keychar(c))
        }
        Some((tenant, system)) => {
            let (t, s) = (tenant.as_bytes(), system.as_bytes());
            !t.is_empty()
                && t.len() <= 241
                && (t[0].is_ascii_lowercase() || t[0].is_ascii_digit())
                && t.iter().all(|&c| is_keychar(c))
                && !s.is_empty()
                && s.len() <= 14
                && s[0].is_ascii_lowercase()
                && s.iter().all(|&c| is_keychar(c))
        }
    }
}

/// Level 1 §3.3.1.3.2: `value = 0*255(chr) nblk-chr`, `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`,
/// `chr = %x20 / nblk-chr`.
fn valid_tracestate_value(value: &str) -> bool {
    let b = value.as_bytes();
    let nblk = |c: u8| matches!(c, 0x21..=0x2b | 0x2d..=0x3c | 0x3e..=0x7e);
    match b.split_last() {
        Some((&last, rest)) => {
            b.len() <= 256 && nblk(last) && rest.iter().all(|&c| c == b' ' || nblk(c))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    //! Cases quoted from W3C Trace Context Level 1 (W3C Recommendation, 23 November 2021),
    //! https://www.w3.org/TR/trace-context-1/, section numbers as in that document.
    use std::collections::HashMap;

    use opentelemetry::baggage::BaggageExt;

    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    fn extract(pairs: &[(&str, &str)]) -> SpanContext {
        let map = headers(pairs);
        extract_context(&HeaderExtractor(&map))
            .span()
            .span_context()
            .clone()
    }

    #[test]
    fn spec_examples_are_valid() {
        // §3.2.5 "Examples of HTTP traceparent Headers".
        let sampled = parse_traceparent(VALID).unwrap();
        assert_eq!(
            sampled.trace_id,
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap()
        );
        assert_eq!(
            sampled.span_id,
            SpanId::from_hex("00f067aa0ba902b7").unwrap()
        );
        assert!(sampled.trace_flags.is_sampled());
        let unsampled =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.trace_flags.is_sampled());
        // §3.2: the intro example.
        assert!(
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_some()
        );
    }

    #[test]
    fn version_ff_is_invalid() {
        // §3.2.2.1: "Version ff is invalid."
        assert_eq!(
            parse_traceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            None
        );
    }

    #[test]
    fn unparsable_version_restarts() {
        // §3.2.4: "When the version prefix cannot be parsed (it's not 2 hex characters followed by
        // a dash (-)), the implementation should restart the trace."
        for bad in [
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "000-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "qw-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "+0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
            "-",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn higher_versions_parse_the_known_prefix() {
        // §3.2.4: "If a higher version is detected, the implementation SHOULD try to parse it":
        // trace-id, parent-id, and "the 2 characters are either at the end of the string or
        // followed by a dash".
        let future = parse_traceparent(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
        )
        .unwrap();
        assert_eq!(future, parse_traceparent(VALID).unwrap());
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09").is_some()
        );
        // ... "followed by a dash": anything else after the flags is invalid.
        assert_eq!(
            parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what"),
            None
        );
        // "If the size of the header is shorter than 55 characters, the vendor should not parse
        // the header and should restart the trace."
        assert_eq!(
            parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
            None
        );
    }

    #[test]
    fn version_00_has_exactly_four_fields() {
        // §3.2.2.2: version-format = trace-id "-" parent-id "-" trace-flags (for version 00).
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn wrong_lengths_are_invalid() {
        // §3.2.2.2: trace-id = 32HEXDIGLC, parent-id = 16HEXDIGLC, trace-flags = 2HEXDIGLC.
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b77-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-+0f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn upper_case_hex_is_invalid() {
        // §3.2.2: HEXDIGLC = DIGIT / "a" / "b" / "c" / "d" / "e" / "f" ; lowercase hex character.
        // §3.2.2.4: "Vendors MUST ignore the traceparent when the parent-id is invalid (for
        // example, if it contains non-lowercase hex characters)."
        for bad in [
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn all_zero_ids_are_invalid() {
        // §3.2.2.3: "All bytes as zero (00000000000000000000000000000000) is considered an invalid
        // value." §3.2.2.4: likewise for the parent-id (0000000000000000).
        assert_eq!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"),
            None
        );
    }

    #[test]
    fn garbage_flags_are_invalid_and_unknown_flags_are_cleared() {
        // trace-flags = 2HEXDIGLC: non-hex is invalid.
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-qw",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        // §3.2.2.5: "a flag 00000001 could be encoded as 01 in hex, or 09 in hex if present with
        // the flag 00001000"; §3.2.2.5.2: other flags "Vendors MUST set those to zero".
        let p =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09").unwrap();
        assert_eq!(p.trace_flags, TraceFlags::SAMPLED);
        let p =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe").unwrap();
        assert_eq!(p.trace_flags, TraceFlags::default());
    }

    #[test]
    fn non_ascii_never_panics() {
        // Multi-byte characters at the field offsets must not be sliced through.
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
            "é0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e4736€00f067aa0ba902b-01",
            "\u{0}\u{0}-",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn invalid_traceparent_restarts_and_ignores_tracestate() {
        // §3.3: "If the vendor failed to parse traceparent, it MUST NOT attempt to parse tracestate."
        let sc = extract(&[
            (
                "traceparent",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ),
            ("tracestate", "rojo=00f067aa0ba902b7"),
        ]);
        assert!(!sc.is_valid());
        assert_eq!(sc.trace_state().header(), "");
    }

    #[test]
    fn duplicated_traceparent_restarts() {
        let sc = extract(&[("traceparent", VALID), ("traceparent", VALID)]);
        assert!(!sc.is_valid());
    }

    #[test]
    fn header_names_are_case_insensitive() {
        // §3.2.1: "Vendors MUST expect the header name in any case (upper, lower, mixed)".
        let mut map = HeaderMap::new();
        map.insert("TraceParent", VALID.parse().unwrap());
        let sc = extract_context(&HeaderExtractor(&map))
            .span()
            .span_context()
            .clone();
        assert!(sc.is_valid());
        assert!(sc.is_remote());
    }

    #[test]
    fn tracestate_spec_examples() {
        // §3.3.2 "Examples of tracestate HTTP Headers".
        let s = parse_tracestate("rojo=00f067aa0ba902b7").unwrap();
        assert_eq!(s.get("rojo"), Some("00f067aa0ba902b7"));
        let s = parse_tracestate("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE").unwrap();
        assert_eq!(s.header(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
        // §3.3.1.3.1 multi-tenant key "fw529a3039@dt".
        assert!(parse_tracestate("fw529a3039@dt=00f067aa0ba902b7").is_some());
    }

    #[test]
    fn tracestate_empty_and_whitespace_members_are_allowed() {
        // §3.3.1.1: "Empty and whitespace-only list members are allowed. Vendors MUST accept empty
        // tracestate headers". "Spaces and horizontal tabs surrounding list-members are ignored."
        assert_eq!(parse_tracestate("").unwrap().header(), "");
        let s = parse_tracestate(" , rojo=1 ,\t,congo=2\t, ").unwrap();
        assert_eq!(s.header(), "rojo=1,congo=2");
    }

    #[test]
    fn tracestate_32_members_kept_33_dropped() {
        // §3.3.1.1: "There can be a maximum of 32 list-members in a list."
        let list = |n: usize| {
            (0..n)
                .map(|i| format!("k{i}=v{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let s = parse_tracestate(&list(32)).unwrap();
        assert_eq!(s.header(), list(32));
        assert_eq!(parse_tracestate(&list(33)), None);
        // Empty members do not count.
        assert!(parse_tracestate(&format!("{},,,", list(32))).is_some());
    }

    #[test]
    fn tracestate_bad_keys_drop_the_header() {
        // §3.3.1.3.1 key ABNF (Level 1).
        for bad in [
            "Rojo=1",              // upper case
            "1rojo=1",             // simple-key starts with lcalpha
            "ro jo=1",             // space inside
            "rojo.x=1",            // '.' not a keychar
            "=1",                  // empty key
            "rojo",                // no '='
            "t@=1",                // empty system-id
            "@sys=1",              // empty tenant-id
            "t@1sys=1",            // system-id starts with lcalpha
            "t@abcdefghijklmno=1", // system-id longer than 14
            "a@b@c=1",             // two '@'
        ] {
            assert_eq!(parse_tracestate(&format!("ok=1,{bad}")), None, "{bad:?}");
        }
        assert!(parse_tracestate(&format!("{}=1", "a".repeat(256))).is_some());
        assert_eq!(parse_tracestate(&format!("{}=1", "a".repeat(257))), None);
        assert!(parse_tracestate("1tenant@sys-1/*_=1").is_some());
    }

    #[test]
    fn tracestate_bad_values_drop_the_header() {
        // §3.3.1.3.2: value = 0*255(chr) nblk-chr; printable ASCII except ',' and '='.
        for bad in ["k=", "k=a=b", "k=\u{7f}", "k=é", "k=a\u{1}b"] {
            assert_eq!(parse_tracestate(bad), None, "{bad:?}");
        }
        // Leading spaces are part of the value, trailing ones are OWS.
        let s = parse_tracestate("k= v ").unwrap();
        assert_eq!(s.get("k"), Some(" v"));
        assert!(parse_tracestate(&format!("k={}", "x".repeat(256))).is_some());
        assert_eq!(parse_tracestate(&format!("k={}", "x".repeat(257))), None);
    }

    #[test]
    fn tracestate_duplicate_keys_drop_the_header() {
        // §3.3.1.4: "Only one entry per key is allowed".
        assert_eq!(parse_tracestate("congo=1,rojo=2,congo=3"), None);
    }

    #[test]
    fn bad_tracestate_keeps_traceparent() {
        // §3.3: "failure to parse tracestate MUST NOT affect the parsing of traceparent."
        let sc = extract(&[("traceparent", VALID), ("tracestate", "BAD=1")]);
        assert!(sc.is_valid());
        assert_eq!(sc.trace_state().header(), "");
    }

    #[test]
    fn split_tracestate_fields_are_combined() {
        // §3.3.1.1: "When receiving multiple tracestate header fields, they MUST be combined into
        // a single header according to RFC7230."
        let sc = extract(&[
            ("traceparent", VALID),
            ("tracestate", "rojo=00f067aa0ba902b7"),
            ("tracestate", "congo=t61rcWkgMzE"),
        ]);
        assert_eq!(
            sc.trace_state().header(),
            "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
        );
    }

    #[test]
    fn inject_round_trip_with_baggage_and_map_carrier() {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_key_value([("rojo", "00f067aa0ba902b7")]).unwrap(),
        );
        let cx = Context::new()
            .with_remote_span_context(sc.clone())
            .with_baggage([opentelemetry::KeyValue::new("tenant", "acme")]);
        let mut map: HashMap<String, String> = HashMap::new();
        inject_context(&cx, &mut map);
        assert_eq!(map["traceparent"], VALID);
        assert_eq!(map["tracestate"], "rojo=00f067aa0ba902b7");
        assert_eq!(map["baggage"], "tenant=acme");

        let back = extract_context(&map);
        assert_eq!(back.span().span_context().trace_id(), sc.trace_id());
        assert_eq!(back.span().span_context().span_id(), sc.span_id());
        assert_eq!(
            back.baggage().get("tenant").map(|v| v.as_str().to_owned()),
            Some("acme".to_owned())
        );
    }

    #[test]
    fn empty_tracestate_is_not_sent_and_invalid_context_injects_nothing() {
        let mut map: HashMap<String, String> = HashMap::new();
        inject_context(&Context::new(), &mut map);
        assert!(map.is_empty());
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::new(0xff),
            false,
            TraceState::default(),
        );
        inject_context(&Context::new().with_remote_span_context(sc), &mut map);
        assert_eq!(map["traceparent"], VALID);
        assert!(!map.contains_key("tracestate"));
    }

    #[test]
    fn header_injector_skips_invalid_values() {
        let mut map = HeaderMap::new();
        let mut inj = HeaderInjector(&mut map);
        inj.set("bad header", "v".into());
        inj.set("x-ok", "line\nbreak".into());
        inj.set("x-ok", "fine".into());
        assert_eq!(map.len(), 1);
        assert_eq!(map["x-ok"], "fine");
    }

    #[test]
    fn garbage_baggage_never_panics() {
        for bad in ["", ",,,", "=", "k", "k=%zz", "k=v;;;=", "\u{7f}=\u{7f}"] {
            let map: HashMap<String, String> = [("baggage".to_owned(), bad.to_owned())]
                .into_iter()
                .collect();
            let _ = extract_context(&map);
        }
    }
}
