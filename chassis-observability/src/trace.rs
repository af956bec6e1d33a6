//! The OpenTelemetry tracer provider behind the `tracing` spans.
//!
//! [`build_tracer_provider`] builds an `SdkTracerProvider` with
//! - a parent-based (or plain) trace-id-ratio sampler from [`Sampling`],
//! - the resource: `service.name`, `service.version`, `deployment.environment` (and the newer
//!   `deployment.environment.name`), `service.instance.id`, the `telemetry.sdk.*` attributes and
//!   [`TracingConfig::resource_attributes`],
//! - when an endpoint is configured, an OTLP exporter (HTTP/protobuf over the *async* reqwest
//!   client, so no blocking client ever runs inside the runtime) behind the SDK's tokio batch
//!   processor (`span_processor_with_async_runtime::BatchSpanProcessor`; the default processor
//!   runs on its own thread, where the async client panics for lack of a reactor).
//!
//! The exporter's transports are crate features: `otlp-http` (HTTP/protobuf, on by default) and
//! `grpc` (tonic). With neither compiled in, export is off: an endpoint in the configuration is
//! refused with [`ErrorKind::TransportNotEnabled`] rather than silently ignored.
//!
//! Both transports reach `https://` endpoints with rustls and the ring provider, trusting
//! [`OtlpTlsConfig::ca_file`](crate::config::OtlpTlsConfig::ca_file) when set and otherwise the
//! platform's and Mozilla's roots, presenting the configured client certificate (mTLS), and send
//! [`TracingConfig::headers`] with every request (as gRPC metadata over gRPC). The TLS files are
//! read when the provider is built: a file that cannot be used is an [`ErrorKind::Tls`] error
//! then. The HTTP transport is the `opentelemetry-http` hyper client over a hyper-rustls
//! connector, not reqwest: reqwest's rustls features either compile in aws-lc-rs or, without a
//! provider, make every other reqwest client of the service panic unless one is installed.
//!
//! Without an endpoint the provider has no processor: spans still get ids, so logs correlate and
//! contexts propagate, but nothing leaves the process.
//!
//! # A missing or slow collector
//!
//! Ending a span never waits: a span goes into a bounded queue ([`TracingConfig::max_queue_size`])
//! or, when it is full, is dropped. Drops are counted ([`ExportStats::dropped`] and the
//! `otel_spans_dropped_total{reason="queue_full"}` counter); failed exports too
//! (`reason="export_failed"`). The SDK does not expose its drop count, so the queue bound is
//! enforced by a thin counting processor in front of the SDK's, whose own channel is made larger
//! so it never drops first. One warning is logged when dropping starts, one when exports start
//! failing and one (info) when they recover: no flood. The SDK's own internal logs, which would
//! repeat an error every batch, are silenced by the default filter (`opentelemetry=off`).
//!
//! ```
//! use chassis_core::ServiceInfo;
//! use chassis_observability::config::TracingConfig;
//! use chassis_observability::trace::build_tracer_provider;
//! use opentelemetry::trace::{Span as _, Tracer, TracerProvider};
//!
//! let (provider, _stats) = build_tracer_provider(&ServiceInfo::new("orders", "1.0.0"), &TracingConfig::default()).unwrap();
//! let tracer = provider.tracer("example");
//! let span = tracer.start("work");
//! assert!(span.span_context().is_valid()); // ids without any exporter
//! ```

// Without a transport the counting processor and exporter are never built.
#![cfg_attr(not(any(feature = "otlp-http", feature = "grpc")), allow(dead_code))]

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use chassis_core::ServiceInfo;
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};

use crate::config::{OtlpProtocol, Sampling, TracingConfig};
use crate::metrics::names;
use crate::{Error, ErrorKind};

/// Counters of the export pipeline, shared by the processor, the exporter and
/// [`Telemetry`](crate::Telemetry).
#[derive(Debug, Default)]
pub struct ExportStats {
    dropped: AtomicU64,
    exported: AtomicU64,
    queue_full_warned: AtomicBool,
    failing: AtomicBool,
}

impl ExportStats {
    /// Spans lost so far (queue full or export failed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Spans the collector accepted so far.
    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    fn record_dropped(&self, n: u64, reason: &'static str) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        ::metrics::counter!(names::OTEL_SPANS_DROPPED, names::labels::REASON => reason)
            .increment(n);
    }
}

