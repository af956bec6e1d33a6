//! [`JsonLayer`]: the JSON-lines output as a `tracing_subscriber` layer (see the
//! [module docs](super) for the line format and why it is hand-written).

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::sync::{Arc, OnceLock};

use opentelemetry::trace::{SpanId, TraceContextExt, TraceFlags, TraceId};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::format::{
    Raw, debug_str, escape_into, push_error, push_f64, push_hex, push_i64, push_str, push_u64,
};
use super::span_fields::{SpanFields, name_bit};
use super::timestamp::TimestampCache;
use super::writer::BatchWriter;
use crate::redact::{REDACTED, is_sensitive_field};

/// Top-level keys the layer writes itself; an event field with one of these names is written
/// as `field.<name>` so the line stays valid, duplicate-free JSON. A `trace_id` or `span_id` field
/// whose value is the id the layer writes is dropped instead: it says nothing new.
const RESERVED: &[&str] = &[
    "timestamp",
    "severity_text",
    "severity_number",
    "body",
    "target",
    "service.name",
    "service.version",
    "deployment.environment",
    "service.instance.id",
    "trace_id",
    "span_id",
    "trace_flags",
    "span.name",
];

/// Per-thread scratch buffers above this size are released after the line that grew them.
const KEEP_SCRATCH: usize = 64 << 10;

/// Where finished lines go.
enum Sink {
    /// The chassis batching writer: the line is copied into its buffer.
    Batch(BatchWriter),
    /// Any `MakeWriter`, called synchronously with the whole line (tests, benchmarks, writers
    /// that are already non-blocking).
    Direct(BoxMakeWriter),
}

/// The JSON-lines layer (see the [module docs](super)).
pub struct JsonLayer {
    /// `,"service.name":"…","service.version":"…",…` pre-serialised once.
    resource: Box<[u8]>,
    sink: Sink,
    /// The dispatcher this layer runs in, to look up the OpenTelemetry context of an event's
    /// explicit parent span (see `otel_ids`).
    dispatch: Arc<OnceLock<WeakDispatch>>,
    /// Whether lines carry their spans' fields (see [`JsonLayer::span_fields`]).
    span_fields: bool,
}

impl fmt::Debug for JsonLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonLayer")
            .field("resource", &String::from_utf8_lossy(&self.resource))
            .field(
                "sink",
                &match self.sink {
                    Sink::Batch(_) => "batch writer",
                    Sink::Direct(_) => "direct",
                },
            )
            .field("span_fields", &self.span_fields)
            .finish_non_exhaustive()
    }
}

impl JsonLayer {
    /// A layer stamping every line with the given service identity and handing it to
    /// `make_writer`, synchronously, one `write_all` per line.
    ///
    /// ```
    /// use chassis_core::ServiceInfo;
    /// use chassis_observability::logging::{CaptureWriter, JsonLayer};
    /// use tracing_subscriber::layer::SubscriberExt as _;
    ///
    /// let capture = CaptureWriter::new();
    /// let subscriber = tracing_subscriber::registry()
    ///     .with(JsonLayer::new(&ServiceInfo::new("orders", "1.2.0"), capture.clone()));
    /// tracing::subscriber::with_default(subscriber, || tracing::info!(order.id = 42, "placed"));
    /// let line: serde_json::Value = serde_json::from_str(&capture.lines()[0]).unwrap();
    /// assert_eq!((line["body"].as_str(), line["order.id"].as_u64()), (Some("placed"), Some(42)));
    /// ```
    pub fn new<M>(service: &chassis_core::ServiceInfo, make_writer: M) -> Self
    where
        M: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    {
        Self::with_sink(service, Sink::Direct(BoxMakeWriter::new(make_writer)))
    }

    /// A layer writing through the chassis [`BatchWriter`] (no per-line system call, no
    /// blocking on the output).
    pub fn batched(service: &chassis_core::ServiceInfo, writer: BatchWriter) -> Self {
        Self::with_sink(service, Sink::Batch(writer))
    }

    fn with_sink(service: &chassis_core::ServiceInfo, sink: Sink) -> Self {
        let mut resource = Vec::new();
        for (k, v) in [
            ("service.name", &service.name),
            ("service.version", &service.version),
            ("deployment.environment", &service.environment),
            ("service.instance.id", &service.instance_id),
        ] {
            resource.push(b',');
            push_str(&mut resource, k);
            resource.push(b':');
            push_str(&mut resource, v);
        }
        Self {
            resource: resource.into_boxed_slice(),
            sink,
            dispatch: Arc::new(OnceLock::new()),
            span_fields: true,
        }
    }

