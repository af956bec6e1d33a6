//! Metrics pushed over OTLP beside the Prometheus endpoint.
//!
//! With [`OtlpMetricsConfig::enabled`](crate::config::OtlpMetricsConfig::enabled)
//! (`OTEL_METRICS_EXPORTER=otlp`), a task reads the Prometheus recorder's snapshot every
//! [`interval`](crate::config::OtlpMetricsConfig::interval) (`OTEL_METRIC_EXPORT_INTERVAL`,
//! 60 s by default), converts it to OTLP metrics and sends them to the collector, with the same
//! resource, headers and TLS as the span exporter. The Prometheus endpoint keeps working as
//! before; a last export runs on [`Telemetry::shutdown`](crate::Telemetry::shutdown).
//!
//! # Protocols
//!
//! The protocol is [`OtlpMetricsConfig::protocol`](crate::config::OtlpMetricsConfig::protocol)
//! (`OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`), else the spans'.
//!
//! - `http/protobuf` (crate feature `otlp-http`, on by default): a `POST` of the protobuf body
//!   to `/v1/metrics` of the collector (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` as is, or
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` plus `/v1/metrics`, usually port 4318), the headers as HTTP
//!   headers.
//! - `grpc` (crate feature `grpc`): the `opentelemetry.proto.collector.metrics.v1.MetricsService`
//!   `Export` call over a tonic channel to the endpoint as is (`http://collector:4317`; gRPC
//!   endpoints have no per-signal path), the headers as gRPC metadata, `https://` with the
//!   spans' TLS material. The channel connects on the first export, so init never waits for
//!   the collector. A status other than `OK` fails the export with its code and message.
//! - `http/json` is not implemented: naming it fails configuration with
//!   [`ErrorKind::InvalidConfig`]. A protocol whose crate feature is off fails init with
//!   [`ErrorKind::TransportNotEnabled`] naming the feature.
//!
//! Either way one push is bounded by [`timeout`](crate::config::OtlpMetricsConfig::timeout)
//! (`OTEL_EXPORTER_OTLP_METRICS_TIMEOUT`, 10 s by default).
//!
//! # What is pushed
//!
//! A snapshot of the Prometheus recorder, so both endpoints show the same numbers and nothing
//! is recorded twice: counters become cumulative monotonic sums, gauges gauges, histograms
//! explicit-bucket histograms with cumulative temporality (the buckets are the configured
//! ones), summaries summaries. Names and labels stay as Prometheus shows them.
//!
//! A failed export is not retried (the next snapshot carries the cumulative values anyway); it
//! is logged once until an export succeeds again.
//!
//! ```
//! use chassis_observability::otlp_metrics::prometheus_text_to_otlp;
//! let metrics = prometheus_text_to_otlp(
//!     "# TYPE jobs_total counter\njobs_total{queue=\"a\"} 3\n",
//!     0,
//!     1,
//! );
//! assert_eq!(metrics[0].name, "jobs_total");
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
#[cfg(feature = "grpc")]
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint, metric, number_data_point,
    summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;

use crate::metrics::PrometheusHandle;
use crate::{Error, ErrorKind};

/// Pushes the Prometheus recorder's snapshot to an OTLP collector, over HTTP/protobuf or gRPC
/// (see the [module docs](self)). Built by telemetry init; [`export`](Self::export) is public
/// for a service that wants to push at a moment of its own choosing (before a batch job exits,
/// say).
pub struct OtlpMetricsExporter {
    handle: PrometheusHandle,
    transport: Transport,
    url: String,
    resource: ProtoResource,
    start_unix_nano: u64,
    failing: AtomicBool,
}

/// How a request reaches the collector. One exporter type over both, so the conversion, the
/// periodic task and the failure logging are shared.
pub(crate) enum Transport {
    /// `POST` of the protobuf body to the URL, headers as HTTP headers.
    #[cfg(feature = "otlp-http")]
    Http {
        client: Arc<dyn opentelemetry_http::HttpClient>,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    },
    /// The `MetricsService/Export` unary call, headers as gRPC metadata.
    #[cfg(feature = "grpc")]
    Grpc {
        // Boxed: the client is several times the size of the HTTP variant.
        client: Box<MetricsServiceClient<tonic::transport::Channel>>,
        metadata: tonic::metadata::MetadataMap,
        timeout: Duration,
    },
}