/// The sampler for `sampling`.
pub fn sampler(sampling: &Sampling) -> Sampler {
    let root = if sampling.ratio >= 1.0 {
        Sampler::AlwaysOn
    } else if sampling.ratio <= 0.0 {
        Sampler::AlwaysOff
    } else {
        Sampler::TraceIdRatioBased(sampling.ratio)
    };
    if sampling.parent_based {
        Sampler::ParentBased(Box::new(root))
    } else {
        root
    }
}

/// The resource describing this service.
pub fn resource(service: &ServiceInfo, config: &TracingConfig) -> Resource {
    let mut attrs = vec![
        KeyValue::new("service.name", service.name.clone()),
        KeyValue::new("service.version", service.version.clone()),
        KeyValue::new("deployment.environment", service.environment.clone()),
        KeyValue::new("deployment.environment.name", service.environment.clone()),
        KeyValue::new("service.instance.id", service.instance_id.clone()),
    ];
    let identity = [
        "service.name",
        "service.version",
        "deployment.environment",
        "deployment.environment.name",
        "service.instance.id",
    ];
    attrs.extend(
        config
            .resource_attributes
            .iter()
            .filter(|(k, _)| !identity.contains(&k.as_str()))
            .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
    );
    Resource::builder_empty()
        .with_detector(Box::new(
            opentelemetry_sdk::resource::TelemetryResourceDetector,
        ))
        .with_attributes(attrs)
        .build()
}

/// Builds the tracer provider (see the [module docs](self)). With an endpoint configured this
/// must run inside a tokio runtime ([`ErrorKind::NoRuntime`] otherwise), the transport of
/// [`TracingConfig::protocol`] must be compiled in ([`ErrorKind::TransportNotEnabled`]
/// otherwise: crate features `otlp-http`, on by default, and `grpc`), and the TLS files of
/// [`TracingConfig::tls`] must be usable ([`ErrorKind::Tls`] otherwise).
pub fn build_tracer_provider(
    service: &ServiceInfo,
    config: &TracingConfig,
) -> Result<(SdkTracerProvider, Arc<ExportStats>), Error> {
    config.validate()?;
    let stats = Arc::new(ExportStats::default());
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(sampler(&config.sampling))
        .with_resource(resource(service, config));
    if let Some(endpoint) = config.resolved_traces_endpoint() {
        transport_enabled(config.protocol)?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(Error::new(ErrorKind::NoRuntime));
        }
        #[cfg(any(feature = "otlp-http", feature = "grpc"))]
        {
            builder = with_otlp_pipeline(builder, config, endpoint, &stats)?;
        }
        // No transport compiled in: `transport_enabled` refused every protocol above.
        #[cfg(not(any(feature = "otlp-http", feature = "grpc")))]
        let _ = (endpoint, &mut builder);
    }
    Ok((builder.build(), stats))
}

/// The crate feature that compiles in the transport of `protocol`, and whether it is on.
fn transport_feature(protocol: OtlpProtocol) -> (&'static str, bool) {
    match protocol {
        OtlpProtocol::HttpProtobuf => ("otlp-http", cfg!(feature = "otlp-http")),
        OtlpProtocol::Grpc => ("grpc", cfg!(feature = "grpc")),
    }
}

/// The error for OTLP export over `protocol` in a build without its transport.
pub(crate) fn transport_not_enabled(protocol: OtlpProtocol) -> Error {
    let (feature, _) = transport_feature(protocol);
    Error::new(ErrorKind::TransportNotEnabled { protocol, feature })
}

/// `Ok` when this build includes the transport of `protocol`.
fn transport_enabled(protocol: OtlpProtocol) -> Result<(), Error> {
    match transport_feature(protocol) {
        (_, true) => Ok(()),
        (_, false) => Err(transport_not_enabled(protocol)),
    }
}

