//! Log output: the JSON line format for production, redacting field formatters for the
//! human-readable formats, and the non-blocking, batching writer.
//!
//! # JSON lines
//!
//! [`JsonLayer`] writes one object per event. Top-level names follow the OpenTelemetry log data
//! model and semantic conventions; the fields of the spans the event is logged in and then the
//! event's own fields follow at the top level, under the names they were recorded with (record
//! `http.request.method = %m` to get the semconv name):
//!
//! ```json
//! {"timestamp":"2026-11-22T02:40:00.123456Z","severity_text":"INFO","severity_number":9,"body":"order placed","target":"orders::api","service.name":"orders","service.version":"1.2.0","deployment.environment":"production","service.instance.id":"orders-7f9c-1","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","trace_flags":"01","span.name":"HTTP request","http.request.method":"POST","http.route":"/orders","request_id":"3f1c","order.id":42,"password":"[REDACTED]"}
//! ```
//!
//! `trace_id`, `span_id` and `trace_flags` are present when the event happens inside a span that
//! has an OpenTelemetry span context (always the case under the chassis subscriber, exporting or
//! not), so a log line leads straight to its trace. An event that records the current trace id
//! itself (`trace_id = %id`, as the chassis access log does for formatters that do not read the
//! OpenTelemetry context) still gets one `trace_id`: a field repeating the written id is dropped.
//! A field of a span reaches every line logged inside that span or its descendants: an event's
//! own field wins over a span field of the same name, an inner span's over an outer one's, and
//! `otel.*` fields (directives for the OpenTelemetry layer) are left out
//! ([`JsonLayer::span_fields`] turns span fields off).
//! Fields whose name looks sensitive ([`is_sensitive_field`](crate::redact::is_sensitive_field))
//! are written as `"[REDACTED]"`; a field named like one of the keys above is written as
//! `field.<name>`.
//!
//! # Cost
//!
//! A log line is on the path of every request (the access log), so [`JsonLayer`] is a `Layer`
//! doing only `on_event`, and does it without a heap allocation once its thread is warm:
//!
//! - the line is written into a per-thread buffer that is reused; the message goes straight
//!   into it and the other fields into a second reused buffer, escaped as they are written;
//!   `Debug` and `Display` values are formatted through a `fmt::Write` adapter that escapes into
//!   the buffer, with no intermediate `String`;
//! - the timestamp's `YYYY-MM-DDTHH:MM:SS.` part is cached per second and thread;
//! - trace and span ids are written as hex from their bytes, read from the current
//!   OpenTelemetry context in place (no `Context` clone);
//! - whether a field name is sensitive or reserved is decided once per name and thread, not by
//!   a pattern scan per field of every line;
//! - span fields are formatted once per span, when it is created or records a field, and kept
//!   in the span's extensions with those of its ancestors; a line copies them in one piece
//!   (field by field only when the event repeats one of their names, which a 64-bit filter of
//!   the event's field names tells without comparing names).
//!
//! The finished line is handed to the [`BatchWriter`] (the default: one memory copy, no system
//! call, no wake-up per line) or, for tests and benchmarks, to any `MakeWriter` with one
//! `write_all`.
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
//!     let span = tracing::info_span!("checkout", cart.id = 7);
//!     let _entered = span.enter();
//!     tracing::info!(order.id = 42, token = "abc", "order placed");
//! });
//! let line: serde_json::Value = serde_json::from_str(&capture.lines()[0]).unwrap();
//! assert_eq!(line["body"], "order placed");
//! assert_eq!(line["service.name"], "orders");
//! assert_eq!(line["order.id"], 42);
//! assert_eq!(line["token"], "[REDACTED]");
//! assert_eq!(line["cart.id"], 7);
//! assert_eq!(line["trace_id"].as_str().unwrap().len(), 32);
//! ```

mod capture;
mod format;
mod layer;
mod span_fields;
mod text;
mod timestamp;
pub mod writer;

pub use capture::CaptureWriter;
pub use layer::JsonLayer;
pub use text::redacting_fields;
pub use writer::{BatchLineWriter, BatchWriter, BatchWriterBuilder, BatchWriterGuard};