impl Transport {
    /// HTTP/protobuf through `client`, which applies the timeout.
    #[cfg(feature = "otlp-http")]
    pub(crate) fn http(
        client: Arc<dyn opentelemetry_http::HttpClient>,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
    ) -> Self {
        Self::Http { client, headers }
    }

    /// gRPC to `url` (`http://` or `https://` with `tls`). The channel connects lazily, on the
    /// first export, so init never waits for the collector; a lost connection is re-established
    /// by the channel on the next export.
    #[cfg(feature = "grpc")]
    pub(crate) fn grpc(
        url: &str,
        tls: Option<tonic::transport::ClientTlsConfig>,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let invalid = |e: tonic::transport::Error| {
            Error::with_source(
                ErrorKind::InvalidConfig {
                    reason: format!("OTLP metrics endpoint {url:?}: {e}"),
                },
                e,
            )
        };
        let mut endpoint = tonic::transport::Endpoint::from_shared(url.to_owned())
            .map_err(invalid)?
            .connect_timeout(timeout);
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| {
                Error::with_source(
                    ErrorKind::Tls {
                        reason: format!("gRPC TLS for the metrics push: {e}"),
                    },
                    e,
                )
            })?;
        }
        let headers: http::HeaderMap = headers.into_iter().collect();
        Ok(Self::Grpc {
            client: Box::new(MetricsServiceClient::new(endpoint.connect_lazy())),
            metadata: tonic::metadata::MetadataMap::from_headers(headers),
            timeout,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            #[cfg(feature = "otlp-http")]
            Self::Http { .. } => "http/protobuf",
            #[cfg(feature = "grpc")]
            Self::Grpc { .. } => "grpc",
        }
    }
}

impl std::fmt::Debug for OtlpMetricsExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpMetricsExporter")
            .field("url", &self.url)
            .field("protocol", &self.transport.name())
            .finish_non_exhaustive()
    }
}

impl OtlpMetricsExporter {
    pub(crate) fn new(
        handle: PrometheusHandle,
        transport: Transport,
        url: String,
        resource: &opentelemetry_sdk::Resource,
    ) -> Self {
        Self {
            handle,
            transport,
            url,
            resource: proto_resource(resource),
            start_unix_nano: unix_nanos(),
            failing: AtomicBool::new(false),
        }
    }