    /// Whether each line carries the fields of the spans it is logged in (the event's span and
    /// its ancestors), at the top level beside the event's own fields. Defaults to `true`.
    ///
    /// A span's fields are formatted once, when the span is created or records a field, and
    /// kept with the span; each line copies them. An event's own field wins over a span field
    /// of the same name, an inner span's over an outer one's. `otel.*` fields are not written.
    /// Off, lines carry only the span's name (`span.name`) and the trace ids, and spans cost the
    /// layer nothing.
    pub fn span_fields(mut self, on: bool) -> Self {
        self.span_fields = on;
        self
    }

    /// Tells the layer which dispatcher it is part of. Called by the telemetry builder once the
    /// subscriber exists; without it, events with an explicit `parent:` carry no trace ids.
    pub(crate) fn dispatch_slot(&self) -> Arc<OnceLock<WeakDispatch>> {
        Arc::clone(&self.dispatch)
    }

    fn emit(&self, line: &[u8], meta: &tracing::Metadata<'_>) {
        match &self.sink {
            Sink::Batch(w) => {
                w.write_line(line);
            }
            Sink::Direct(m) => {
                // Nowhere to report a failed write from inside the subscriber.
                let _ = m.make_writer_for(meta).write_all(line);
            }
        }
    }
}

/// The OpenTelemetry severity of a level, which `severity_keys` spells out.
#[cfg(test)]
fn severity(level: &Level) -> (&'static str, u8) {
    // OpenTelemetry log data model: SeverityNumber ranges TRACE=1, DEBUG=5, INFO=9, WARN=13,
    // ERROR=17.
    match *level {
        Level::TRACE => ("TRACE", 1),
        Level::DEBUG => ("DEBUG", 5),
        Level::INFO => ("INFO", 9),
        Level::WARN => ("WARN", 13),
        Level::ERROR => ("ERROR", 17),
    }
}

/// The keys from the end of the timestamp to the start of the body, one copy per line.
fn severity_keys(level: &Level) -> &'static [u8] {
    match *level {
        Level::TRACE => b"\",\"severity_text\":\"TRACE\",\"severity_number\":1,\"body\":",
        Level::DEBUG => b"\",\"severity_text\":\"DEBUG\",\"severity_number\":5,\"body\":",
        Level::INFO => b"\",\"severity_text\":\"INFO\",\"severity_number\":9,\"body\":",
        Level::WARN => b"\",\"severity_text\":\"WARN\",\"severity_number\":13,\"body\":",
        Level::ERROR => b"\",\"severity_text\":\"ERROR\",\"severity_number\":17,\"body\":",
    }
}

/// The trace id, span id and sampled flag of a valid span context.
type Ids = (TraceId, SpanId, bool);

fn ids_of(cx: &opentelemetry::Context) -> Option<Ids> {
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        (
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags() & TraceFlags::SAMPLED == TraceFlags::SAMPLED,
        )
    })
}