/// The counting processor and the SDK's tokio batch processor around the OTLP exporter.
#[cfg(any(feature = "otlp-http", feature = "grpc"))]
fn with_otlp_pipeline(
    builder: opentelemetry_sdk::trace::TracerProviderBuilder,
    config: &TracingConfig,
    endpoint: String,
    stats: &Arc<ExportStats>,
) -> Result<opentelemetry_sdk::trace::TracerProviderBuilder, Error> {
    use opentelemetry_sdk::trace::BatchConfigBuilder;
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;

    let exporter = build_exporter(config, &endpoint)?;
    let pending = Arc::new(AtomicUsize::new(0));
    let batch = config.max_export_batch_size.min(config.max_queue_size);
    let inner = BatchSpanProcessor::builder(
        CountingExporter {
            inner: exporter,
            pending: Arc::clone(&pending),
            stats: Arc::clone(stats),
            endpoint,
        },
        opentelemetry_sdk::runtime::Tokio,
    )
    .with_batch_config(
        BatchConfigBuilder::default()
            // Room for our queue plus the batch the SDK task holds, so the SDK never drops
            // (it would not tell us): the bound is enforced by `CountingProcessor`.
            .with_max_queue_size(config.max_queue_size + batch)
            .with_max_export_batch_size(batch)
            .with_scheduled_delay(config.scheduled_delay)
            .with_max_export_timeout(config.export_timeout)
            .build(),
    )
    .build();
    Ok(builder.with_span_processor(CountingProcessor {
        inner,
        pending,
        limit: config.max_queue_size,
        stats: Arc::clone(stats),
    }))
}

#[cfg(any(feature = "otlp-http", feature = "grpc"))]
fn build_exporter(
    config: &TracingConfig,
    endpoint: &str,
) -> Result<opentelemetry_otlp::SpanExporter, Error> {
    use opentelemetry_otlp::WithExportConfig as _;
    let err = |e: opentelemetry_otlp::ExporterBuildError| {
        Error::with_source(
            ErrorKind::Exporter {
                reason: e.to_string(),
            },
            e,
        )
    };
    let https = endpoint
        .parse::<http::Uri>()
        .ok()
        .is_some_and(|u| u.scheme() == Some(&http::uri::Scheme::HTTPS));
    // Read (and checked) for either scheme, so a wrong path fails at init, not at the first
    // export after someone switches the endpoint to https.
    let tls = crate::tls::TlsMaterial::load(&config.tls, https)?;
    match config.protocol {
        #[cfg(feature = "otlp-http")]
        OtlpProtocol::HttpProtobuf => {
            use opentelemetry_otlp::WithHttpConfig as _;
            // hyper with rustls (ring) rather than opentelemetry-otlp's reqwest client: reqwest's
            // rustls features either force aws-lc-rs or leave every other reqwest client of the
            // service without a crypto provider (a panic in `Client::new`).
            let client = hyper_client(&tls, config.export_timeout)?;
            let headers = config
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.expose().clone()))
                .collect();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(endpoint)
                .with_timeout(config.export_timeout)
                .with_http_client(client)
                .with_headers(headers)
                .build()
                .map_err(err)
        }
        #[cfg(feature = "grpc")]
        OtlpProtocol::Grpc => {
            use opentelemetry_otlp::WithTonicConfig as _;
            use opentelemetry_otlp::tonic_types::metadata::MetadataMap;
            let mut headers = http::HeaderMap::with_capacity(config.headers.len());
            for (name, value) in &config.headers {
                // Checked by `TracingConfig::validate`.
                let name = http::HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
                    Error::with_source(
                        ErrorKind::InvalidConfig {
                            reason: format!("tracing.headers: {name:?} is not a valid header name"),
                        },
                        e,
                    )
                })?;
                let value = http::HeaderValue::from_str(value.expose()).map_err(|e| {
                    Error::with_source(
                        ErrorKind::InvalidConfig {
                            reason: format!(
                                "tracing.headers: the value of {name:?} is not a valid header value"
                            ),
                        },
                        e,
                    )
                })?;
                headers.append(name, value);
            }
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(config.export_timeout)
                .with_metadata(MetadataMap::from_headers(headers));
            if https {
                builder = builder.with_tls_config(tls.tonic_config());
            }
            builder.build().map_err(err)
        }
        // The protocol whose transport is left out (none when both features are on).
        #[allow(unreachable_patterns)]
        protocol => Err(transport_not_enabled(protocol)),
    }
}

