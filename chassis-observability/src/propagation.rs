//! W3C Trace Context (Level 2) and W3C Baggage propagation across process boundaries.
//!
//! A span context travels in the `traceparent` / `tracestate` headers
//! ([W3C Trace Context Level 2](https://www.w3.org/TR/trace-context-2/)) and application
//! key/values in the `baggage` header ([W3C Baggage](https://www.w3.org/TR/baggage/)). This module
//! is a thin, init-free layer over the OpenTelemetry propagator API: a static
//! [`TextMapCompositePropagator`] of [`W3CTraceContextPropagator`] and the SDK's
//! [`BaggagePropagator`], so it works in a unit test or a library without any global setup.
//!
//! Carriers: [`HeaderInjector`] / [`HeaderExtractor`] for [`http::HeaderMap`], and any type
//! implementing OpenTelemetry's [`Injector`] / [`Extractor`] (chassis-messaging implements them for
//! AMQP headers; `HashMap<String, String>` works out of the box).
//!
//! # Trace Context Level 2
//!
//! OpenTelemetry 0.33 predates parts of Level 2; [`W3CTraceContextPropagator`] fills the gaps:
//!
//! - **The `random-trace-id` flag** (bit `0x02` of trace-flags, [`RANDOM_TRACE_ID`]; the SDK's
//!   `TraceFlags` only names `SAMPLED`, so the raw bit is carried). A received flag is kept in the
//!   span context, and every outgoing `traceparent` with the same trace-id carries it set or
//!   unset exactly as received, even where the SDK reset the flags (it does for a span its
//!   sampler drops). A trace started in this process gets the flag, because its trace-id comes
//!   from the SDK's default, random id generator (the only one the chassis installs). A span
//!   context built by hand (`Context::with_remote_span_context`) and injected as it is keeps
//!   its own flags, but a span started under it counts as a trace of this process: to continue
//!   a trace-id that is not random, build the parent with [`extract_context`] from its headers.
//!   The other, undefined flags are zeroed in both directions.
//! - **`tracestate`, member by member.** A list-member that does not parse (no `=`, a key or a
//!   value outside the grammar) is dropped and the other members survive; of a duplicated key
//!   the left-most member is kept. One DEBUG event per extraction names the dropped members (by
//!   position and key, never by value) and why. Empty members and spaces or tabs around members
//!   are accepted. More than 32 list-members discard the whole header. (The processing model
//!   allows both: "the vendor MAY discard the entire header. Invalid tracestate entries MAY
//!   also be discarded"; the W3C test suite's strict level expects the former, so its checks
//!   that a valid member disappears next to an invalid one fail here, deliberately.)
//! - **Level 2 keys**: `( lcalpha / DIGIT ) 0*255( keychar )` with `@` among the keychars. The
//!   Level 1 multi-tenant limits (241 characters of tenant-id, 14 of system-id, one `@`) are
//!   gone from Level 2.
//! - **Keys OpenTelemetry's [`TraceState`] refuses.** Its key check is stricter than Level 2
//!   (one `@`, at most 13 characters after it, a letter or digit right after it). Such members
//!   are left out of the span context's `TraceState` but travel beside it in the [`Context`]
//!   and are sent on in their received position, so none is lost on the way through.
//! - **Size.** Up to [`MAX_TRACESTATE_LEN`] characters of `tracestate` are propagated (Level 2
//!   asks for at least 512). A longer list is cut by whole entries: entries over 128 characters
//!   first, then from the right.
//! - **`traceparent` versions** above `00` are read by the "Versioning of traceparent" rules
//!   (the known fields, then the end of the value or a dash) and sent on as version `00`.
//!
//! # Malformed input
//!
//! Extraction never fails and never panics. Whatever the caller sends, you get a [`Context`]: with
//! the remote parent when `traceparent` is valid, without it (the next span restarts the trace)
//! when it is not. [`W3CTraceContextPropagator`] follows the specification to the letter where
//! the SDK's `TraceContextPropagator` (0.33) is lenient; see its docs for the list of differences.
//!
//! # Example
//!
//! ```
//! use chassis_observability::propagation::{
//!     extract_context, inject_context, HeaderExtractor, HeaderInjector, RANDOM_TRACE_ID,
//! };
//! use opentelemetry::trace::TraceContextExt;
//!
//! // A request arrives with a Level 2 traceparent (sampled, random trace-id) and a tracestate
//! // with one invalid member.
//! let mut incoming = http::HeaderMap::new();
//! incoming.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03".parse().unwrap());
//! incoming.insert("tracestate", "rojo=00f067aa0ba902b7,Bad Key=1,congo=t61rcWkgMzE".parse().unwrap());
//! let cx = extract_context(&HeaderExtractor(&incoming));
//! let remote = cx.span().span_context().clone();
//! assert!(remote.is_remote() && remote.is_sampled());
//! assert_eq!(remote.trace_flags() & RANDOM_TRACE_ID, RANDOM_TRACE_ID);
//! // The invalid member is dropped, the others survive.
//! assert_eq!(remote.trace_state().header(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
//!
//! // Passed on (a service would inject its own span with `inject_current`): same trace-id,
//! // same flags, same tracestate.
//! let mut outgoing = http::HeaderMap::new();
//! inject_context(&cx, &mut HeaderInjector(&mut outgoing));
//! assert_eq!(outgoing["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03");
//! assert_eq!(outgoing["tracestate"], "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
//!
//! // Garbage is not an error: it simply starts a new trace.
//! incoming.insert("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse().unwrap());
//! assert!(!extract_context(&HeaderExtractor(&incoming)).span().span_context().is_valid());
//! ```

use std::fmt;
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