    /// The collector URL the metrics are sent to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Converts the current snapshot and sends it once. Fails with [`ErrorKind::Exporter`] when
    /// the collector cannot be reached, does not answer within the timeout, or refuses the
    /// request (an HTTP status other than 2xx; a gRPC status other than `OK`, named with its
    /// code and message in the reason).
    pub async fn export(&self) -> Result<(), Error> {
        let metrics =
            prometheus_text_to_otlp(&self.handle.render(), self.start_unix_nano, unix_nanos());
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "chassis".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..Default::default()
                    }),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        match &self.transport {
            #[cfg(feature = "otlp-http")]
            Transport::Http { client, headers } => {
                self.export_http(&**client, headers, request).await
            }
            #[cfg(feature = "grpc")]
            Transport::Grpc {
                client,
                metadata,
                timeout,
            } => self.export_grpc(client, metadata, *timeout, request).await,
        }
    }

    #[cfg(feature = "otlp-http")]
    async fn export_http(
        &self,
        client: &dyn opentelemetry_http::HttpClient,
        headers: &[(http::HeaderName, http::HeaderValue)],
        request: ExportMetricsServiceRequest,
    ) -> Result<(), Error> {
        let body = prost::Message::encode_to_vec(&request);
        let fail = |reason: String| Error::new(ErrorKind::Exporter { reason });
        let mut builder = http::Request::post(&self.url)
            .header(http::header::CONTENT_TYPE, "application/x-protobuf");
        for (name, value) in headers {
            builder = builder.header(name, value);
        }
        let request = builder
            .body(opentelemetry_http::Bytes::from(body))
            .map_err(|e| fail(format!("metrics export request: {e}")))?;
        let response = client
            .send_bytes(request)
            .await
            .map_err(|e| fail(format!("metrics export to {}: {e}", self.url)))?;
        if !response.status().is_success() {
            return Err(fail(format!(
                "metrics export to {}: the collector answered {}",
                self.url,
                response.status()
            )));
        }
        Ok(())
    }

    #[cfg(feature = "grpc")]
    async fn export_grpc(
        &self,
        client: &MetricsServiceClient<tonic::transport::Channel>,
        metadata: &tonic::metadata::MetadataMap,
        timeout: Duration,
        request: ExportMetricsServiceRequest,
    ) -> Result<(), Error> {
        let mut request = tonic::Request::new(request);
        *request.metadata_mut() = metadata.clone();
        // Sent as `grpc-timeout`, so the collector can give up at the same moment.
        request.set_timeout(timeout);
        // A clone shares the channel (and its connection); `export` needs `&mut`.
        let mut client = client.clone();
        let timed_out = || {
            Error::new(ErrorKind::Exporter {
                reason: format!(
                    "metrics export to {}: no answer within {timeout:?}",
                    self.url
                ),
            })
        };
        let started = tokio::time::Instant::now();
        // Bounds the whole call (connecting included); dropping the call resets its stream.
        let status = match tokio::time::timeout(timeout, client.export(request)).await {
            Ok(Ok(_)) => return Ok(()),
            // tonic's channel enforces the `grpc-timeout` it sends as well, answering
            // `Cancelled` when it runs out first: the same timeout, reported the same way.
            Ok(Err(status))
                if status.code() == tonic::Code::Cancelled && started.elapsed() >= timeout =>
            {
                return Err(timed_out());
            }
            Ok(Err(status)) => status,
            Err(_) => return Err(timed_out()),
        };
        let reason = format!(
            "metrics export to {}: gRPC status {:?} ({}): {}",
            self.url,
            status.code(),
            status.code() as i32,
            status.message()
        );
        Err(Error::with_source(ErrorKind::Exporter { reason }, status))
    }

    /// [`export`](Self::export), logging a failure once per outage and the recovery once.
    pub(crate) async fn export_logged(&self) {
        match self.export().await {
            Ok(()) => {
                if self.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        target: "chassis_observability::otlp_metrics",
                        endpoint = %self.url,
                        "metrics export recovered"
                    );
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        target: "chassis_observability::otlp_metrics",
                        endpoint = %self.url,
                        error = %e,
                        "metrics export failing (no further warning until it recovers)"
                    );
                }
            }
        }
    }

    /// The periodic export task: one export every `interval`, the first after one interval.
    pub(crate) fn spawn(self: Arc<Self>, interval: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.export_logged().await;
            }
        })
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_owned())),
        }),
        ..Default::default()
    }
}

