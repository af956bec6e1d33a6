//! Prometheus metrics through the [`metrics`](https://docs.rs/metrics) facade, and the catalogue
//! of every metric the chassis emits ([`names`]).
//!
//! Code records with the facade (`metrics::histogram!(names::HTTP_SERVER_REQUEST_DURATION, ...)`);
//! [`Telemetry::init`](crate::Telemetry) installs a [`PrometheusRecorder`] as the global recorder
//! and the guard's [`prometheus_handle`](crate::TelemetryGuard::prometheus_handle) renders the
//! text exposition that chassis-http serves at `/metrics`. No HTTP listener of the exporter is
//! used (metrics-exporter-prometheus is built without default features).
//!
//! Histograms are true Prometheus histograms with the configured buckets
//! ([`MetricsConfig::buckets`], per metric [`MetricsConfig::buckets_for_metric`]); the default is
//! the OpenTelemetry duration buckets in seconds.
//!
//! # Example
//!
//! ```
//! use chassis_observability::config::MetricsConfig;
//! use chassis_observability::metrics::{build_recorder, names};
//!
//! let mut config = MetricsConfig::default();
//! config.buckets_for_metric.insert(names::OUTBOX_PUBLISH_LATENCY.into(), vec![0.1, 1.0, 10.0]);
//! let recorder = build_recorder(&config).unwrap();
//! let handle = recorder.handle();
//! metrics::with_local_recorder(&recorder, || {
//!     metrics::histogram!(names::HTTP_SERVER_REQUEST_DURATION,
//!         names::labels::HTTP_REQUEST_METHOD => "GET",
//!         names::labels::HTTP_ROUTE => "/orders/{id}",
//!         names::labels::HTTP_RESPONSE_STATUS_CODE => "200")
//!     .record(0.042);
//!     metrics::gauge!(names::OUTBOX_PENDING).set(3.0);
//! });
//! let text = handle.render();
//! assert!(text.contains(r#"http_server_request_duration_bucket{http_request_method="GET",http_route="/orders/{id}",http_response_status_code="200",le="0.05"} 1"#));
//! assert!(text.contains("outbox_pending 3"));
//! ```

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
pub use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};

use crate::Error;
use crate::config::MetricsConfig;

/// Builds a Prometheus recorder with the configured buckets, without installing it and without
/// any HTTP listener. Call [`PrometheusRecorder::handle`] for rendering, and run
/// [`PrometheusHandle::run_upkeep`] now and then (the telemetry guard does this every 5 s).
pub fn build_recorder(config: &MetricsConfig) -> Result<PrometheusRecorder, Error> {
    config.validate()?;
    let bad = |e: metrics_exporter_prometheus::BuildError| Error::invalid_config(e.to_string());
    let mut builder = PrometheusBuilder::new()
        .set_buckets(&config.buckets)
        .map_err(bad)?;
    for (name, buckets) in &config.buckets_for_metric {
        builder = builder
            .set_buckets_for_metric(Matcher::Full(name.clone()), buckets)
            .map_err(bad)?;
    }
    Ok(builder.build_recorder())
}

/// Registers the description and unit of every catalogue metric with the current recorder, so
/// the exposition carries `# HELP` lines. Called by `init` after installing the recorder.
pub fn describe_all() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use names::*;
    describe_histogram!(
        HTTP_SERVER_REQUEST_DURATION,
        Unit::Seconds,
        "Duration of HTTP server requests."
    );
    describe_histogram!(
        HTTP_CLIENT_REQUEST_DURATION,
        Unit::Seconds,
        "Duration of HTTP client requests."
    );
    describe_histogram!(
        MESSAGING_PUBLISH_DURATION,
        Unit::Seconds,
        "Time from publish to broker confirm."
    );
    describe_histogram!(
        MESSAGING_PROCESS_DURATION,
        Unit::Seconds,
        "Time a consumer handler spent on a message."
    );
    describe_counter!(
        MESSAGING_CLIENT_SENT_MESSAGES,
        "Messages published and confirmed by the broker."
    );
    describe_counter!(
        MESSAGING_CLIENT_CONSUMED_MESSAGES,
        "Messages delivered to a consumer."
    );
    describe_counter!(
        MESSAGING_CLIENT_ACKED_MESSAGES,
        "Messages acknowledged after successful processing."
    );
    describe_counter!(
        MESSAGING_CLIENT_RETRIED_MESSAGES,
        "Messages scheduled for another delivery attempt."
    );
    describe_counter!(
        MESSAGING_CLIENT_DEAD_LETTERED_MESSAGES,
        "Messages sent to the dead-letter queue."
    );
    describe_gauge!(
        CIRCUIT_BREAKER_STATE,
        "Circuit breaker state: 0 closed, 1 open, 2 half-open."
    );
    describe_counter!(
        CIRCUIT_BREAKER_CALLS,
        "Calls seen by a circuit breaker, by outcome."
    );
    describe_counter!(
        RETRY_ATTEMPTS,
        "Retry attempts made (the first attempt is not counted)."
    );
    describe_gauge!(OUTBOX_PENDING, "Outbox messages not yet published.");
    describe_gauge!(
        OUTBOX_OLDEST_PENDING_AGE,
        Unit::Seconds,
        "Age of the oldest unpublished outbox message."
    );
    describe_histogram!(
        OUTBOX_PUBLISH_LATENCY,
        Unit::Seconds,
        "Time from outbox insert to broker confirm."
    );
    describe_counter!(OUTBOX_RELAY_ERRORS, "Errors of the outbox relay loop.");
    describe_counter!(
        INBOX_DUPLICATES,
        "Incoming messages skipped because the inbox had seen them."
    );
    describe_counter!(
        OTEL_SPANS_DROPPED,
        "Spans dropped before export (queue full or export failed)."
    );
    describe_counter!(
        LOG_LINES_DROPPED,
        "Log lines dropped because the log writer's buffer was full or the output failed."
    );
}

