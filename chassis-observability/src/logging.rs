//! Log output: the JSON line format for production, redacting field formatters for the
//! human-readable formats, and writer plumbing.
//!
//! # JSON lines
//!
//! [`JsonFormat`] writes one object per event. Top-level names follow the OpenTelemetry log data
//! model and semantic conventions; the event's own fields follow at the top level, under the
//! names they were recorded with (record `http.request.method = %m` to get the semconv name):
//!
//! ```json
//! {"timestamp":"2026-11-22T02:40:00.123456Z","severity_text":"INFO","severity_number":9,"body":"order placed","target":"orders::api","service.name":"orders","service.version":"1.2.0","deployment.environment":"production","service.instance.id":"orders-7f9c-1","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","trace_flags":"01","span.name":"POST /orders","order.id":42,"password":"[REDACTED]"}
//! ```
//!
//! `trace_id`, `span_id` and `trace_flags` are present when the event happens inside a span that
//! has an OpenTelemetry span context (always the case under the chassis subscriber, exporting or
//! not), so a log line leads straight to its trace. An event that records the current trace id
//! itself (`trace_id = %id`, as the chassis access log does for formatters that do not read the
//! OpenTelemetry context) still gets one `trace_id`: a field repeating the written id is dropped.
//! Fields whose name looks sensitive ([`is_sensitive_field`]) are written as `"[REDACTED]"`.
//!
//! Why a custom `FormatEvent` and not tracing-subscriber's `fmt::format::Json`: that formatter can
//! neither add constant resource fields (`service.name`, ...) nor the OpenTelemetry ids (they live
//! in tracing-opentelemetry's private span extension, not in span fields), it nests fields under
//! `"fields"` and spans under `"spans"` instead of the flat OTel naming, and it has no hook to
//! redact a field by name.
//!
//! # Example
//!
//! ```
//! use chassis_core::ServiceInfo;
//! use chassis_observability::logging::CaptureWriter;
//! use chassis_observability::Telemetry;
//!
//! let capture = CaptureWriter::new();
//! let (dispatch, _guard) = Telemetry::builder(ServiceInfo::new("orders", "1.2.0"))
//!     .ignore_env()
//!     .make_writer(capture.clone())
//!     .build()
//!     .unwrap();
//! tracing::dispatcher::with_default(&dispatch, || {
//!     let span = tracing::info_span!("checkout");
//!     let _entered = span.enter();
//!     tracing::info!(order.id = 42, token = "abc", "order placed");
//! });
//! let line: serde_json::Value = serde_json::from_str(&capture.lines()[0]).unwrap();
//! assert_eq!(line["body"], "order placed");
//! assert_eq!(line["service.name"], "orders");
//! assert_eq!(line["order.id"], 42);
//! assert_eq!(line["token"], "[REDACTED]");
//! assert_eq!(line["trace_id"].as_str().unwrap().len(), 32);
//! ```

use std::fmt::{self, Write as _};
use std::io;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::trace::{SpanId, TraceContextExt, TraceFlags, TraceId};
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

use crate::redact::{REDACTED, is_sensitive_field};

/// Top-level keys the formatter writes itself; an event field with one of these names is written
/// as `field.<name>` so the line stays valid, duplicate-free JSON. A `trace_id` or `span_id` field
/// whose value is the id the formatter writes is dropped instead: it says nothing new.
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

/// The JSON-lines event formatter (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct JsonFormat {
    /// `"service.name":"…","service.version":"…",…` pre-serialised once.
    resource: Arc<str>,
    /// The dispatcher this formatter runs in, to look up the OpenTelemetry context of an event's
    /// explicit parent span (see `format_event`).
    dispatch: Arc<OnceLock<WeakDispatch>>,
}

impl JsonFormat {
    /// A formatter stamping every line with the given service identity.
    pub fn new(service: &chassis_core::ServiceInfo) -> Self {
        let mut resource = String::new();
        for (k, v) in [
            ("service.name", &service.name),
            ("service.version", &service.version),
            ("deployment.environment", &service.environment),
            ("service.instance.id", &service.instance_id),
        ] {
            if !resource.is_empty() {
                resource.push(',');
            }
            push_json_str(&mut resource, k);
            resource.push(':');
            push_json_str(&mut resource, v);
        }
        Self {
            resource: resource.into(),
            dispatch: Arc::new(OnceLock::new()),
        }
    }