/// The highest `tracestate` list-member count W3C Trace Context allows ("There can be a maximum
/// of 32 list-members in a list").
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// The longest `tracestate` value this module propagates, in characters (commas included).
///
/// Level 2 ("tracestate Limits") asks vendors to propagate at least 512 characters and to
/// document their maximum. 4096 leaves room for many vendors' entries while keeping the header
/// well inside the 8 KiB per-header limits of common proxies and servers; the grammar alone
/// would allow 32 entries of 513 characters.
pub const MAX_TRACESTATE_LEN: usize = 4096;

/// Entries longer than this are the first removed when a `tracestate` is cut to
/// [`MAX_TRACESTATE_LEN`] ("Entries larger than 128 characters long SHOULD be removed first").
const LONG_ENTRY_LEN: usize = 128;

/// The `random-trace-id` trace flag of W3C Trace Context Level 2 (bit `00000010`): at least the
/// right-most 7 bytes of the trace-id are random.
///
/// OpenTelemetry 0.33's [`TraceFlags`] has no constant for it (only `SAMPLED`), so this is the
/// raw bit; test it with `flags & RANDOM_TRACE_ID == RANDOM_TRACE_ID`.
pub const RANDOM_TRACE_ID: TraceFlags = TraceFlags::new(0x02);

/// The trace-flags Level 2 defines (sampled, random-trace-id); "Other Flags": "Vendors MUST set
/// those to zero".
const KNOWN_FLAGS: u8 = 0x03;

static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(text_map_propagator);

/// A fresh composite propagator: W3C Trace Context ([`W3CTraceContextPropagator`]) followed by
/// W3C Baggage. [`TelemetryBuilder::init`](crate::TelemetryBuilder::init) installs one as
/// OpenTelemetry's global propagator so third-party instrumentation propagates the same way;
/// this module's functions do not need that.
///
/// With the `sentry` feature a third one follows: `sentry::SentryTracePropagator` writes
/// `sentry-trace` beside `traceparent` and reads it when no valid `traceparent` came.
pub fn text_map_propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(W3CTraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
        #[cfg(feature = "sentry")]
        Box::new(crate::sentry::SentryTracePropagator::new()),
    ])
}

/// Writes the span context (`traceparent`, `tracestate`) and baggage of `cx` into `carrier`.
///
/// Nothing is written for a context without a valid span context; an empty `tracestate` is not
/// sent (vendors "SHOULD avoid sending them").
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
/// without a remote span (a new trace starts); invalid `tracestate` members are dropped one by
/// one while the `traceparent` and the other members are kept.
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
/// Trace Context requires; values that are not visible ASCII are treated as absent.
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

/// A strict W3C Trace Context Level 2 propagator for `traceparent` and `tracestate`.
///
/// Injection writes version `00` with the `sampled` and `random-trace-id` flags (other flags
/// "MUST" be zero) and omits an empty `tracestate`. The module docs describe the Level 2
/// behaviour; section names below are those of
/// [Trace Context Level 2](https://www.w3.org/TR/trace-context-2/).
///
/// Where opentelemetry_sdk 0.33's `TraceContextPropagator` deviates, this one corrects it:
///
/// | input | SDK 0.33 | here |
/// |---|---|---|
/// | short fields (`0-…`, a 31-digit trace-id, flags `1`) | accepted (`from_str_radix`) | restart (`2HEXDIGLC`, `32HEXDIGLC`, …) |
/// | a `+` sign in a field (`+f…`) | accepted | restart |
/// | version `00` with trailing data (`…-01-`) | accepted | restart (version 00 has exactly 4 fields) |
/// | higher version shorter than 55 chars or with garbage after the flags (`…-01x`) | partly accepted | "Versioning of traceparent" rules |
/// | two `traceparent` fields | first one used | restart (the value is ambiguous) |
/// | the `random-trace-id` flag | cut to the sampled bit | kept, and sent on with the trace-id |
/// | split `tracestate` fields | first one used | combined with `,` (RFC 9110 field order) |
/// | over 32 `tracestate` members | first 32 kept | whole tracestate dropped |
/// | a `tracestate` member outside the grammar (key or value) | whole tracestate dropped, or kept | that member dropped, the others kept |
/// | a duplicated `tracestate` key | kept twice | the left-most kept |
/// | a valid key `TraceState` refuses (`t@` + 14 characters, `a@b@c`) | whole tracestate dropped | kept and sent on |
///
/// Whenever `traceparent` is invalid, `tracestate` is not parsed ("If the vendor failed to parse
/// `traceparent`, it MUST NOT attempt to parse `tracestate`"); an invalid `tracestate` never
/// affects `traceparent`.
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

/// What extraction received, kept in the [`Context`] beside the remote span context.
///
/// The SDK copies a parent's `TraceState` into child spans but not its flags (an unsampled
/// child gets none), and `TraceState` cannot hold every valid Level 2 key. Context values are
/// inherited by child spans (tracing-opentelemetry builds a child's context from its parent's),
/// so injection finds this again for any span of the received trace.
#[derive(Debug)]
struct Received {
    trace_id: TraceId,
    random: bool,
    tracestate: TraceStateList,
}