/// The catalogue: every metric the chassis emits, one constant each.
///
/// Names follow the [OpenTelemetry semantic conventions](https://opentelemetry.io/docs/specs/semconv/)
/// where one exists (units in seconds, dotted names, attribute names from semconv); the rest use
/// the same style. Prometheus cannot have dots in names, so the exposition replaces them with
/// underscores: `http.server.request.duration` is scraped as `http_server_request_duration`
/// (`_bucket`, `_sum`, `_count` for histograms), label `http.request.method` as
/// `http_request_method`. Counters carry no `_total` suffix and no unit suffix is appended.
///
/// | constant | name (Prometheus) | type | unit | labels |
/// |---|---|---|---|---|
/// | [`HTTP_SERVER_REQUEST_DURATION`](names::HTTP_SERVER_REQUEST_DURATION) | `http.server.request.duration` (`http_server_request_duration`) | histogram | s | `http.request.method`, `http.route`, `http.response.status_code` |
/// | [`HTTP_CLIENT_REQUEST_DURATION`](names::HTTP_CLIENT_REQUEST_DURATION) | `http.client.request.duration` (`http_client_request_duration`) | histogram | s | `http.request.method`, `server.address`, `http.response.status_code` |
/// | [`MESSAGING_PUBLISH_DURATION`](names::MESSAGING_PUBLISH_DURATION) | `messaging.publish.duration` (`messaging_publish_duration`) | histogram | s | `messaging.destination.name`, `outcome` |
/// | [`MESSAGING_PROCESS_DURATION`](names::MESSAGING_PROCESS_DURATION) | `messaging.process.duration` (`messaging_process_duration`) | histogram | s | `messaging.destination.name`, `outcome` |
/// | [`MESSAGING_CLIENT_SENT_MESSAGES`](names::MESSAGING_CLIENT_SENT_MESSAGES) | `messaging.client.sent.messages` (`messaging_client_sent_messages`) | counter | {message} | `messaging.destination.name` |
/// | [`MESSAGING_CLIENT_CONSUMED_MESSAGES`](names::MESSAGING_CLIENT_CONSUMED_MESSAGES) | `messaging.client.consumed.messages` (`messaging_client_consumed_messages`) | counter | {message} | `messaging.destination.name` |
/// | [`MESSAGING_CLIENT_ACKED_MESSAGES`](names::MESSAGING_CLIENT_ACKED_MESSAGES) | `messaging.client.acked.messages` (`messaging_client_acked_messages`) | counter | {message} | `messaging.destination.name` |
/// | [`MESSAGING_CLIENT_RETRIED_MESSAGES`](names::MESSAGING_CLIENT_RETRIED_MESSAGES) | `messaging.client.retried.messages` (`messaging_client_retried_messages`) | counter | {message} | `messaging.destination.name` |
/// | [`MESSAGING_CLIENT_DEAD_LETTERED_MESSAGES`](names::MESSAGING_CLIENT_DEAD_LETTERED_MESSAGES) | `messaging.client.dead_lettered.messages` (`messaging_client_dead_lettered_messages`) | counter | {message} | `messaging.destination.name`, `error.type` |
/// | [`CIRCUIT_BREAKER_STATE`](names::CIRCUIT_BREAKER_STATE) | `circuit_breaker.state` (`circuit_breaker_state`) | gauge | 0 closed / 1 open / 2 half-open | `name` |
/// | [`CIRCUIT_BREAKER_CALLS`](names::CIRCUIT_BREAKER_CALLS) | `circuit_breaker.calls` (`circuit_breaker_calls`) | counter | {call} | `name`, `outcome` (`success`, `failure`, `rejected`) |
/// | [`RETRY_ATTEMPTS`](names::RETRY_ATTEMPTS) | `retry.attempts` (`retry_attempts`) | counter | {attempt} | `name`, `outcome` |
/// | [`OUTBOX_PENDING`](names::OUTBOX_PENDING) | `outbox.pending` (`outbox_pending`) | gauge | {message} | — |
/// | [`OUTBOX_OLDEST_PENDING_AGE`](names::OUTBOX_OLDEST_PENDING_AGE) | `outbox.oldest_pending_age` (`outbox_oldest_pending_age`) | gauge | s | — |
/// | [`OUTBOX_PUBLISH_LATENCY`](names::OUTBOX_PUBLISH_LATENCY) | `outbox.publish_latency` (`outbox_publish_latency`) | histogram | s | — |
/// | [`OUTBOX_RELAY_ERRORS`](names::OUTBOX_RELAY_ERRORS) | `outbox.relay_errors` (`outbox_relay_errors`) | counter | {error} | `error.type` |
/// | [`INBOX_DUPLICATES`](names::INBOX_DUPLICATES) | `inbox.duplicates` (`inbox_duplicates`) | counter | {message} | `messaging.destination.name` |
/// | [`OTEL_SPANS_DROPPED`](names::OTEL_SPANS_DROPPED) | `otel.spans.dropped` (`otel_spans_dropped`) | counter | {span} | `reason` (`queue_full`, `export_failed`) |
/// | [`LOG_LINES_DROPPED`](names::LOG_LINES_DROPPED) | `log.lines.dropped` (`log_lines_dropped`) | counter | {line} | — |
pub mod names {
    /// Duration of HTTP server requests (semconv `http.server.request.duration`), seconds.
    pub const HTTP_SERVER_REQUEST_DURATION: &str = "http.server.request.duration";
    /// Duration of HTTP client requests (semconv `http.client.request.duration`), seconds.
    pub const HTTP_CLIENT_REQUEST_DURATION: &str = "http.client.request.duration";
    /// Time from publish to broker confirm, seconds.
    pub const MESSAGING_PUBLISH_DURATION: &str = "messaging.publish.duration";
    /// Time a consumer handler spent on one message, seconds (semconv `messaging.process.duration`).
    pub const MESSAGING_PROCESS_DURATION: &str = "messaging.process.duration";
    /// Messages published and confirmed (semconv `messaging.client.sent.messages`).
    pub const MESSAGING_CLIENT_SENT_MESSAGES: &str = "messaging.client.sent.messages";
    /// Messages delivered to a consumer (semconv `messaging.client.consumed.messages`).
    pub const MESSAGING_CLIENT_CONSUMED_MESSAGES: &str = "messaging.client.consumed.messages";
    /// Messages acknowledged after successful processing.
    pub const MESSAGING_CLIENT_ACKED_MESSAGES: &str = "messaging.client.acked.messages";
    /// Messages scheduled for redelivery (retry).
    pub const MESSAGING_CLIENT_RETRIED_MESSAGES: &str = "messaging.client.retried.messages";
    /// Messages dead-lettered.
    pub const MESSAGING_CLIENT_DEAD_LETTERED_MESSAGES: &str =
        "messaging.client.dead_lettered.messages";
    /// Circuit breaker state gauge: 0 closed, 1 open, 2 half-open.
    pub const CIRCUIT_BREAKER_STATE: &str = "circuit_breaker.state";
    /// Calls through a circuit breaker, by `outcome`.
    pub const CIRCUIT_BREAKER_CALLS: &str = "circuit_breaker.calls";
    /// Retry attempts (not counting the first attempt).
    pub const RETRY_ATTEMPTS: &str = "retry.attempts";
    /// Outbox messages not yet published (gauge).
    pub const OUTBOX_PENDING: &str = "outbox.pending";
    /// Age of the oldest unpublished outbox message, seconds (gauge).
    pub const OUTBOX_OLDEST_PENDING_AGE: &str = "outbox.oldest_pending_age";
    /// Time from outbox insert to broker confirm, seconds (histogram).
    pub const OUTBOX_PUBLISH_LATENCY: &str = "outbox.publish_latency";
    /// Errors of the outbox relay loop (counter).
    pub const OUTBOX_RELAY_ERRORS: &str = "outbox.relay_errors";
    /// Incoming messages the inbox had already processed (counter).
    pub const INBOX_DUPLICATES: &str = "inbox.duplicates";
    /// Spans lost before export, by `reason` (counter).
    pub const OTEL_SPANS_DROPPED: &str = "otel.spans.dropped";
    /// Log lines lost because the log writer's buffer was full or its output failed (counter).
    pub const LOG_LINES_DROPPED: &str = "log.lines.dropped";