/// The HTTP client of the OTLP/HTTP exporters (spans and metrics): hyper over a hyper-rustls
/// connector with the ring provider, for `http://` and `https://` endpoints.
#[cfg(feature = "otlp-http")]
pub(crate) fn hyper_client(
    tls: &crate::tls::TlsMaterial,
    timeout: Duration,
) -> Result<
    opentelemetry_http::hyper::HyperClient<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    >,
    Error,
> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls.client_config()?)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(opentelemetry_http::hyper::HyperClient::new(
        connector, timeout, None,
    ))
}

/// The OTLP metrics exporter of `config` (see [`crate::otlp_metrics`]), or `None` when the push
/// is off. Fails when the protocol's transport is not compiled in, the URL is invalid, there is
/// no tokio runtime, or the TLS files cannot be used.
#[cfg(any(feature = "otlp-http", feature = "grpc"))]
pub(crate) fn build_metrics_exporter(
    service: &ServiceInfo,
    config: &crate::TelemetryConfig,
    handle: crate::metrics::PrometheusHandle,
) -> Result<Option<crate::otlp_metrics::OtlpMetricsExporter>, Error> {
    use crate::otlp_metrics::Transport;
    let Some(url) = config.resolved_metrics_endpoint() else {
        return Ok(None);
    };
    let protocol = config.metrics_protocol();
    transport_enabled(protocol)?;
    // Both transports take `http://` and `https://` URLs only; `collector:4317` would parse as
    // an authority and fail at every export instead of here.
    let https = match url.parse::<http::Uri>() {
        Ok(u) if u.host().is_some() && u.scheme_str() == Some("https") => true,
        Ok(u) if u.host().is_some() && u.scheme_str() == Some("http") => false,
        _ => {
            return Err(Error::invalid_config(format!(
                "OTLP metrics endpoint {url:?} is not an http:// or https:// URL"
            )));
        }
    };
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::new(ErrorKind::NoRuntime));
    }
    let tls = crate::tls::TlsMaterial::load(&config.tracing.tls, https)?;
    let mut merged: std::collections::BTreeMap<String, &str> = config
        .tracing
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.expose().as_str()))
        .collect();
    merged.extend(
        config
            .metrics
            .otlp
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.expose().as_str())),
    );
    let mut headers = Vec::with_capacity(merged.len());
    for (name, value) in merged {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_str(value),
        ) else {
            // The value is usually a credential: name the header only.
            return Err(Error::invalid_config(format!(
                "metrics.otlp.headers / tracing.headers: header {name:?} is not a valid header"
            )));
        };
        headers.push((name, value));
    }
    let timeout = config.metrics.otlp.timeout;
    let transport = match protocol {
        #[cfg(feature = "otlp-http")]
        OtlpProtocol::HttpProtobuf => {
            Transport::http(Arc::new(hyper_client(&tls, timeout)?), headers)
        }
        #[cfg(feature = "grpc")]
        OtlpProtocol::Grpc => {
            Transport::grpc(&url, https.then(|| tls.tonic_config()), headers, timeout)?
        }
        // Checked by `transport_enabled` above (no arm left when both features are on).
        #[allow(unreachable_patterns)]
        protocol => return Err(transport_not_enabled(protocol)),
    };
    Ok(Some(crate::otlp_metrics::OtlpMetricsExporter::new(
        handle,
        transport,
        url,
        &resource(service, &config.tracing),
    )))
}

/// Bounds the export queue and counts what it drops (see the module docs).
struct CountingProcessor<P> {
    inner: P,
    pending: Arc<AtomicUsize>,
    limit: usize,
    stats: Arc<ExportStats>,
}

impl<P> fmt::Debug for CountingProcessor<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingProcessor")
            .field("pending", &self.pending.load(Ordering::Relaxed))
            .field("limit", &self.limit)
            .finish_non_exhaustive()
    }
}

impl<P: SpanProcessor> SpanProcessor for CountingProcessor<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.stats.record_dropped(1, "queue_full");
            if !self.stats.queue_full_warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    target: "chassis_observability::trace",
                    max_queue_size = self.limit,
                    "span export queue is full: dropping spans from now on, counted in otel_spans_dropped_total (no further warning)"
                );
            }
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Counts spans leaving the queue and failed exports; logs export failure once per outage.
struct CountingExporter<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
    stats: Arc<ExportStats>,
    endpoint: String,
}