impl TextMapPropagator for W3CTraceContextPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if !sc.is_valid() {
            return;
        }
        let received = cx
            .get::<Received>()
            .filter(|received| received.trace_id == sc.trace_id());
        // "Random Trace ID Flag": continuing a trace, the flag "MUST also be set" (or unset) in
        // outgoing headers with the same trace-id as it was received. Otherwise the context
        // was built by hand (take its flags at their word) or is a span of a trace this
        // process started, whose trace-id the SDK's id generator drew at random ("SHOULD be
        // set to 1").
        let random = match received {
            Some(received) => received.random,
            None => sc.trace_flags() & RANDOM_TRACE_ID == RANDOM_TRACE_ID || !sc.is_remote(),
        };
        let random = if random {
            RANDOM_TRACE_ID
        } else {
            TraceFlags::default()
        };
        let flags = (sc.trace_flags() & TraceFlags::SAMPLED) | random;
        injector.set(
            TRACEPARENT,
            format!("00-{}-{}-{:02x}", sc.trace_id(), sc.span_id(), flags),
        );
        let state = outgoing_tracestate(received.map(|r| &r.tracestate), sc.trace_state());
        if !state.is_empty() {
            injector.set(TRACESTATE, state);
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        let Some(parent) = extract_traceparent(extractor) else {
            return cx.clone();
        };
        let tracestate = match extractor.get_all(TRACESTATE) {
            Some(fields) => {
                let parsed = TraceStateList::parse(&fields.join(","));
                parsed.log_dropped();
                parsed.list.unwrap_or_default()
            }
            None => TraceStateList::default(),
        };
        let sc = SpanContext::new(
            parent.trace_id,
            parent.span_id,
            parent.trace_flags,
            true,
            tracestate.to_trace_state(),
        );
        cx.with_remote_span_context(sc).with_value(Received {
            trace_id: parent.trace_id,
            random: parent.trace_flags & RANDOM_TRACE_ID == RANDOM_TRACE_ID,
            tracestate,
        })
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(trace_context_fields())
    }
}

/// Formats `sc` as a version-00 `traceparent` value with its `sampled` and `random-trace-id`
/// flags (other flags are zeroed).
///
/// This formats `sc` as it is; [`W3CTraceContextPropagator`] additionally restores the random
/// flag the SDK may have reset (see the module docs).
pub fn format_traceparent(sc: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        sc.trace_id(),
        sc.span_id(),
        sc.trace_flags() & TraceFlags::new(KNOWN_FLAGS)
    )
}

fn extract_traceparent(extractor: &dyn Extractor) -> Option<TraceParent> {
    let parents = extractor.get_all(TRACEPARENT)?;
    // Two traceparent fields cannot be combined into one value (it is not a list), so the
    // caller's intent is unknown: restart, as the W3C test suite's "duplicated traceparent" case
    // expects.
    let [traceparent] = parents.as_slice() else {
        return None;
    };
    parse_traceparent(traceparent)
}

/// The three fields a `traceparent` carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace-id (never all zeroes).
    pub trace_id: TraceId,
    /// The parent-id, i.e. the caller's span id (never all zeroes).
    pub span_id: SpanId,
    /// The trace-flags Level 2 defines: `sampled` (`0x01`) and `random-trace-id` (`0x02`,
    /// [`RANDOM_TRACE_ID`]); the other bits are zeroed.
    pub trace_flags: TraceFlags,
}

/// Parses a `traceparent` value by W3C Trace Context Level 2 ("traceparent Header Field
/// Values", "Versioning of traceparent"). `None` means "invalid: restart the trace".
/// Surrounding spaces/tabs are ignored.
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    let b = value.trim_matches([' ', '\t']).as_bytes();
    // version = 2HEXDIGLC followed by "-" (otherwise "the implementation should restart the
    // trace").
    if b.len() < 3 || b[2] != b'-' {
        return None;
    }
    let version = hex_lc(&b[0..2])?;
    // "Version 255 ("ff") is invalid."
    if version == 0xff {
        return None;
    }
    if version == 0 {
        // version-format = trace-id "-" parent-id "-" trace-flags, nothing more.
        if b.len() != 55 {
            return None;
        }
    } else {
        // A higher version shorter than 55 characters is not parsed; the flags must be "either
        // at the end of the string or followed by a dash". What follows is not looked at
        // ("Vendors MUST NOT parse or assume anything about unknown fields").
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
    // All-zero ids are invalid: "vendors MUST ignore the entire header" / "the traceparent".
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some(TraceParent {
        trace_id,
        span_id,
        trace_flags: TraceFlags::new(flags & KNOWN_FLAGS),
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

/// A validated `tracestate` list: the members that follow the Level 2 grammar, in received
/// order, without duplicated keys, at most [`MAX_TRACESTATE_MEMBERS`] of them and at most
/// [`MAX_TRACESTATE_LEN`] characters long.
///
/// Unlike OpenTelemetry's [`TraceState`], it holds every valid Level 2 key;
/// [`TraceStateList::to_trace_state`] gives the members `TraceState` accepts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceStateList {
    members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    key: String,
    value: String,
    /// Whether OpenTelemetry's `TraceState` accepts this member.
    otel: bool,
}

/// Why a list-member was dropped while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DropReason {
    NoEquals,
    Key,
    Value,
    Duplicate,
    TooLong,
}

impl DropReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::NoEquals => "not key=value",
            Self::Key => "key outside the grammar",
            Self::Value => "value outside the grammar",
            Self::Duplicate => "duplicated key, the left-most member kept",
            Self::TooLong => "tracestate over the propagated length",
        }
    }
}

/// A dropped list-member: its position (1-based) among the non-empty members, or among the kept
/// ones for a member cut for length, and, when it has one, the start of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dropped {
    position: usize,
    key: String,
    reason: DropReason,
}

/// How many dropped members the DEBUG line names; it counts the rest.
const DROPPED_NAMED: usize = 8;
/// How much of a dropped member's key the DEBUG line shows.
const DROPPED_KEY_SHOWN: usize = 40;