    /// Tells the formatter which dispatcher it is part of. Called by the telemetry builder once
    /// the subscriber exists; without it, events with an explicit `parent:` fall back to the
    /// current OpenTelemetry context.
    pub(crate) fn dispatch_slot(&self) -> Arc<OnceLock<WeakDispatch>> {
        Arc::clone(&self.dispatch)
    }
}

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

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();

        // The OpenTelemetry context: for a contextual event it is the context tracing-opentelemetry
        // attached when the current span was entered; for an event with an explicit parent, that
        // parent's context, looked up through the dispatcher (we hold no span extensions here, as
        // `get_otel_context` requires).
        let parent = ctx.parent_span();
        let cx = if event.is_contextual() {
            Some(opentelemetry::Context::current())
        } else {
            parent.as_ref().and_then(|span| {
                let dispatch = self.dispatch.get()?.upgrade()?;
                tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)
            })
        };
        let span = cx.as_ref().map(|cx| cx.span());
        let span_context = span
            .as_ref()
            .map(|span| span.span_context())
            .filter(|sc| sc.is_valid());

        let mut visitor = JsonVisitor {
            written_ids: span_context.map(|sc| (sc.trace_id(), sc.span_id())),
            ..JsonVisitor::default()
        };
        event.record(&mut visitor);

        let mut out = String::with_capacity(320);
        out.push_str("{\"timestamp\":\"");
        SystemTime.format_time(&mut Writer::new(&mut out))?;
        let (text, number) = severity(meta.level());
        write!(
            out,
            "\",\"severity_text\":\"{text}\",\"severity_number\":{number},\"body\":"
        )?;
        push_json_str(&mut out, visitor.message.as_deref().unwrap_or(""));
        out.push_str(",\"target\":");
        push_json_str(
            &mut out,
            visitor.log_target.as_deref().unwrap_or(meta.target()),
        );
        out.push(',');
        out.push_str(&self.resource);

        if let Some(sc) = span_context {
            let flags = if sc.trace_flags() & TraceFlags::SAMPLED == TraceFlags::SAMPLED {
                "01"
            } else {
                "00"
            };
            write!(
                out,
                ",\"trace_id\":\"{}\",\"span_id\":\"{}\",\"trace_flags\":\"{flags}\"",
                sc.trace_id(),
                sc.span_id()
            )?;
        }
        if let Some(span) = &parent {
            out.push_str(",\"span.name\":");
            push_json_str(&mut out, span.name());
        }
        out.push_str(&visitor.fields);
        out.push_str("}\n");
        writer.write_str(&out)
    }
}

/// Collects an event's fields as `,"name":value` JSON, redacting sensitive names.
#[derive(Default)]
struct JsonVisitor {
    message: Option<String>,
    log_target: Option<String>,
    fields: String,
    /// The trace and span id the formatter writes at the top level, if any.
    written_ids: Option<(TraceId, SpanId)>,
}

impl JsonVisitor {
    /// Whether a `trace_id` or `span_id` field repeats the id the formatter already writes under
    /// that name: then it is dropped, so the line has one `trace_id`, not a second copy as
    /// `field.trace_id`. Code that logs the current trace id itself (an access log that also has
    /// to work under formatters that do not read the OpenTelemetry context) records the very id
    /// of the span it runs in. A different value is kept, as `field.<name>`.
    fn repeats_written_id(&self, name: &str, value: &str) -> bool {
        match (name, self.written_ids) {
            ("trace_id", Some((trace_id, _))) => TraceId::from_hex(value) == Ok(trace_id),
            ("span_id", Some((_, span_id))) => SpanId::from_hex(value) == Ok(span_id),
            _ => false,
        }
    }