fn proto_resource(resource: &opentelemetry_sdk::Resource) -> ProtoResource {
    use opentelemetry::Value;
    let attributes = resource
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.to_string(),
            value: Some(AnyValue {
                value: Some(match v {
                    Value::Bool(b) => any_value::Value::BoolValue(*b),
                    Value::I64(i) => any_value::Value::IntValue(*i),
                    Value::F64(f) => any_value::Value::DoubleValue(*f),
                    other => any_value::Value::StringValue(other.to_string()),
                }),
            }),
            ..Default::default()
        })
        .collect();
    ProtoResource {
        attributes,
        ..Default::default()
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

/// One series' labels, sorted by name (the Prometheus text output's order).
type Labels = Vec<(String, String)>;

/// One data point per series of a family, each built by `point`.
fn points<T>(series: &BTreeMap<Labels, Series>, point: impl Fn(&Labels, &Series) -> T) -> Vec<T> {
    series.iter().map(|(l, s)| point(l, s)).collect()
}

#[derive(Default)]
struct Series {
    value: f64,
    /// `(le or quantile, value)`.
    points: Vec<(f64, f64)>,
    sum: f64,
    count: f64,
}

struct Family {
    kind: Kind,
    help: String,
    series: BTreeMap<Labels, Series>,
}

/// Converts the Prometheus text exposition (what the recorder renders) to OTLP metrics, with
/// cumulative temporality from `start_unix_nano` to `now_unix_nano`. Lines it cannot read, and
/// untyped families, are skipped.
pub fn prometheus_text_to_otlp(
    text: &str,
    start_unix_nano: u64,
    now_unix_nano: u64,
) -> Vec<Metric> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut help: BTreeMap<String, String> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("# HELP ") {
            if let Some((name, text)) = rest.split_once(' ') {
                help.insert(name.to_owned(), unescape(text));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let kind = match kind {
                "counter" => Kind::Counter,
                "gauge" => Kind::Gauge,
                "histogram" => Kind::Histogram,
                "summary" => Kind::Summary,
                _ => continue,
            };
            families.insert(
                name.to_owned(),
                Family {
                    kind,
                    help: help.get(name).cloned().unwrap_or_default(),
                    series: BTreeMap::new(),
                },
            );
            continue;
        }
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, labels, value)) = parse_sample(line) else {
            continue;
        };
        let (family, suffix) = if families.contains_key(name) {
            (name, "")
        } else {
            let Some((base, suffix)) = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s).map(|b| (b, *s)))
            else {
                continue;
            };
            (base, suffix)
        };
        let Some(family) = families.get_mut(family) else {
            continue;
        };
        let mut labels = labels;
        let special = match (family.kind, suffix) {
            (Kind::Histogram, "_bucket") => "le",
            (Kind::Summary, "") => "quantile",
            _ => "",
        };
        let mut bound = None;
        if !special.is_empty() {
            let Some(i) = labels.iter().position(|(k, _)| k == special) else {
                continue;
            };
            let (_, v) = labels.remove(i);
            bound = parse_value(&v);
            if bound.is_none() {
                continue;
            }
        }
        let series = family.series.entry(labels).or_default();
        match (suffix, bound) {
            (_, Some(b)) => series.points.push((b, value)),
            ("_sum", None) => series.sum = value,
            ("_count", None) => series.count = value,
            _ => series.value = value,
        }
    }

    let cumulative = AggregationTemporality::Cumulative as i32;
    families
        .into_iter()
        .filter(|(_, f)| !f.series.is_empty())
        .map(|(name, family)| {
            let attrs = |labels: &Labels| -> Vec<KeyValue> {
                labels.iter().map(|(k, v)| string_kv(k, v)).collect()
            };
            let number = |labels: &Labels, s: &Series| NumberDataPoint {
                attributes: attrs(labels),
                start_time_unix_nano: start_unix_nano,
                time_unix_nano: now_unix_nano,
                value: Some(number_data_point::Value::AsDouble(s.value)),
                ..Default::default()
            };
            let data = match family.kind {
                Kind::Counter => metric::Data::Sum(Sum {
                    data_points: points(&family.series, number),
                    aggregation_temporality: cumulative,
                    is_monotonic: true,
                }),
                Kind::Gauge => metric::Data::Gauge(Gauge {
                    data_points: points(&family.series, |l, s| NumberDataPoint {
                        start_time_unix_nano: 0,
                        ..number(l, s)
                    }),
                }),
                Kind::Histogram => metric::Data::Histogram(Histogram {
                    data_points: points(&family.series, |l, s| {
                        histogram_point(attrs(l), s, start_unix_nano, now_unix_nano)
                    }),
                    aggregation_temporality: cumulative,
                }),
                Kind::Summary => metric::Data::Summary(Summary {
                    data_points: points(&family.series, |l, s| SummaryDataPoint {
                        attributes: attrs(l),
                        start_time_unix_nano: start_unix_nano,
                        time_unix_nano: now_unix_nano,
                        count: s.count as u64,
                        sum: s.sum,
                        quantile_values: s
                            .points
                            .iter()
                            .map(|&(quantile, value)| ValueAtQuantile { quantile, value })
                            .collect(),
                        flags: 0,
                    }),
                }),
            };
            Metric {
                name,
                description: family.help,
                data: Some(data),
                ..Default::default()
            }
        })
        .collect()
}

/// Prometheus buckets are cumulative (`le`); OTLP's are per bucket, with the `+Inf` bucket
/// implied by the bounds.
fn histogram_point(
    attributes: Vec<KeyValue>,
    s: &Series,
    start_unix_nano: u64,
    now_unix_nano: u64,
) -> HistogramDataPoint {
    let mut buckets = s.points.clone();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = s.count as u64;
    let mut explicit_bounds = Vec::with_capacity(buckets.len());
    let mut bucket_counts = Vec::with_capacity(buckets.len() + 1);
    let mut below = 0u64;
    for &(le, cumulative) in buckets.iter().filter(|(le, _)| le.is_finite()) {
        let cumulative = cumulative as u64;
        explicit_bounds.push(le);
        bucket_counts.push(cumulative.saturating_sub(below));
        below = cumulative;
    }
    bucket_counts.push(count.saturating_sub(below));
    HistogramDataPoint {
        attributes,
        start_time_unix_nano: start_unix_nano,
        time_unix_nano: now_unix_nano,
        count,
        sum: Some(s.sum),
        bucket_counts,
        explicit_bounds,
        ..Default::default()
    }
}