/// A thread's reusable buffers: after warm-up a line is formatted without a heap allocation.
#[derive(Default)]
struct Scratch {
    /// The line, up to and including the body while fields are visited.
    line: Vec<u8>,
    /// The event's fields as `,"name":value`, appended to the line after the fixed keys.
    fields: Vec<u8>,
    /// A `log.target` field (events from the `log` bridge), as a JSON string.
    log_target: Vec<u8>,
    /// The names of the fields the event wrote, for the span fields they override.
    written_names: Vec<&'static str>,
    time: TimestampCache,
    names: NameCache,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Runs `f` with the thread's name cache, or a fresh one when it is in use or gone.
fn with_names<R>(f: impl FnOnce(&mut NameCache) -> R) -> R {
    let mut f = Some(f);
    let done = SCRATCH
        .try_with(|cell| {
            cell.try_borrow_mut()
                .ok()
                .map(|mut scratch| (f.take().expect("called once"))(&mut scratch.names))
        })
        .ok()
        .flatten();
    match done {
        Some(r) => r,
        None => (f.take().expect("not called"))(&mut NameCache::default()),
    }
}

impl<S> tracing_subscriber::Layer<S> for JsonLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !self.span_fields {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let present = attrs.values().len();
        let own = with_names(|names| SpanFields::of(names, present, |v| attrs.record(v)));
        let fields = match span.parent() {
            Some(parent) => match parent.extensions().get::<SpanFields>() {
                Some(inherited) => own.inherit(inherited),
                None => own,
            },
            None => own,
        };
        if !fields.is_empty() {
            span.extensions_mut().insert(fields);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if !self.span_fields {
            return;
        }
        let Some(span) = ctx.span(id) else { return };
        let recorded =
            with_names(|names| SpanFields::of(names, values.len(), |v| values.record(v)));
        if recorded.is_empty() {
            return;
        }
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<SpanFields>() {
            Some(fields) => fields.update(recorded),
            None => extensions.insert(recorded),
        }
    }

    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        // Composed by hand (not in a `Vec` of layers, which does not pass this on), the layer
        // learns its dispatcher here; the telemetry builder sets it explicitly.
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let format = |scratch: &mut Scratch| {
            self.format(event, &ctx, scratch);
            self.emit(&scratch.line, event.metadata());
            scratch.written_names.clear();
            for buf in [
                &mut scratch.line,
                &mut scratch.fields,
                &mut scratch.log_target,
            ] {
                buf.clear();
                if buf.capacity() > KEEP_SCRATCH {
                    buf.shrink_to(KEEP_SCRATCH / 16);
                }
            }
        };
        // The thread's buffers, unless they are in use (an event logged while formatting one,
        // from a `Debug` impl) or gone (an event from a thread-local destructor): then fresh
        // ones.
        let done = SCRATCH
            .try_with(|cell| match cell.try_borrow_mut() {
                Ok(mut scratch) => {
                    format(&mut scratch);
                    true
                }
                Err(_) => false,
            })
            .unwrap_or(false);
        if !done {
            format(&mut Scratch::default());
        }
    }
}

impl JsonLayer {
    fn format<S>(&self, event: &Event<'_>, ctx: &Context<'_, S>, scratch: &mut Scratch)
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        let meta = event.metadata();
        // The event's span: the current one, or its explicit parent. Without span fields only
        // its name is written, which for a contextual event comes from the registry's current
        // span without looking up the span's data.
        let (span_name, span) = if event.is_contextual() {
            if self.span_fields {
                let span = ctx.lookup_current();
                (span.as_ref().map(|s| s.name()), span)
            } else {
                (ctx.current_span().metadata().map(|m| m.name()), None)
            }
        } else {
            let parent = event.parent().and_then(|id| ctx.span(id));
            (parent.as_ref().map(|s| s.name()), parent)
        };
        let explicit_parent = span.as_ref().filter(|_| !event.is_contextual());
        // The OpenTelemetry context: for a contextual event it is the context
        // tracing-opentelemetry attached when the current span was entered (read in place, not
        // cloned); for an event with an explicit parent, that parent's context, looked up
        // through the dispatcher (we hold no span extensions here, as `get_otel_context`
        // requires).
        let ids = if event.is_contextual() {
            opentelemetry::Context::map_current(ids_of)
        } else {
            explicit_parent.and_then(|span| {
                let dispatch = self.dispatch.get()?.upgrade()?;
                ids_of(&tracing_opentelemetry::get_otel_context(
                    &span.id(),
                    &dispatch,
                )?)
            })
        };

        let Scratch {
            line,
            fields,
            log_target,
            written_names,
            time,
            names,
        } = scratch;
        line.extend_from_slice(b"{\"timestamp\":\"");
        time.push_now(line);
        line.extend_from_slice(severity_keys(meta.level()));
        let body_start = line.len();

        let mut visitor = JsonVisitor {
            body: line,
            fields,
            log_target,
            names: FieldNames {
                cache: names,
                written: written_names,
                bits: 0,
            },
            written_ids: ids.map(|(t, s, _)| (t, s)),
        };
        event.record(&mut visitor);
        let written_bits = visitor.names.bits;
        if line.len() == body_start {
            line.extend_from_slice(b"\"\"");
        }

        line.extend_from_slice(b",\"target\":");
        if log_target.is_empty() {
            push_str(line, meta.target());
        } else {
            line.extend_from_slice(log_target);
        }
        line.extend_from_slice(&self.resource);
        if let Some((trace_id, span_id, sampled)) = ids {
            line.extend_from_slice(b",\"trace_id\":\"");
            push_hex(line, trace_id.to_bytes());
            line.extend_from_slice(b"\",\"span_id\":\"");
            push_hex(line, span_id.to_bytes());
            line.extend_from_slice(if sampled {
                b"\",\"trace_flags\":\"01\""
            } else {
                b"\",\"trace_flags\":\"00\""
            });
        }
        if let Some(name) = span_name {
            line.extend_from_slice(b",\"span.name\":");
            push_str(line, name);
        }
        if self.span_fields
            && let Some(span) = &span
            && let Some(span_fields) = span.extensions().get::<SpanFields>()
        {
            span_fields.write_to(line, written_names, written_bits);
        }
        line.extend_from_slice(fields);
        line.extend_from_slice(b"}\n");
    }
}

