//! # chassis-observability
//!
//! Everything a chassis service needs to be seen in production, initialised with one call:
//! structured logs correlated with traces, OpenTelemetry tracing exported over OTLP, W3C context
//! propagation, and Prometheus metrics.
//!
//! ## Layout
//! - [`telemetry`]: [`Telemetry::builder`] gives a [`TelemetryBuilder`] whose `init()` installs
//!   everything globally and returns the running [`Telemetry`]; `build()` returns a subscriber
//!   for tests.
//! - [`config`]: [`TelemetryConfig`] (serde) and the `LOG_FORMAT` / `RUST_LOG` / `OTEL_*`
//!   environment variables, including the OTLP headers and TLS files.
//! - [`logging`]: the JSON line layer (service identity + `trace_id`/`span_id` on every line,
//!   no allocation per line), the non-blocking batching [`BatchWriter`](logging::BatchWriter),
//!   redacting field formatters, an in-memory [`CaptureWriter`](logging::CaptureWriter).
//! - [`redact`]: [`Secret`] and field-name redaction.
//! - [`trace`]: the tracer provider, sampler, resource and the bounded, counting OTLP pipeline.
//! - [`propagation`]: W3C Trace Context + Baggage inject/extract for `http::HeaderMap` and any
//!   OpenTelemetry `Injector`/`Extractor` (no global init needed).
//! - `sentry` (feature `sentry`): ERROR events to Sentry with the release, environment, service
//!   tags and trace id; `sentry-trace` propagation.
//! - [`metrics`]: the Prometheus recorder and [`metrics::names`], the catalogue of every metric
//!   the chassis emits.
//! - `otlp_metrics` (feature `otlp-http` or `grpc`): the same metrics pushed over OTLP, as
//!   HTTP/protobuf or gRPC (`OTEL_METRICS_EXPORTER=otlp`), converted from the Prometheus
//!   recorder's snapshot.
//! - [`log_level`]: reading and changing the log filter at run time (an admin endpoint).
//! - [`error`]: [`Error`] / [`ErrorKind`].
//!
//! ## Quick start
//!
//! ```no_run
//! use std::time::Duration;
//! use chassis_core::ServiceInfo;
//! use chassis_observability::{metrics::names, Telemetry};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // LOG_FORMAT=json RUST_LOG=info OTEL_EXPORTER_OTLP_ENDPOINT=http://otel-collector:4318
//! let telemetry = Telemetry::builder(ServiceInfo::from_env("orders", env!("CARGO_PKG_VERSION")))
//!     .histogram_buckets_for(names::OUTBOX_PUBLISH_LATENCY, [0.01, 0.1, 1.0, 10.0])
//!     .init()?;
//!
//! let span = tracing::info_span!("place_order", order.id = 42);
//! let _entered = span.enter();
//! tracing::info!(customer.id = 7, "order placed"); // JSON line with trace_id/span_id
//! metrics::counter!(names::MESSAGING_CLIENT_SENT_MESSAGES).increment(1);
//! let exposition = telemetry.prometheus_handle().unwrap().render(); // for GET /metrics
//! # drop(_entered); let _ = exposition;
//! telemetry.shutdown(Duration::from_secs(5)).await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Metric catalogue
//!
//! Every metric the chassis crates emit (chassis-core's resilience layers, this crate,
//! chassis-http, chassis-messaging) is a constant in [`metrics::names`], whose docs list each
//! one's Prometheus name, type, unit, labels and closed label values, and say how the
//! Prometheus name is derived from the OpenTelemetry name (`http.server.request.duration`, unit
//! `s` -> `http_server_request_duration_seconds`; counters end in `_total`). `init()` registers
//! every description, so `/metrics` has `# HELP` and `# TYPE` for each.
//!
//! ## Features
//! | feature | default | what it adds |
//! |---|---|---|
//! | `otlp-http` | yes | OTLP export of spans and the metrics push over HTTP/protobuf (port 4318) with hyper, to `http://` and `https://` collectors (rustls, ring provider) |
//! | `grpc` | no | OTLP export of spans and the metrics push over gRPC (tonic, port 4317), to `http://` and `https://` collectors (tonic's rustls, ring provider) |
//! | `sentry` | no | ERROR events to Sentry when `SENTRY_DSN` is set (release `name@version`, environment, service tags, trace id), breadcrumbs, `sentry-trace` propagation; sent over hyper + rustls (ring), no reqwest |
//!
//! TLS comes with each transport: an `https://` endpoint just works, verified against the
//! platform's trust store and Mozilla's roots, or only against the CA bundle of
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` ([`config::OtlpTlsConfig::ca_file`]); a client certificate
//! for mTLS comes from `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` / `OTEL_EXPORTER_OTLP_CLIENT_KEY`,
//! and `OTEL_EXPORTER_OTLP_HEADERS` (say, the collector's API key) is sent with every export
//! (all also in [`config::TracingConfig`]; the [`config`] module lists every variable). A file
//! that cannot be used, or malformed headers, fail `init` with [`ErrorKind::Tls`] /
//! [`ErrorKind::InvalidConfig`] naming the file or variable. Only the ring provider is used, so
//! no aws-lc-rs is compiled in for it, and reqwest is not involved: the feature leaves any reqwest
//! client of the service as it was.
//!
//! With neither (`default-features = false`) no OTLP exporter is compiled in (no reqwest, no
//! tonic, no protobuf code): logs, trace ids, propagation and metrics work as before and spans
//! are not exported. A configured endpoint is then refused by `init` with
//! [`ErrorKind::TransportNotEnabled`] naming the feature, rather than silently ignored; so is
//! `OTEL_EXPORTER_OTLP_PROTOCOL=grpc` without `grpc`.

#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
pub mod error;
pub mod log_level;
pub mod logging;
pub mod metrics;
#[cfg(any(feature = "otlp-http", feature = "grpc"))]
#[cfg_attr(docsrs, doc(cfg(any(feature = "otlp-http", feature = "grpc"))))]
pub mod otlp_metrics;
pub mod propagation;
pub mod redact;
#[cfg(feature = "sentry")]
#[cfg_attr(docsrs, doc(cfg(feature = "sentry")))]
pub mod sentry;
pub mod telemetry;
#[cfg(test)]
mod test_support;
#[cfg(any(feature = "otlp-http", feature = "grpc"))]
mod tls;
pub mod trace;

pub use config::{LogFormat, TelemetryConfig};
pub use error::{Error, ErrorKind};
pub use redact::{Redacted, Secret};
pub use telemetry::{Telemetry, TelemetryBuilder};

// The README's example is compiled and run as a doctest, so the crate's front page stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