impl<E> fmt::Debug for CountingExporter<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountingExporter")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// Counts a batch as failed unless told otherwise; also covers the SDK cancelling the export
/// future on its timeout (the future is dropped, never completes).
struct ExportOutcome<'a> {
    stats: &'a ExportStats,
    endpoint: &'a str,
    spans: u64,
    settled: bool,
}

impl ExportOutcome<'_> {
    fn settle(&mut self, result: &OTelSdkResult) {
        self.settled = true;
        match result {
            Ok(()) => {
                self.stats.exported.fetch_add(self.spans, Ordering::Relaxed);
                if self.stats.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        target: "chassis_observability::trace",
                        endpoint = self.endpoint,
                        "span export recovered"
                    );
                }
            }
            Err(e) => self.failed(Some(e)),
        }
    }

    fn failed(&self, error: Option<&opentelemetry_sdk::error::OTelSdkError>) {
        self.stats.record_dropped(self.spans, "export_failed");
        if !self.stats.failing.swap(true, Ordering::Relaxed) {
            let reason = error.map_or_else(|| "timed out".to_owned(), ToString::to_string);
            tracing::warn!(
                target: "chassis_observability::trace",
                endpoint = self.endpoint,
                error = %reason,
                "span export failing: spans are dropped and counted in otel_spans_dropped_total until the collector is back (no further warning)"
            );
        }
    }
}

impl Drop for ExportOutcome<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.failed(None);
        }
    }
}

impl<E: SpanExporter> SpanExporter for CountingExporter<E> {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        let spans = batch.len();
        // These spans have left the queue: make room for new ones.
        self.pending.fetch_sub(spans, Ordering::AcqRel);
        let export = self.inner.export(batch);
        async move {
            let mut outcome = ExportOutcome {
                stats: &self.stats,
                endpoint: &self.endpoint,
                spans: spans as u64,
                settled: false,
            };
            let result = export.await;
            outcome.settle(&result);
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::trace::{SamplingDecision, ShouldSample};

    fn decide(s: &Sampler, parent: Option<bool>, trace_id: u128) -> SamplingDecision {
        let cx = match parent {
            Some(sampled) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from(trace_id),
                SpanId::from(1u64),
                if sampled {
                    TraceFlags::SAMPLED
                } else {
                    TraceFlags::default()
                },
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        use opentelemetry::trace::TraceContextExt as _;
        s.should_sample(
            Some(&cx),
            TraceId::from(trace_id),
            "s",
            &SpanKind::Internal,
            &[],
            &[],
        )
        .decision
    }

    #[test]
    fn parent_based_ratio_follows_the_parent() {
        let s = sampler(&Sampling {
            parent_based: true,
            ratio: 0.0,
        });
        assert_eq!(decide(&s, None, 7), SamplingDecision::Drop);
        assert_eq!(decide(&s, Some(true), 7), SamplingDecision::RecordAndSample);
        let s = sampler(&Sampling {
            parent_based: false,
            ratio: 0.0,
        });
        assert_eq!(decide(&s, Some(true), 7), SamplingDecision::Drop);
        let s = sampler(&Sampling {
            parent_based: true,
            ratio: 1.0,
        });
        assert_eq!(decide(&s, Some(false), 7), SamplingDecision::Drop);
        assert_eq!(decide(&s, None, 7), SamplingDecision::RecordAndSample);
    }

    #[test]
    fn ratio_sampler_samples_about_the_ratio() {
        let s = sampler(&Sampling {
            parent_based: false,
            ratio: 0.25,
        });
        // Trace ids spread over the whole space: the ratio sampler compares the low 63 bits.
        let sampled = (0..4000u128)
            .map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
            .filter(|id| decide(&s, None, *id) == SamplingDecision::RecordAndSample)
            .count();
        assert!((800..1200).contains(&sampled), "{sampled}");
    }

    #[test]
    fn resource_carries_identity_and_extra_attributes() {
        let mut config = TracingConfig::default();
        config
            .resource_attributes
            .insert("cloud.region".into(), "eu-west-1".into());
        config
            .resource_attributes
            .insert("service.name".into(), "not-this".into());
        let r = resource(
            &ServiceInfo::new("orders", "1.2.0").environment("staging"),
            &config,
        );
        let get = |k: &'static str| {
            r.get(&opentelemetry::Key::from_static_str(k))
                .map(|v| v.to_string())
        };
        assert_eq!(get("service.name").as_deref(), Some("orders"));
        assert_eq!(get("service.version").as_deref(), Some("1.2.0"));
        assert_eq!(get("deployment.environment").as_deref(), Some("staging"));
        assert_eq!(get("cloud.region").as_deref(), Some("eu-west-1"));
        assert_eq!(get("telemetry.sdk.language").as_deref(), Some("rust"));
    }

    #[cfg(feature = "grpc")]
    // Multi-thread: dropping the last provider reference shuts it down, which waits for the
    // exporter task; that task needs a free worker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn grpc_exporter_builds_with_the_feature() {
        let config = TracingConfig {
            endpoint: Some("http://127.0.0.1:4317".into()),
            protocol: OtlpProtocol::Grpc,
            ..TracingConfig::default()
        };
        let (provider, _) = build_tracer_provider(&ServiceInfo::new("a", "1"), &config).unwrap();
        drop(provider);
    }