    /// Every metric name of the catalogue.
    pub const ALL: &[&str] = &[
        HTTP_SERVER_REQUEST_DURATION,
        HTTP_CLIENT_REQUEST_DURATION,
        MESSAGING_PUBLISH_DURATION,
        MESSAGING_PROCESS_DURATION,
        MESSAGING_CLIENT_SENT_MESSAGES,
        MESSAGING_CLIENT_CONSUMED_MESSAGES,
        MESSAGING_CLIENT_ACKED_MESSAGES,
        MESSAGING_CLIENT_RETRIED_MESSAGES,
        MESSAGING_CLIENT_DEAD_LETTERED_MESSAGES,
        CIRCUIT_BREAKER_STATE,
        CIRCUIT_BREAKER_CALLS,
        RETRY_ATTEMPTS,
        OUTBOX_PENDING,
        OUTBOX_OLDEST_PENDING_AGE,
        OUTBOX_PUBLISH_LATENCY,
        OUTBOX_RELAY_ERRORS,
        INBOX_DUPLICATES,
        OTEL_SPANS_DROPPED,
        LOG_LINES_DROPPED,
    ];

    /// Label (attribute) names used with the catalogue metrics.
    pub mod labels {
        /// HTTP method (semconv `http.request.method`): `GET`, `POST`, ...
        pub const HTTP_REQUEST_METHOD: &str = "http.request.method";
        /// Route template (semconv `http.route`): `/orders/{id}`, never the raw path.
        pub const HTTP_ROUTE: &str = "http.route";
        /// Response status code (semconv `http.response.status_code`).
        pub const HTTP_RESPONSE_STATUS_CODE: &str = "http.response.status_code";
        /// Peer host (semconv `server.address`).
        pub const SERVER_ADDRESS: &str = "server.address";
        /// Exchange or queue (semconv `messaging.destination.name`).
        pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
        /// Error class (semconv `error.type`).
        pub const ERROR_TYPE: &str = "error.type";
        /// Name of a breaker, retry policy, ...
        pub const NAME: &str = "name";
        /// Outcome of a call: `success`, `failure`, `rejected`, ...
        pub const OUTCOME: &str = "outcome";
        /// Why something was dropped.
        pub const REASON: &str = "reason";
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::formatting::sanitize_metric_name;

