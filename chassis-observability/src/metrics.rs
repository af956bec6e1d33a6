//! Prometheus metrics through the [`metrics`](https://docs.rs/metrics) facade, and the catalogue
//! of every metric the chassis emits ([`names`]).
//!
//! Code records with the facade and the catalogue's names
//! (`metrics::histogram!(names::HTTP_SERVER_REQUEST_DURATION, ...)`, which is
//! `http_server_request_duration_seconds`: the catalogue holds each name as Prometheus exposes
//! it, unit suffix and `_total` included, derived from the OpenTelemetry name as [`names`]
//! describes);
//! [`TelemetryBuilder::init`](crate::TelemetryBuilder::init) installs a [`PrometheusRecorder`]
//! as the global recorder and [`Telemetry::prometheus_handle`](crate::Telemetry::prometheus_handle)
//! renders the text exposition that chassis-http serves at `/metrics`. No HTTP listener of the exporter is
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
//! assert!(text.contains(r#"http_server_request_duration_seconds_bucket{http_request_method="GET",http_route="/orders/{id}",http_response_status_code="200",le="0.05"} 1"#));
//! assert!(text.contains("outbox_pending 3"));
//! ```

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
pub use metrics_exporter_prometheus::{PrometheusHandle, PrometheusRecorder};

use crate::Error;
use crate::config::MetricsConfig;

/// Builds a Prometheus recorder with the configured buckets, without installing it and without
/// any HTTP listener. Call [`PrometheusRecorder::handle`] for rendering, and run
/// [`PrometheusHandle::run_upkeep`] now and then ([`Telemetry`](crate::Telemetry) does this every 5 s).
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

/// Registers the description and unit of every catalogue metric ([`names::ALL`]) with the
/// current recorder, so the exposition carries `# HELP` and `# TYPE` lines for each. Called by
/// `init` after installing the recorder.
///
/// The recorder is built without unit suffixes: the catalogue's names already carry them.
pub fn describe_all() {
    use ::metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    for metric in names::ALL {
        let unit = match metric.unit {
            "s" => Some(Unit::Seconds),
            "By" => Some(Unit::Bytes),
            _ => None,
        };
        match (metric.kind, unit) {
            (names::Kind::Counter, Some(unit)) => {
                describe_counter!(metric.name, unit, metric.description)
            }
            (names::Kind::Counter, None) => describe_counter!(metric.name, metric.description),
            (names::Kind::Gauge, Some(unit)) => {
                describe_gauge!(metric.name, unit, metric.description)
            }
            (names::Kind::Gauge, None) => describe_gauge!(metric.name, metric.description),
            (names::Kind::Histogram, Some(unit)) => {
                describe_histogram!(metric.name, unit, metric.description)
            }
            (names::Kind::Histogram, None) => {
                describe_histogram!(metric.name, metric.description)
            }
        }
    }
}

/// The catalogue: every metric the chassis crates emit, with the rule that derives each
/// Prometheus name from its OpenTelemetry name and unit (see the module's docs). It is
/// [`chassis_core::metric_catalogue`], re-exported here because this is where services look
/// for it and where the recorder learns each description.
pub use chassis_core::metric_catalogue as names;

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::formatting::sanitize_metric_name;

    #[test]
    fn catalogue_names_are_exposed_unchanged() {
        for metric in names::ALL {
            assert_eq!(sanitize_metric_name(metric.name), metric.name);
        }
    }

    #[test]
    fn every_catalogue_metric_gets_help_and_type() {
        let recorder = build_recorder(&MetricsConfig::default()).unwrap();
        ::metrics::with_local_recorder(&recorder, || {
            describe_all();
            for metric in names::ALL {
                match metric.kind {
                    names::Kind::Counter => ::metrics::counter!(metric.name).increment(1),
                    names::Kind::Gauge => ::metrics::gauge!(metric.name).set(1.0),
                    names::Kind::Histogram => ::metrics::histogram!(metric.name).record(1.0),
                }
            }
        });
        let text = recorder.handle().render();
        for metric in names::ALL {
            let kind = metric.kind.as_str();
            assert!(
                text.contains(&format!("# HELP {} {}\n", metric.name, metric.description)),
                "{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {} {kind}\n", metric.name)),
                "{text}"
            );
        }
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
            text.contains(r#"outbox_publish_latency_seconds_bucket{le="0.5"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(r#"outbox_publish_latency_seconds_bucket{le="5"} 1"#),
            "{text}"
        );
        assert!(
            !text.contains(r#"outbox_publish_latency_seconds_bucket{le="0.025"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"messaging_process_duration_seconds_bucket{le="0.025"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"otel_spans_dropped_total{reason="queue_full"} 2"#),
            "{text}"
        );
    }

    /// What `names::preregister` relies on: the exporter renders a registered series that was
    /// never updated, a histogram with every bucket, `_sum` and `_count` at 0.
    #[test]
    fn preregistered_series_are_rendered_at_zero() {
        let recorder = build_recorder(&MetricsConfig::default()).unwrap();
        ::metrics::with_local_recorder(&recorder, || {
            describe_all();
            names::preregister(
                names::MESSAGING_PROCESS_DURATION,
                &[(names::labels::MESSAGING_DESTINATION_NAME, "orders")],
            );
            names::preregister(names::OUTBOX_RELAY_ERRORS, &[]);
            names::preregister(names::HTTP_SERVER_ACTIVE_REQUESTS, &[]);
        });
        let text = recorder.handle().render();
        for outcome in ["ack", "retry", "reject"] {
            let labels = format!(r#"messaging_destination_name="orders",outcome="{outcome}""#);
            for sample in [
                format!("messaging_process_duration_seconds_bucket{{{labels},le=\"0.005\"}} 0\n"),
                format!("messaging_process_duration_seconds_bucket{{{labels},le=\"+Inf\"}} 0\n"),
                format!("messaging_process_duration_seconds_sum{{{labels}}} 0\n"),
                format!("messaging_process_duration_seconds_count{{{labels}}} 0\n"),
            ] {
                assert!(text.contains(&sample), "{sample}\n{text}");
            }
        }
        for error in ["transient", "message", "database"] {
            let sample = format!("outbox_relay_errors_total{{error_type=\"{error}\"}} 0\n");
            assert!(text.contains(&sample), "{sample}\n{text}");
        }
        let sample = "http_server_active_requests{http_request_method=\"_OTHER\"} 0\n";
        assert!(text.contains(sample), "{text}");
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