/// What the layer does with a field, by name; decided once per name and thread (see
/// [`NameCache`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NameKind {
    /// `message`: the body.
    Message,
    /// `log.target` of the tracing-log bridge: the target.
    LogTarget,
    /// Other `log.*` metadata of the tracing-log bridge: not written.
    Skipped,
    /// `trace_id`: dropped when it repeats the line's own, else written as `field.trace_id`.
    TraceId,
    /// `span_id`: as `trace_id`.
    SpanId,
    /// Written with its key (`field.<name>` for a reserved name).
    Plain,
    /// Written as `"[REDACTED]"` ([`is_sensitive_field`]).
    Sensitive,
}

impl NameKind {
    pub(crate) fn of(name: &str) -> Self {
        match name {
            "message" => Self::Message,
            "log.target" => Self::LogTarget,
            "trace_id" => Self::TraceId,
            "span_id" => Self::SpanId,
            _ if name.starts_with("log.") => Self::Skipped,
            _ if is_sensitive_field(name) => Self::Sensitive,
            _ => Self::Plain,
        }
    }

    /// The bytes written before the value: `,"name":`, `,"field.name":` for a reserved name, and
    /// the whole `,"name":"[REDACTED]"` for a sensitive one.
    fn key(self, name: &str) -> Box<[u8]> {
        let mut key = Vec::new();
        self.write_key(name, &mut key);
        key.into_boxed_slice()
    }

    /// Appends what [`key`](Self::key) returns.
    fn write_key(self, name: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b",\"");
        if RESERVED.contains(&name) {
            out.extend_from_slice(b"field.");
        }
        escape_into(out, name);
        out.extend_from_slice(b"\":");
        if self == Self::Sensitive {
            push_str(out, REDACTED);
        }
    }
}

/// A cached classification: the name's address and length, its kind and its key bytes.
struct Slot {
    addr: usize,
    len: usize,
    kind: NameKind,
    key: Box<[u8]>,
    /// [`name_bit`] of the name.
    bit: u64,
}

/// A small two-way set-associative cache of [`NameKind`]s and key bytes by field name. Field
/// names are `&'static str`s of callsite metadata, so a name is identified by its address and
/// length; a line's fields (and a span's) are classified with a lookup each instead of the
/// redaction pattern scan (a dozen substring searches per field), and each key is one copy of
/// bytes escaped once. Two ways per set, so that two names of one event that hash alike do not
/// evict each other on every line (a direct-mapped cache did, for some binaries' layouts); a
/// third evicts the least recently used, which is computed again when next seen.
pub(crate) struct NameCache {
    slots: [Slot; 64],
}

impl Default for NameCache {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| Slot {
                addr: 0,
                len: 0,
                kind: NameKind::Plain,
                key: Box::default(),
                bit: 0,
            }),
        }
    }
}

impl NameCache {
    #[cfg(test)]
    fn get(&mut self, name: &'static str) -> (NameKind, &[u8]) {
        let (kind, key, _) = self.get_with_bit(name);
        (kind, key)
    }

    /// [`get`](Self::get) and the name's [`name_bit`].
    pub(crate) fn get_with_bit(&mut self, name: &'static str) -> (NameKind, &[u8], u64) {
        let addr = name.as_ptr() as usize;
        // Fibonacci hashing: nearby addresses (names of one callsite) land in different sets.
        let set = (addr.wrapping_mul(0x9e37_79b9_7f4a_7c15_u64 as usize) >> (usize::BITS - 5)) * 2;
        let ways = &mut self.slots[set..set + 2];
        let holds =
            |slot: &Slot| slot.addr == addr && slot.len == name.len() && !slot.key.is_empty();
        if !holds(&ways[0]) {
            // The most recently used way first: a hit in the second moves it there, a miss
            // moves the first one down and takes its place.
            ways.swap(0, 1);
            if !holds(&ways[0]) {
                let kind = NameKind::of(name);
                ways[0] = Slot {
                    addr,
                    len: name.len(),
                    kind,
                    key: kind.key(name),
                    bit: name_bit(name),
                };
            }
        }
        let slot = &ways[0];
        (slot.kind, &slot.key, slot.bit)
    }
}