/// The outcome of parsing a `tracestate` header.
#[derive(Debug, Default)]
struct Parsed {
    /// `None`: the whole header is discarded.
    list: Option<TraceStateList>,
    dropped: Vec<Dropped>,
    dropped_count: usize,
    too_many: bool,
}

impl Parsed {
    fn drop_member(&mut self, position: usize, key: &str, reason: DropReason) {
        self.dropped_count += 1;
        if self.dropped.len() < DROPPED_NAMED {
            let mut shown: String = key.chars().take(DROPPED_KEY_SHOWN).collect();
            if shown.len() < key.len() {
                shown.push('…');
            }
            self.dropped.push(Dropped {
                position,
                key: shown,
                reason,
            });
        }
    }

    /// One DEBUG event for the whole header, when anything was dropped.
    fn log_dropped(&self) {
        if self.too_many {
            tracing::debug!(
                "tracestate discarded: more than {MAX_TRACESTATE_MEMBERS} list-members"
            );
        } else if self.dropped_count > 0 {
            tracing::debug!(
                dropped = %DroppedList(self),
                "tracestate list-members dropped, the others kept"
            );
        }
    }
}

struct DroppedList<'a>(&'a Parsed);

impl fmt::Display for DroppedList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.dropped.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            // `{:?}` escapes whatever the sender put in the key; values are never shown.
            if d.key.is_empty() {
                write!(f, "#{}: {}", d.position, d.reason.as_str())?;
            } else {
                write!(f, "#{} {:?}: {}", d.position, d.key, d.reason.as_str())?;
            }
        }
        let unnamed = self.0.dropped_count - self.0.dropped.len();
        if unnamed > 0 {
            write!(f, "; and {unnamed} more")?;
        }
        Ok(())
    }
}

impl TraceStateList {
    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|m| m.key == key)
            .map(|m| m.value.as_str())
    }

    /// The members, left to right, as `(key, value)`.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> + '_ {
        self.members
            .iter()
            .map(|m| (m.key.as_str(), m.value.as_str()))
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there is no member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members as a `tracestate` header value (`k1=v1,k2=v2`; empty when there is none).
    pub fn header(&self) -> String {
        join_members(self.iter())
    }

    /// OpenTelemetry's [`TraceState`] of the members it accepts, in order.
    ///
    /// `TraceState` refuses some valid Level 2 keys (see the module docs); those are left out
    /// here. [`W3CTraceContextPropagator`] still sends them on, from the list it keeps in the
    /// [`Context`].
    pub fn to_trace_state(&self) -> TraceState {
        // Every member marked `otel` was accepted by `TraceState::from_key_value` on its own and
        // there are at most 32 of them, so the whole list is accepted too.
        TraceState::from_key_value(
            self.members
                .iter()
                .filter(|m| m.otel)
                .map(|m| (m.key.as_str(), m.value.as_str())),
        )
        .unwrap_or_default()
    }

    fn parse(value: &str) -> Parsed {
        let mut parsed = Parsed::default();
        let mut members: Vec<Member> = Vec::new();
        let mut position = 0;
        // "The tracestate field value is a list of list-members separated by commas".
        for member in value.split(',') {
            // "Spaces and horizontal tabs surrounding list-members are ignored."
            let member = member.trim_matches([' ', '\t']);
            // "Empty and whitespace-only list members are allowed."
            if member.is_empty() {
                continue;
            }
            position += 1;
            let Some((key, val)) = member.split_once('=') else {
                parsed.drop_member(position, "", DropReason::NoEquals);
                continue;
            };
            // Processing model: "Invalid tracestate entries MAY also be discarded" - the entry,
            // not the header, so one vendor's bad entry does not erase the others'.
            if !valid_tracestate_key(key) {
                parsed.drop_member(position, key, DropReason::Key);
                continue;
            }
            if !valid_tracestate_value(val) {
                parsed.drop_member(position, key, DropReason::Value);
                continue;
            }
            // "Combined Header Value": a key returning to the list is rewritten "to only include
            // the most recent position", and new or modified entries go to the beginning (left)
            // ("Mutating the tracestate Field"), so the left-most duplicate is the most recent
            // one; "vendors MAY also discard duplicate keys that were not generated by them".
            if members.iter().any(|m| m.key == key) {
                parsed.drop_member(position, key, DropReason::Duplicate);
                continue;
            }
            if members.len() == MAX_TRACESTATE_MEMBERS {
                // list = list-member 0*31( OWS "," OWS list-member ): a longer list does not
                // parse, and which 32 of them the sender meant is unknown. "If the tracestate
                // header cannot be parsed the vendor MAY discard the entire header."
                parsed.too_many = true;
                return parsed;
            }
            members.push(Member {
                key: key.to_owned(),
                value: val.to_owned(),
                otel: true,
            });
        }
        mark_otel_members(&mut members);
        let mut list = TraceStateList { members };
        for (position, key) in list.truncate(MAX_TRACESTATE_LEN) {
            parsed.drop_member(position, &key, DropReason::TooLong);
        }
        parsed.list = Some(list);
        parsed
    }

    /// Cuts the list to `max_len` characters, returning the removed members' positions (1-based,
    /// in the list) and keys.
    fn truncate(&mut self, max_len: usize) -> Vec<(usize, String)> {
        let mut positions: Vec<usize> = (1..=self.members.len()).collect();
        let mut removed = Vec::new();
        while let Some(i) = truncation_victim(
            self.members
                .iter()
                .map(|m| (m.key.as_str(), m.value.as_str())),
            max_len,
        ) {
            let member = self.members.remove(i);
            removed.push((positions.remove(i), member.key));
        }
        removed
    }
}