    /// Writes the key; returns false when the value must be replaced by `[REDACTED]` (already
    /// written) or skipped.
    fn key(&mut self, field: &Field) -> bool {
        let name = field.name();
        if name.starts_with("log.") {
            // tracing-log bridge metadata (log.target, log.module_path, log.file, log.line).
            return false;
        }
        self.fields.push(',');
        if RESERVED.contains(&name) {
            push_json_str(&mut self.fields, &format!("field.{name}"));
        } else {
            push_json_str(&mut self.fields, name);
        }
        self.fields.push(':');
        if is_sensitive_field(name) {
            push_json_str(&mut self.fields, REDACTED);
            return false;
        }
        true
    }
}

impl Visit for JsonVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = Some(value.to_owned()),
            "log.target" => self.log_target = Some(value.to_owned()),
            name if self.repeats_written_id(name, value) => {}
            _ => {
                if self.key(field) {
                    push_json_str(&mut self.fields, value);
                }
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "message" => self.message = Some(format!("{value:?}")),
            // `trace_id = %id`: compared as the text it would be written as.
            name @ ("trace_id" | "span_id") if self.written_ids.is_some() => {
                let text = format!("{value:?}");
                if !self.repeats_written_id(name, &text) && self.key(field) {
                    push_json_str(&mut self.fields, &text);
                }
            }
            _ => {
                if self.key(field) {
                    push_json_str(&mut self.fields, &format!("{value:?}"));
                }
            }
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.key(field) {
            let _ = write!(self.fields, "{value}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.key(field) {
            let _ = write!(self.fields, "{value}");
        }
    }

    fn record_i128(&mut self, field: &Field, value: i128) {
        if self.key(field) {
            let _ = write!(self.fields, "{value}");
        }
    }

    fn record_u128(&mut self, field: &Field, value: u128) {
        if self.key(field) {
            let _ = write!(self.fields, "{value}");
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if self.key(field) {
            if value.is_finite() {
                let _ = write!(self.fields, "{value}");
            } else {
                // NaN / inf are not JSON numbers.
                push_json_str(&mut self.fields, &value.to_string());
            }
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if self.key(field) {
            let _ = write!(self.fields, "{value}");
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        if self.key(field) {
            // The error and its chain, the way operators want to read it.
            let mut text = value.to_string();
            let mut source = value.source();
            while let Some(s) = source {
                let _ = write!(text, ": {s}");
                source = s.source();
            }
            push_json_str(&mut self.fields, &text);
        }
    }
}

/// Appends `s` as a JSON string literal.
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The field formatter of the pretty and compact formats: `name=value`, sensitive names
/// redacted.
pub fn redacting_fields() -> impl for<'w> FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt as _;
    tracing_subscriber::fmt::format::debug_fn(
        |w: &mut Writer<'_>, field: &Field, value: &dyn fmt::Debug| {
            let name = field.name();
            if name == "message" {
                write!(w, "{value:?}")
            } else if is_sensitive_field(name) {
                write!(w, "{name}={REDACTED}")
            } else {
                write!(w, "{name}={value:?}")
            }
        },
    )
    .delimited(" ")
}

/// An in-memory [`MakeWriter`] for tests and examples: everything written is kept and can be read
/// back as lines. Clones share the buffer.
#[derive(Debug, Clone, Default)]
pub struct CaptureWriter {
    buf: Arc<Mutex<Vec<u8>>>,
}

impl CaptureWriter {
    /// An empty capture.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything written so far, as text (lossy UTF-8).
    pub fn contents(&self) -> String {
        let buf = self.buf.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// The complete lines written so far.
    pub fn lines(&self) -> Vec<String> {
        self.contents().lines().map(str::to_owned).collect()
    }
}

impl io::Write for CaptureWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CaptureWriter {
    type Writer = CaptureWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        let mut s = String::new();
        push_json_str(&mut s, "a\"b\\c\nd\u{1}é");
        assert_eq!(s, r#""a\"b\\c\nd\u0001é""#);
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn an_event_repeating_the_span_trace_id_has_one_trace_id() {
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;

        let capture = CaptureWriter::new();
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
    fn severities_follow_the_otel_log_model() {
        assert_eq!(severity(&Level::ERROR), ("ERROR", 17));
        assert_eq!(severity(&Level::TRACE), ("TRACE", 1));
    }
}