/// Whether a `trace_id` or `span_id` value repeats the id the layer already writes under that
/// name: then it is dropped, so the line has one `trace_id`, not a second copy as
/// `field.trace_id`. Code that logs the current trace id itself (an access log that also has to
/// work under formatters that do not read the OpenTelemetry context) records the very id of the
/// span it runs in. A different value is kept, as `field.<name>`.
fn repeats_written_id(kind: NameKind, value: &str, written: Option<(TraceId, SpanId)>) -> bool {
    match (kind, written) {
        (NameKind::TraceId, Some((trace_id, _))) => TraceId::from_hex(value) == Ok(trace_id),
        (NameKind::SpanId, Some((_, span_id))) => SpanId::from_hex(value) == Ok(span_id),
        _ => false,
    }
}

/// Writes an event's fields: the message straight into the line (it is the body), the rest as
/// `,"name":value` into `fields`, sensitive names redacted.
struct JsonVisitor<'a> {
    body: &'a mut Vec<u8>,
    fields: &'a mut Vec<u8>,
    log_target: &'a mut Vec<u8>,
    names: FieldNames<'a>,
    /// The trace and span id the layer writes at the top level, if any.
    written_ids: Option<(TraceId, SpanId)>,
}

/// An event's field names: their keys, and the names written so far.
struct FieldNames<'a> {
    cache: &'a mut NameCache,
    /// The names of the fields written with a key, and the union of their [`name_bit`]s.
    written: &'a mut Vec<&'static str>,
    bits: u64,
}

impl FieldNames<'_> {
    /// Looks `field`'s name up and, when the field is written with a key of its own, notes it
    /// in `written` and `bits`: a span field of that name is then left out of the line.
    fn classify(&mut self, field: &Field) -> (NameKind, &[u8]) {
        let name = field.name();
        let (kind, key, bit) = self.cache.get_with_bit(name);
        if matches!(
            kind,
            NameKind::Plain | NameKind::Sensitive | NameKind::TraceId | NameKind::SpanId
        ) {
            self.written.push(name);
            self.bits |= bit;
        }
        (kind, key)
    }
}

impl JsonVisitor<'_> {
    /// Writes the key of a field whose value is not text; returns whether the value follows.
    fn key(&mut self, field: &Field) -> bool {
        let (kind, key) = self.names.classify(field);
        match kind {
            NameKind::LogTarget | NameKind::Skipped => false,
            NameKind::Sensitive => {
                self.fields.extend_from_slice(key);
                false
            }
            _ => {
                self.fields.extend_from_slice(key);
                true
            }
        }
    }
}