/// Marks the members OpenTelemetry's `TraceState` refuses (its key check is stricter than
/// Level 2's grammar). Asking `TraceState` itself keeps this in step with the SDK version.
fn mark_otel_members(members: &mut [Member]) {
    let all =
        TraceState::from_key_value(members.iter().map(|m| (m.key.as_str(), m.value.as_str())));
    if all.is_err() {
        for m in members.iter_mut() {
            m.otel = TraceState::from_key_value([(m.key.as_str(), m.value.as_str())]).is_ok();
        }
    }
}

/// The member to remove next to bring `members` within `max_len` characters, or `None` if they
/// fit. "tracestate Limits": "the vendor MUST truncate whole entries. Entries larger than 128
/// characters long SHOULD be removed first. Then entries SHOULD be removed starting from the end
/// of tracestate." Among the long entries, the right-most goes first, too.
fn truncation_victim<'a>(
    members: impl ExactSizeIterator<Item = (&'a str, &'a str)> + Clone,
    max_len: usize,
) -> Option<usize> {
    let count = members.len();
    let entry_len = |(k, v): (&str, &str)| k.len() + 1 + v.len();
    let total: usize = members.clone().map(entry_len).sum::<usize>() + count.saturating_sub(1);
    if total <= max_len {
        return None;
    }
    let long = members
        .enumerate()
        .filter(|(_, m)| entry_len(*m) > LONG_ENTRY_LEN)
        .map(|(i, _)| i)
        .last();
    long.or(count.checked_sub(1))
}

fn join_members<'a>(members: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (key, value) in members {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(key);
        out.push('=');
        out.push_str(value);
    }
    out
}

/// The `tracestate` to send for a span whose `TraceState` is `local`, in a trace whose received
/// list was `received`.
///
/// `local` is the received state as the SDK carried it into this span, plus whatever this
/// process changed through OpenTelemetry's API, whose `insert` puts new and modified entries on
/// the left as "Mutating the tracestate Field" requires. The received members `TraceState` could
/// not hold are put back in their received position; received members that `local` no longer
/// has unchanged were deleted or modified here and are not.
fn outgoing_tracestate(received: Option<&TraceStateList>, local: &TraceState) -> String {
    let mut out: Vec<(&str, &str)> = match received {
        None => local.into_iter().collect(),
        Some(received) => {
            let mut out: Vec<(&str, &str)> = local
                .into_iter()
                .filter(|&(k, v)| received.get(k) != Some(v))
                .collect();
            let changed_here = out.len();
            for m in &received.members {
                let kept = if m.otel {
                    local.get(&m.key) == Some(m.value.as_str())
                } else {
                    !out[..changed_here].iter().any(|(k, _)| *k == m.key)
                };
                if kept {
                    out.push((&m.key, &m.value));
                }
            }
            out
        }
    };
    // "If adding an entry would cause the tracestate list to contain more than 32 list-members
    // the right-most list-member should be removed from the list."
    out.truncate(MAX_TRACESTATE_MEMBERS);
    while let Some(i) = truncation_victim(out.iter().copied(), MAX_TRACESTATE_LEN) {
        out.remove(i);
    }
    join_members(out.into_iter())
}

/// Parses a (combined) `tracestate` value by W3C Trace Context Level 2 ("tracestate Header Field
/// Values").
///
/// A list-member that does not parse (no `=`, a key or value outside the grammar) is dropped and
/// the others are kept; of a duplicated key the left-most member is kept. Empty and
/// whitespace-only members are allowed and skipped. A list longer than
/// [`MAX_TRACESTATE_LEN`] characters loses whole entries (over 128 characters first, then from
/// the right). `None` means "discard the whole header": more than 32 valid list-members. An
/// empty header is a valid, empty list.
pub fn parse_tracestate(value: &str) -> Option<TraceStateList> {
    TraceStateList::parse(value).list
}