    #[test]
    fn catalogue_names_are_unique_and_prometheus_safe() {
        let mut seen = std::collections::HashSet::new();
        for name in names::ALL {
            assert!(seen.insert(sanitize_metric_name(name)), "{name} collides");
            assert_eq!(sanitize_metric_name(name), name.replace('.', "_"));
        }
        assert_eq!(names::ALL.len(), 19);
    }

    #[test]
    fn per_metric_buckets_override_the_default() {
        let mut config = MetricsConfig::default();
        config
            .buckets_for_metric
            .insert(names::OUTBOX_PUBLISH_LATENCY.to_owned(), vec![0.5, 5.0]);
        let recorder = build_recorder(&config).unwrap();
        ::metrics::with_local_recorder(&recorder, || {
            ::metrics::histogram!(names::OUTBOX_PUBLISH_LATENCY).record(1.0);
            ::metrics::histogram!(names::MESSAGING_PROCESS_DURATION).record(0.02);
            ::metrics::counter!(names::OTEL_SPANS_DROPPED, names::labels::REASON => "queue_full")
                .increment(2);
        });
        let text = recorder.handle().render();
        assert!(
            text.contains(r#"outbox_publish_latency_bucket{le="0.5"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"outbox_publish_latency_bucket{le="5"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"outbox_publish_latency_bucket{le="0.025"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"messaging_process_duration_bucket{le="0.025"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"otel_spans_dropped{reason="queue_full"} 2"#),
            "{text}"
        );
    }

    #[test]
    fn invalid_buckets_are_an_error() {
        let config = MetricsConfig {
            buckets: vec![],
            ..MetricsConfig::default()
        };
        assert!(build_recorder(&config).is_err());
    }
}