    /// The error building a tracer provider for `config` fails with, which says that
    /// `protocol`'s transport, the feature `feature`, is left out of this build.
    #[cfg(not(all(feature = "otlp-http", feature = "grpc")))]
    fn transport_not_enabled(
        config: &TracingConfig,
        protocol: OtlpProtocol,
        feature: &'static str,
    ) -> crate::Error {
        let err = build_tracer_provider(&ServiceInfo::new("a", "1"), config).unwrap_err();
        assert_eq!(
            err.kind(),
            &ErrorKind::TransportNotEnabled { protocol, feature }
        );
        err
    }

    #[cfg(not(feature = "grpc"))]
    #[tokio::test]
    async fn grpc_without_the_feature_is_a_typed_error() {
        let config = TracingConfig {
            endpoint: Some("http://127.0.0.1:4317".into()),
            protocol: OtlpProtocol::Grpc,
            ..TracingConfig::default()
        };
        let err = transport_not_enabled(&config, OtlpProtocol::Grpc, "grpc");
        assert!(err.to_string().contains("`grpc` feature"), "{err}");
    }

    #[cfg(not(feature = "otlp-http"))]
    #[tokio::test]
    async fn http_without_the_feature_is_a_typed_error() {
        let config = TracingConfig {
            endpoint: Some("http://127.0.0.1:4318".into()),
            ..TracingConfig::default()
        };
        transport_not_enabled(&config, OtlpProtocol::HttpProtobuf, "otlp-http");
        // Without an endpoint nothing is exported and nothing is refused.
        let config = TracingConfig::default();
        assert!(build_tracer_provider(&ServiceInfo::new("a", "1"), &config).is_ok());
    }

    // The metrics push over a protocol whose transport is left out of this build: a typed error
    // naming the feature (from `build_metrics_exporter`, or from telemetry init without any
    // transport).
    #[cfg(not(all(feature = "otlp-http", feature = "grpc")))]
    #[tokio::test]
    async fn metrics_push_without_its_transport_is_a_typed_error() {
        let protocol = if cfg!(feature = "otlp-http") {
            OtlpProtocol::Grpc
        } else {
            OtlpProtocol::HttpProtobuf
        };
        let mut config = crate::TelemetryConfig::default();
        config.metrics.otlp.enabled = true;
        config.metrics.otlp.endpoint = Some("http://127.0.0.1:4317".into());
        config.metrics.otlp.protocol = Some(protocol);
        let err = crate::Telemetry::builder(ServiceInfo::new("a", "1"))
            .ignore_env()
            .config(config)
            .make_writer(crate::logging::CaptureWriter::new())
            .build()
            .unwrap_err();
        let (feature, enabled) = transport_feature(protocol);
        assert!(!enabled);
        assert_eq!(
            err.kind(),
            &ErrorKind::TransportNotEnabled { protocol, feature }
        );
    }

    #[cfg(feature = "otlp-http")]
    #[test]
    fn export_needs_a_runtime() {
        let config = TracingConfig {
            endpoint: Some("http://127.0.0.1:1".into()),
            ..TracingConfig::default()
        };
        let err = build_tracer_provider(&ServiceInfo::new("a", "1"), &config).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::NoRuntime);
    }
}