/// Level 2 "Key":
///
/// ```abnf
/// key = ( lcalpha / DIGIT ) 0*255 ( keychar )
/// keychar    = lcalpha / DIGIT / "_" / "-"/ "*" / "/" / "@"
/// lcalpha    = %x61-7A ; a-z
/// ```
///
/// Level 1's `tenant-id "@" system-id` form (at most 241 and 14 characters, one `@`) was
/// replaced by this flat grammar (w3c/trace-context#386), so `a@b@c`, `t@` and a 15-character
/// system part are valid keys.
fn valid_tracestate_key(key: &str) -> bool {
    let b = key.as_bytes();
    let keychar = |c: u8| {
        c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@')
    };
    matches!(b.first(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.len() <= 256
        && b.iter().all(|&c| keychar(c))
}

/// Level 2 "Value": `value = 0*255(chr) nblk-chr`, `nblk-chr = %x21-2B / %x2D-3C / %x3E-7E`,
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
    //! Cases quoted from W3C Trace Context Level 2 (Candidate Recommendation Draft, 28 March
    //! 2024), https://www.w3.org/TR/trace-context-2/, by section title; where a section number
    //! is given, it is that of Level 1 (W3C Recommendation, 23 November 2021), whose text on
    //! the point Level 2 keeps.
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
    fn garbage_flags_are_invalid_and_undefined_flags_are_cleared() {
        // trace-flags = 2HEXDIGLC: non-hex is invalid.
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-qw",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
        // "trace-flags": "As this is a bit field, the flags cannot be interpreted by a simple
        // equality comparison"; "Other Flags": "Vendors MUST set those to zero". Sampled (01)
        // and random-trace-id (02) are the flags Level 2 defines.
        let p =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09").unwrap();
        assert_eq!(p.trace_flags, TraceFlags::SAMPLED);
        let p =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fc").unwrap();
        assert_eq!(p.trace_flags, TraceFlags::default());
        let p =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe").unwrap();
        assert_eq!(p.trace_flags, RANDOM_TRACE_ID);
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
        // "There can be a maximum of 32 list-members in a list"; with list = list-member
        // 0*31( OWS "," OWS list-member ) a 33-member list does not parse, and "If the
        // tracestate header cannot be parsed the vendor MAY discard the entire header".
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
            true,
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
        let sc = crate::test_support::span_context(
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "00f067aa0ba902b7",
            TraceFlags::new(0xff),
            true,
        );
        inject_context(&Context::new().with_remote_span_context(sc), &mut map);
        // "Other Flags": "Vendors MUST set those to zero"; sampled and random-trace-id stay.
        assert_eq!(
            map["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"
        );
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

    // ---- Trace Context Level 2 ----

    fn inject_map(cx: &Context) -> HashMap<String, String> {
        let mut map = HashMap::new();
        inject_context(cx, &mut map);
        map
    }

    fn pass_through(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        let map = headers(pairs);
        inject_map(&extract_context(&HeaderExtractor(&map)))
    }

    fn flags_of(traceparent: &str) -> &str {
        &traceparent[53..55]
    }

    #[test]
    fn random_flag_is_kept_when_received_and_sent_on_with_the_trace_id() {
        // "Random Trace ID Flag": "If the flag is set in the incoming traceparent header, it MUST
        // also be set in all outgoing traceparent headers which use the same trace-id", and "If
        // the flag is unset ... it MUST also be unset".
        for (incoming, outgoing) in [("00", "00"), ("01", "01"), ("02", "02"), ("03", "03")] {
            let tp = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{incoming}");
            let p = parse_traceparent(&tp).unwrap();
            assert_eq!(
                p.trace_flags & RANDOM_TRACE_ID == RANDOM_TRACE_ID,
                incoming == "02" || incoming == "03"
            );
            let out = pass_through(&[("traceparent", &tp)]);
            assert_eq!(flags_of(&out["traceparent"]), outgoing, "{tp}");
        }
    }

    #[test]
    fn random_flag_survives_a_child_span_whose_flags_the_sdk_reset() {
        // The SDK gives a span its sampler drops flags 00, whatever the parent had; the flag
        // still "MUST also be set in all outgoing traceparent headers which use the same
        // trace-id".
        let remote = extract_context(&HeaderExtractor(&headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02",
        )])));
        let child = crate::test_support::span_context(
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "b7ad6b7169203331",
            TraceFlags::default(),
            false,
        );
        let out = inject_map(&remote.with_remote_span_context(child));
        assert_eq!(
            out["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-b7ad6b7169203331-02"
        );

        // ... and "If the flag is unset in the incoming traceparent header, it MUST also be
        // unset", even for a local span (which otherwise counts as a trace started here).
        let remote = extract_context(&HeaderExtractor(&headers(&[("traceparent", VALID)])));
        let child = crate::test_support::span_context(
            "4bf92f3577b34da6a3ce929d0e0e4736",
            "b7ad6b7169203331",
            TraceFlags::SAMPLED,
            false,
        );
        let out = inject_map(&remote.with_remote_span_context(child));
        assert_eq!(flags_of(&out["traceparent"]), "01");
    }

    #[test]
    fn a_trace_started_here_is_marked_random() {
        // "When at least the right-most 7 bytes of the trace-id are randomly (or
        // pseudo-randomly) generated, the random-trace-id flag SHOULD be set to 1": a local span
        // with no received parent in its context belongs to a trace the SDK's random id
        // generator started.
        let local = crate::test_support::span_context(
            "0af7651916cd43dd8448eb211c80319c",
            "b7ad6b7169203331",
            TraceFlags::default(),
            false,
        );
        let out = inject_map(&Context::new().with_remote_span_context(local.clone()));
        assert_eq!(flags_of(&out["traceparent"]), "02");
        // A context received earlier for another trace does not count.
        let other = extract_context(&HeaderExtractor(&headers(&[("traceparent", VALID)])));
        let out = inject_map(&other.with_remote_span_context(local));
        assert_eq!(flags_of(&out["traceparent"]), "02");
    }

    #[test]
    fn higher_version_with_extra_fields_keeps_known_flags_and_is_sent_as_00() {
        // "Versioning of traceparent": parse trace-id, parent-id and the flags, "Vendors MUST NOT
        // parse or assume anything about unknown fields for this version" and "MUST use these
        // fields to construct the new traceparent field according to the highest version ...
        // known to the implementation"; "Vendors will set all unparsed / unknown trace-flags to
        // 0 on outgoing requests" (Processing Model).
        let tp =
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff-what-the-future-will-be-like";
        let p = parse_traceparent(tp).unwrap();
        assert_eq!(p.trace_flags, TraceFlags::SAMPLED | RANDOM_TRACE_ID);
        let out = pass_through(&[("traceparent", tp), ("tracestate", "rojo=1")]);
        assert_eq!(
            out["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03"
        );
        assert_eq!(out["tracestate"], "rojo=1");
        // Version 00 with the same extra field is not a valid version 00 value.
        assert_eq!(
            parse_traceparent(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-the-future-will-be-like"
            ),
            None
        );
    }

    #[test]
    fn duplicated_key_keeps_the_left_most_member_and_the_rest() {
        // "Combined Header Value": the entry is rewritten "to only include the most recent
        // position", and new or modified keys go to the left ("Mutating the tracestate Field"):
        // the left-most duplicate is the most recent. "vendors MAY also discard duplicate keys
        // that were not generated by them."
        let s = parse_tracestate("congo=1,rojo=2,congo=3").unwrap();
        assert_eq!(s.header(), "congo=1,rojo=2");
        assert_eq!(parse_tracestate("foo=1,foo=1").unwrap().header(), "foo=1");
        // Split over two fields, combined first.
        let out = pass_through(&[
            ("traceparent", VALID),
            ("tracestate", "foo=1"),
            ("tracestate", "foo=2,bar=3"),
        ]);
        assert_eq!(out["tracestate"], "foo=1,bar=3");
    }

    #[test]
    fn level_2_key_grammar_accepts_at_signs_anywhere_after_the_first_character() {
        // "Key": key = ( lcalpha / DIGIT ) 0*255 ( keychar ), keychar = lcalpha / DIGIT / "_" /
        // "-"/ "*" / "/" / "@". The Level 1 tenant@system limits (tenant-id up to 241, system-id
        // up to 14 characters, one "@", system-id starting with a letter) are not part of it.
        let tenant_241_system_14 = format!("{}@{}", "t".repeat(241), "v".repeat(14));
        let tenant_242 = format!("{}@v", "t".repeat(242));
        let system_14 = format!("t@{}", "v".repeat(14));
        let system_15 = format!("t@{}", "v".repeat(15));
        let z256 = "z".repeat(256);
        for key in [
            "rojo",
            "1rojo",
            "fw529a3039@dt",
            "foo@",
            "foo@@bar",
            "foo@bar@baz",
            "t@1sys",
            "t@_x",
            "a-z0-9_-*/@a-z0-9_-*/",
            &tenant_241_system_14,
            &tenant_242,
            &system_14,
            &system_15,
            &z256,
        ] {
            let s = parse_tracestate(&format!("foo=1,{key}=2")).unwrap();
            assert_eq!(s.get(key), Some("2"), "{key:?}");
            assert_eq!(s.get("foo"), Some("1"), "{key:?}");
        }
    }

    #[test]
    fn keys_outside_the_grammar_drop_only_their_member() {
        // "A key MUST begin with a lowercase letter or a digit and contain up to 256 characters
        // including lowercase letters (a-z), digits (0-9), underscores (_), dashes (-),
        // asterisks (*), forward slashes (/), and at signs (@)." Processing Model: "Invalid
        // tracestate entries MAY also be discarded" - the entry, the others stay.
        let z257 = "z".repeat(257);
        for bad in [
            "@foo", "Rojo", "FOO", "_rojo", "ro jo", "rojo.x", "foo ", "", "é", &z257,
        ] {
            let s = parse_tracestate(&format!("ok=1,{bad}=1,last=2")).unwrap();
            assert_eq!(s.header(), "ok=1,last=2", "{bad:?}");
        }
    }

    #[test]
    fn invalid_member_among_valid_ones_is_dropped_alone() {
        // "Value": up to 256 printable ASCII characters except "," and "=", ending in a
        // non-space; a member is key "=" value. Each bad member goes, every valid one stays.
        let s = parse_tracestate("a=1,rojo,b=2,c=,d=x=y,e=\u{7f},f=é,g=3,@h=4,i=5").unwrap();
        assert_eq!(s.header(), "a=1,b=2,g=3,i=5");
        let parsed = TraceStateList::parse("a=1,rojo,b=2,c=,d=x=y,e=\u{7f},f=é,g=3,@h=4,i=5");
        let reasons: Vec<(usize, &str, DropReason)> = parsed
            .dropped
            .iter()
            .map(|d| (d.position, d.key.as_str(), d.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                (2, "", DropReason::NoEquals),
                (4, "c", DropReason::Value),
                (5, "d", DropReason::Value),
                (6, "e", DropReason::Value),
                (7, "f", DropReason::Value),
                (9, "@h", DropReason::Key),
            ]
        );
        // What the DEBUG line says: positions, keys and reasons, never a value.
        let line = DroppedList(&parsed).to_string();
        assert!(line.starts_with("#2: not key=value; #4 \"c\": value outside the grammar"));
        assert!(!line.contains("x=y"), "{line}");
        // Through the propagator: the traceparent and the valid members are kept.
        let out = pass_through(&[("traceparent", VALID), ("tracestate", "a=1,B=2,c=3")]);
        assert_eq!(out["traceparent"], VALID);
        assert_eq!(out["tracestate"], "a=1,c=3");
    }

    #[test]
    fn ows_and_empty_members() {
        // "Spaces and horizontal tabs surrounding list-members are ignored"; "Empty and
        // whitespace-only list members are allowed"; "All leading spaces MUST be preserved as
        // part of the value. All trailing spaces are considered to be optional whitespace".
        for (input, header) in [
            ("foo=1 \t , \t bar=2, \t baz=3", "foo=1,bar=2,baz=3"),
            ("foo=1\t \t,\t \tbar=2,\t \tbaz=3", "foo=1,bar=2,baz=3"),
            ("\t foo=1 \t", "foo=1"),
            (",,foo=1,, ,\t,", "foo=1"),
            ("foo=  x  ", "foo=  x"),
            (" , \t ,", ""),
        ] {
            assert_eq!(
                parse_tracestate(input).unwrap().header(),
                header,
                "{input:?}"
            );
        }
        // An empty or whitespace-only result is not sent ("SHOULD avoid sending them").
        let out = pass_through(&[("traceparent", VALID), ("tracestate", " , ")]);
        assert!(!out.contains_key("tracestate"));
    }

    #[test]
    fn thirty_two_members_pass_thirty_three_discard_the_header() {
        // "There can be a maximum of 32 list-members in a list."
        let list = |n: usize| {
            (1..=n)
                .map(|i| format!("bar{i:02}={i:02}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let out = pass_through(&[("traceparent", VALID), ("tracestate", &list(32))]);
        assert_eq!(out["tracestate"], list(32));
        let out = pass_through(&[("traceparent", VALID), ("tracestate", &list(33))]);
        assert!(!out.contains_key("tracestate"));
        assert!(TraceStateList::parse(&list(33)).too_many);
        // Dropped members do not count towards the limit.
        let with_bad = format!("{},BAD=1", list(32));
        assert_eq!(parse_tracestate(&with_bad).unwrap().len(), 32);
    }

    #[test]
    fn system_id_of_14_characters_survives_extraction_and_injection() {
        // OpenTelemetry's TraceState refuses this valid key; the member is carried beside it and
        // sent on in its received position, with the others.
        let key = format!("t@{}", "v".repeat(14));
        let state = format!("rojo=1,{key}=2,a@b@c=3,congo=4");
        let map = headers(&[("traceparent", VALID), ("tracestate", &state)]);
        let cx = extract_context(&HeaderExtractor(&map));
        assert_eq!(
            cx.span().span_context().trace_state().header(),
            "rojo=1,congo=4"
        );
        assert_eq!(inject_map(&cx)["tracestate"], state);
        let list = parse_tracestate(&state).unwrap();
        assert_eq!(list.get(&key), Some("2"));
        assert_eq!(list.to_trace_state().header(), "rojo=1,congo=4");
    }

    #[test]
    fn local_changes_go_left_and_unrepresentable_members_keep_their_place() {
        // "Mutating the tracestate Field": "the order of unmodified key/value pairs MUST be
        // preserved. Modified keys MUST be moved to the beginning (left) of the list."
        let map = headers(&[
            ("traceparent", VALID),
            ("tracestate", "rojo=1,a@b@c=2,congo=3,t@vvvvvvvvvvvvvvv=4"),
        ]);
        let cx = extract_context(&HeaderExtractor(&map));
        let remote = cx.span().span_context().clone();
        let child = |state: TraceState| {
            cx.with_remote_span_context(SpanContext::new(
                remote.trace_id(),
                SpanId::from_hex("b7ad6b7169203331").unwrap(),
                TraceFlags::SAMPLED,
                false,
                state,
            ))
        };
        let added = remote.trace_state().insert("ours", "x").unwrap();
        assert_eq!(
            inject_map(&child(added))["tracestate"],
            "ours=x,rojo=1,a@b@c=2,congo=3,t@vvvvvvvvvvvvvvv=4"
        );
        let modified = remote.trace_state().insert("congo", "9").unwrap();
        assert_eq!(
            inject_map(&child(modified))["tracestate"],
            "congo=9,rojo=1,a@b@c=2,t@vvvvvvvvvvvvvvv=4"
        );
        let deleted = remote.trace_state().delete("rojo").unwrap();
        assert_eq!(
            inject_map(&child(deleted))["tracestate"],
            "a@b@c=2,congo=3,t@vvvvvvvvvvvvvvv=4"
        );
    }

    #[test]
    fn at_least_512_characters_propagate_and_truncation_removes_whole_entries() {
        // "tracestate Limits": "Vendors SHOULD propagate at least 512 characters of a combined
        // header"; when truncating, "the vendor MUST truncate whole entries. Entries larger than
        // 128 characters long SHOULD be removed first. Then entries SHOULD be removed starting
        // from the end of tracestate."
        let entry = |key: &str, len: usize| format!("{key}={}", "v".repeat(len - key.len() - 1));
        let short: Vec<String> = (0..30).map(|i| entry(&format!("k{i:02}"), 128)).collect();
        let mut members = short.clone();
        members.insert(3, entry("long1", 150));
        members.insert(10, entry("long2", 262));
        let header = members.join(",");
        // 30 * 128 + 150 + 262 + 31 commas = 4283 characters.
        assert_eq!(header.len(), 4283);
        let kept = parse_tracestate(&header).unwrap();
        // The right-most long entry goes first (4020 characters fit); nothing else goes.
        members.remove(10);
        assert_eq!(kept.header(), members.join(","));
        let mut long_only_right: Vec<String> = short.clone();
        long_only_right.insert(3, entry("long1", 262));
        long_only_right.insert(10, entry("long2", 262));
        // 4417 characters: both long entries go, none of the short ones.
        let kept = parse_tracestate(&long_only_right.join(",")).unwrap();
        assert_eq!(kept.header(), short.join(","));
        // Without long entries, the right-most go: 32 * 128 + 31 = 4127 loses one.
        let many: Vec<String> = (0..32).map(|i| entry(&format!("k{i:02}"), 128)).collect();
        let kept = parse_tracestate(&many.join(",")).unwrap();
        assert_eq!(kept.header(), many[..31].join(","));
        assert!(kept.header().len() <= MAX_TRACESTATE_LEN);
        // 512 characters always pass.
        let s512: Vec<String> = [128, 128, 127, 126]
            .iter()
            .enumerate()
            .map(|(i, len)| entry(&format!("k{i}"), *len))
            .collect();
        let h = s512.join(",");
        assert_eq!(h.len(), 512);
        assert_eq!(parse_tracestate(&h).unwrap().header(), h);
    }

    #[test]
    fn unknown_version_restart_rules_still_apply() {
        // "Versioning of traceparent": "If the size of the header is shorter than 55 characters,
        // the vendor should not parse the header"; the ids "MUST" be hex and dash-separated.
        for bad in [
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01-x",
            "cc-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01-x",
            "cc-00000000000000000000000000000000-00f067aa0ba902b7-01-x",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01-x",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad:?}");
        }
    }
}