impl Visit for JsonVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let (kind, key) = self.names.classify(field);
        match kind {
            NameKind::Message => push_str(self.body, value),
            NameKind::LogTarget => push_str(self.log_target, value),
            NameKind::Skipped => {}
            NameKind::Sensitive => self.fields.extend_from_slice(key),
            _ if repeats_written_id(kind, value, self.written_ids) => {}
            _ => {
                self.fields.extend_from_slice(key);
                push_str(self.fields, value);
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let (kind, key) = self.names.classify(field);
        match kind {
            NameKind::Message => debug_str(self.body, value),
            NameKind::LogTarget => debug_str(self.log_target, value),
            NameKind::Skipped => {}
            NameKind::Sensitive => self.fields.extend_from_slice(key),
            // `trace_id = %id`: written, then compared as the text it was written as; a repeat
            // of the line's own id is taken back out.
            NameKind::TraceId | NameKind::SpanId if self.written_ids.is_some() => {
                let start = self.fields.len();
                self.fields.extend_from_slice(key);
                let value_start = self.fields.len();
                debug_str(self.fields, value);
                let written = &self.fields[value_start + 1..self.fields.len() - 1];
                let repeats = std::str::from_utf8(written)
                    .is_ok_and(|text| repeats_written_id(kind, text, self.written_ids));
                if repeats {
                    self.fields.truncate(start);
                }
            }
            _ => {
                self.fields.extend_from_slice(key);
                debug_str(self.fields, value);
            }
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            push_i64(self.fields, value);
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            push_u64(self.fields, value);
        }
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        if self.key(field) {
            let _ = write!(Raw(self.fields), "{value}");
        }
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        if self.key(field) {
            let _ = write!(Raw(self.fields), "{value}");
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            push_f64(self.fields, value);
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            self.fields
                .extend_from_slice(if value { b"true" } else { b"false" });
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.key(field) {
            push_error(self.fields, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_follow_the_otel_log_model() {
        assert_eq!(severity(&Level::ERROR), ("ERROR", 17));
        assert_eq!(severity(&Level::WARN), ("WARN", 13));
        assert_eq!(severity(&Level::TRACE), ("TRACE", 1));
        for level in [
            Level::TRACE,
            Level::DEBUG,
            Level::INFO,
            Level::WARN,
            Level::ERROR,
        ] {
            let (text, number) = severity(&level);
            let keys = format!(r#"","severity_text":"{text}","severity_number":{number},"body":"#);
            assert_eq!(severity_keys(&level), keys.as_bytes());
        }
    }

    #[test]
    fn an_event_repeating_the_span_trace_id_has_one_trace_id() {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;

        let capture = crate::logging::CaptureWriter::new();
        let (dispatch, _guard) =
            crate::Telemetry::builder(chassis_core::ServiceInfo::new("orders", "1.0.0"))
                .ignore_env()
                .make_writer(capture.clone())
                .build()
                .unwrap();
        let trace_id = tracing::dispatcher::with_default(&dispatch, || {
            let span = tracing::info_span!("request");
            let _entered = span.enter();
            let cx = span.context();
            let sc = cx.span().span_context().clone();
            let (trace_id, span_id) = (sc.trace_id().to_string(), sc.span_id().to_string());
            // As an access log records it: the current trace id, as a string and as Display.
            tracing::info!(trace_id = trace_id.as_str(), "as str");
            tracing::info!(trace_id = %sc.trace_id(), span_id = %span_id, "as display");
            // Another trace's id is information of its own: kept, renamed.
            tracing::info!(trace_id = "0af7651916cd43dd8448eb211c80319c", "other trace");
            trace_id
        });
        let lines = capture.lines();
        assert_eq!(lines.len(), 3, "{lines:#?}");
        for line in &lines[..2] {
            assert_eq!(line.matches("trace_id").count(), 1, "{line}");
            assert_eq!(line.matches("span_id").count(), 1, "{line}");
            let json: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(json["trace_id"], trace_id.as_str());
        }
        let other: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
        assert_eq!(other["trace_id"], trace_id.as_str());
        assert_eq!(other["field.trace_id"], "0af7651916cd43dd8448eb211c80319c");
    }

    #[test]
    fn names_are_classified_once_and_correctly() {
        let mut cache = NameCache::default();
        let key = |cache: &mut NameCache, name| {
            let (kind, key) = cache.get(name);
            (kind, String::from_utf8(key.to_vec()).unwrap())
        };
        for _ in 0..2 {
            assert_eq!(
                key(&mut cache, "order.id"),
                (NameKind::Plain, r#","order.id":"#.to_owned())
            );
            assert_eq!(
                key(&mut cache, "body"),
                (NameKind::Plain, r#","field.body":"#.to_owned())
            );
            assert_eq!(
                key(&mut cache, "api-key"),
                (NameKind::Sensitive, r#","api-key":"[REDACTED]""#.to_owned())
            );
            assert_eq!(
                key(&mut cache, "trace_id"),
                (NameKind::TraceId, r#","field.trace_id":"#.to_owned())
            );
            assert_eq!(cache.get("message").0, NameKind::Message);
            assert_eq!(cache.get("log.target").0, NameKind::LogTarget);
            assert_eq!(cache.get("log.file").0, NameKind::Skipped);
            assert_eq!(
                cache.get("http.request.header.authorization").0,
                NameKind::Sensitive
            );
        }
        // Many names through 64 slots: collisions evict, never mix up.
        let names: Vec<&'static str> = (0..500)
            .map(|i| {
                let suffix = if i % 2 == 0 { "" } else { "x" };
                &*Box::leak(format!("f{i}_token{suffix}").into_boxed_str())
            })
            .chain((0..500).map(|i| &*Box::leak(format!("plain{i}").into_boxed_str())))
            .collect();
        for _ in 0..2 {
            for &name in &names {
                let (kind, key) = cache.get(name);
                assert_eq!(kind, NameKind::of(name), "{name}");
                assert_eq!(key, &*NameKind::of(name).key(name), "{name}");
            }
        }
    }
}