fn parse_value(v: &str) -> Option<f64> {
    match v.trim() {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(other) => out.push(other),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `name{k="v",...} value [timestamp]`.
fn parse_sample(line: &str) -> Option<(&str, Labels, f64)> {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 1);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    // The quoted value.
                    if chars.next().map(|(_, c)| c) != Some('"') {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            '"' => break,
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
        rest = &body[end?..];
    }
    let value = parse_value(rest.split_whitespace().next()?)?;
    labels.sort();
    Some((name, labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP http_requests_total Requests served.
# TYPE http_requests_total counter
http_requests_total{method="GET",route="/a \"b\""} 7
http_requests_total{method="POST",route="/a"} 2
# TYPE in_flight gauge
in_flight -1.5
# TYPE latency_seconds histogram
latency_seconds_bucket{route="/a",le="0.1"} 1
latency_seconds_bucket{route="/a",le="0.5"} 3
latency_seconds_bucket{route="/a",le="+Inf"} 4
latency_seconds_sum{route="/a"} 2.25
latency_seconds_count{route="/a"} 4
# TYPE q summary
q{quantile="0.5"} 0.2
q{quantile="0.99"} 0.9
q_sum 3
q_count 10
"#;

    fn find<'a>(m: &'a [Metric], name: &str) -> &'a metric::Data {
        m.iter()
            .find(|m| m.name == name)
            .unwrap()
            .data
            .as_ref()
            .unwrap()
    }

    #[test]
    fn counters_gauges_histograms_and_summaries_convert() {
        let m = prometheus_text_to_otlp(TEXT, 10, 20);
        assert_eq!(m.len(), 4);
        let metric::Data::Sum(sum) = find(&m, "http_requests_total") else {
            panic!("counter is not a sum")
        };
        assert!(sum.is_monotonic);
        assert_eq!(sum.data_points.len(), 2);
        let get = |p: &NumberDataPoint, k: &str| {
            p.attributes
                .iter()
                .find(|a| a.key == k)
                .and_then(|a| match &a.value.as_ref()?.value {
                    Some(any_value::Value::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
        };
        let get_point = sum
            .data_points
            .iter()
            .find(|p| get(p, "method").as_deref() == Some("GET"))
            .unwrap();
        assert_eq!(get(get_point, "route").as_deref(), Some("/a \"b\""));
        assert_eq!(
            get_point.value,
            Some(number_data_point::Value::AsDouble(7.0))
        );
        assert_eq!(
            (get_point.start_time_unix_nano, get_point.time_unix_nano),
            (10, 20)
        );
        assert_eq!(
            m.iter()
                .find(|m| m.name == "http_requests_total")
                .unwrap()
                .description,
            "Requests served."
        );

        let metric::Data::Gauge(g) = find(&m, "in_flight") else {
            panic!()
        };
        assert_eq!(
            g.data_points[0].value,
            Some(number_data_point::Value::AsDouble(-1.5))
        );

        let metric::Data::Histogram(h) = find(&m, "latency_seconds") else {
            panic!()
        };
        let p = &h.data_points[0];
        assert_eq!(p.explicit_bounds, vec![0.1, 0.5]);
        assert_eq!(p.bucket_counts, vec![1, 2, 1]);
        assert_eq!((p.count, p.sum), (4, Some(2.25)));
        assert_eq!(p.attributes.len(), 1, "le is not an attribute");

        let metric::Data::Summary(s) = find(&m, "q") else {
            panic!()
        };
        assert_eq!(s.data_points[0].count, 10);
        assert_eq!(s.data_points[0].quantile_values.len(), 2);
    }

    #[test]
    fn unreadable_lines_and_untyped_samples_are_skipped() {
        let m = prometheus_text_to_otlp(
            "garbage{\nno_type 1\n# TYPE c counter\nc{a=\"x} 1\nc 2\n",
            0,
            1,
        );
        assert_eq!(m.len(), 1);
        let metric::Data::Sum(s) = m[0].data.as_ref().unwrap() else {
            panic!()
        };
        assert_eq!(s.data_points.len(), 1);
    }
}
