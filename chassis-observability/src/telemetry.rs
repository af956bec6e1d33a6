//! [`Telemetry::builder`]: logs, traces and metrics set up in one call.
//!
//! ```no_run
//! use std::time::Duration;
//! use chassis_core::ServiceInfo;
//! use chassis_observability::Telemetry;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), chassis_observability::Error> {
//! let telemetry = Telemetry::builder(ServiceInfo::from_env("orders", "1.2.0")).init()?;
//! tracing::info!("ready");
//! let metrics_text = telemetry.prometheus_handle().map(|h| h.render());
//! # let _ = metrics_text;
//! // ... serve; on SIGTERM, after draining:
//! telemetry.shutdown(Duration::from_secs(5)).await?;
//! # Ok(())
//! # }
//! ```
//!
//! For tests, [`TelemetryBuilder::build`] returns the subscriber as a [`Dispatch`] without
//! installing anything globally: use it with [`tracing::dispatcher::with_default`].

use std::io;
use std::sync::Arc;
use std::time::Duration;

use chassis_core::ServiceInfo;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::level_filters::LevelFilter;
use tracing::{Dispatch, Level};
use tracing_subscriber::filter::{FilterExt as _, Targets, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::{BoxMakeWriter, EitherWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogFormat, OtlpProtocol, OtlpTlsConfig, Sampling, TelemetryConfig};
use crate::logging::{BatchLineWriter, BatchWriter, BatchWriterGuard, JsonLayer, redacting_fields};
use crate::metrics::{PrometheusHandle, PrometheusRecorder};
use crate::redact::Secret;
use crate::trace::{ExportStats, build_tracer_provider};
use crate::{Error, ErrorKind};

enum Output {
    Stdout,
    NonBlocking(Box<dyn io::Write + Send + 'static>),
    Direct(BoxMakeWriter),
}

/// Configures and starts telemetry. Setters are consuming; each says its default.
pub struct TelemetryBuilder {
    service: ServiceInfo,
    config: TelemetryConfig,
    use_env: bool,
    output: Output,
    install_recorder: bool,
}

chassis_core::__debug_fields!(TelemetryBuilder {
    service,
    config,
    use_env
});

impl TelemetryBuilder {
    /// Replaces the whole configuration. Defaults to [`TelemetryConfig::default`].
    pub fn config(mut self, config: TelemetryConfig) -> Self {
        self.config = config;
        self
    }

    /// Log format. Defaults to JSON.
    pub fn log_format(mut self, format: LogFormat) -> Self {
        self.config.log.format = format;
        self
    }

    /// `RUST_LOG`-style filter directives. Defaults to `info`.
    pub fn log_filter(mut self, directives: impl Into<String>) -> Self {
        self.config.log.filter = directives.into();
        self
    }

    /// Whether JSON lines carry the fields of the spans they are logged in (see
    /// [`LogConfig::span_fields`](crate::config::LogConfig::span_fields)); `LOG_SPAN_FIELDS`
    /// wins. Defaults to `true`.
    pub fn log_span_fields(mut self, on: bool) -> Self {
        self.config.log.span_fields = on;
        self
    }

    /// OTLP collector base URL (`/v1/traces` is appended for HTTP). Defaults to none: no export.
    pub fn otlp_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.config.tracing.endpoint = Some(endpoint.into());
        self
    }

    /// OTLP protocol. Defaults to HTTP/protobuf.
    pub fn otlp_protocol(mut self, protocol: OtlpProtocol) -> Self {
        self.config.tracing.protocol = protocol;
        self
    }

    /// Adds a header sent with every export request (HTTP header or gRPC metadata), such as the
    /// collector's `authorization`; `OTEL_EXPORTER_OTLP_HEADERS` wins for the same name. Defaults
    /// to none.
    pub fn otlp_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.config
            .tracing
            .headers
            .insert(name.into(), Secret::new(value.into()));
        self
    }

    /// TLS of an `https://` collector: a CA bundle to trust instead of the default roots, a
    /// client certificate for mTLS (see [`OtlpTlsConfig`]). The `OTEL_EXPORTER_OTLP_*CERTIFICATE`
    /// and `*CLIENT_KEY` variables win. Defaults to the platform's and Mozilla's roots, no client
    /// certificate.
    pub fn otlp_tls(mut self, tls: OtlpTlsConfig) -> Self {
        self.config.tracing.tls = tls;
        self
    }

    /// Head sampling. Defaults to parent-based with ratio 1.0.
    pub fn sampling(mut self, sampling: Sampling) -> Self {
        self.config.tracing.sampling = sampling;
        self
    }

    /// Source location, thread and busy/idle time attributes on every span (see
    /// [`TracingConfig::span_details`](crate::config::TracingConfig::span_details)). Defaults to
    /// off.
    pub fn span_details(mut self, on: bool) -> Self {
        self.config.tracing.span_details = on;
        self
    }

    /// Adds a resource attribute. Defaults to none beyond the service identity.
    pub fn resource_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config
            .tracing
            .resource_attributes
            .insert(key.into(), value.into());
        self
    }

    /// Sentry error reporting (see [`SentryConfig`](crate::config::SentryConfig); used with the
    /// crate feature `sentry`). The `SENTRY_*` variables win. Defaults to no DSN: nothing is sent.
    pub fn sentry(mut self, sentry: crate::config::SentryConfig) -> Self {
        self.config.sentry = sentry;
        self
    }

    /// Histogram buckets for every histogram. Defaults to the OTel duration buckets (seconds).
    pub fn histogram_buckets(mut self, buckets: impl Into<Vec<f64>>) -> Self {
        self.config.metrics.buckets = buckets.into();
        self
    }

    /// Histogram buckets for one metric. Defaults to none.
    pub fn histogram_buckets_for(
        mut self,
        metric: impl Into<String>,
        buckets: impl Into<Vec<f64>>,
    ) -> Self {
        self.config
            .metrics
            .buckets_for_metric
            .insert(metric.into(), buckets.into());
        self
    }

    /// Whether [`init`](Self::init) installs the Prometheus recorder as the global `metrics`
    /// recorder. Defaults to `true` (when metrics are enabled).
    pub fn install_metrics_recorder(mut self, install: bool) -> Self {
        self.install_recorder = install;
        self
    }

    /// Do not read `LOG_FORMAT`, `RUST_LOG` and the `OTEL_*` variables. Defaults to reading them
    /// (they win over the configuration). One thing escapes this: opentelemetry-otlp's exporter
    /// reads `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS` (silently skipping malformed entries),
    /// `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` and `OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION`
    /// itself, whatever this builder says.
    pub fn ignore_env(mut self) -> Self {
        self.use_env = false;
        self
    }

    /// Log lines go to `writer` through the chassis [`BatchWriter`]: a bounded buffer written in
    /// batches by a background thread; a full buffer drops lines (counted in
    /// [`Telemetry::dropped_log_lines`] and `log_lines_dropped_total`) instead of blocking the
    /// service. Defaults to stdout, the same way.
    pub fn writer(mut self, writer: impl io::Write + Send + 'static) -> Self {
        self.output = Output::NonBlocking(Box::new(writer));
        self
    }

    /// Log lines are written synchronously through `make_writer`, one `write_all` per line
    /// (tests, benchmarks, or a writer that is already non-blocking). Defaults to stdout through
    /// the [`BatchWriter`].
    pub fn make_writer<M>(mut self, make_writer: M) -> Self
    where
        M: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    {
        self.output = Output::Direct(BoxMakeWriter::new(make_writer));
        self
    }

    /// Builds everything without touching global state: the subscriber as a [`Dispatch`] (use it
    /// with [`tracing::dispatcher::with_default`] or [`tracing::dispatcher::set_global_default`])
    /// and the [`Telemetry`]. The Prometheus recorder stays in it
    /// ([`Telemetry::metrics_recorder`]). With an OTLP endpoint, call it inside a tokio
    /// runtime.
    ///
    /// Fails with [`ErrorKind::InvalidConfig`] for an invalid setting or a malformed
    /// `OTEL_EXPORTER_OTLP_HEADERS`, and with [`ErrorKind::Tls`] for a TLS file (CA bundle, client
    /// certificate or key) that cannot be used; export failures later (collector down, TLS
    /// handshake refused) are not errors here: they are logged once and counted.
    pub fn build(self) -> Result<(Dispatch, Telemetry), Error> {
        let TelemetryBuilder {
            mut service,
            mut config,
            use_env,
            output,
            install_recorder: _,
        } = self;
        let warnings = if use_env {
            config.try_apply_env(|k| std::env::var(k).ok())?
        } else {
            Vec::new()
        };
        config.tracing.validate()?;
        resolve_identity(&mut service, &config);

        let (filter, filter_handle) =
            tracing_subscriber::reload::Layer::new(build_filter(&config.log.filter)?);
        let recorder = if config.metrics.enabled {
            Some(crate::metrics::build_recorder(&config.metrics)?)
        } else {
            None
        };
        #[cfg(any(feature = "otlp-http", feature = "grpc"))]
        let metrics_exporter = match &recorder {
            Some(recorder) => {
                crate::trace::build_metrics_exporter(&service, &config, recorder.handle())?
                    .map(Arc::new)
            }
            None => None,
        };
        #[cfg(not(any(feature = "otlp-http", feature = "grpc")))]
        if config.metrics.enabled && config.resolved_metrics_endpoint().is_some() {
            return Err(crate::trace::transport_not_enabled(
                config.metrics_protocol(),
            ));
        }
        // After the metrics exporter: a provider with a batch processor dropped because of a
        // later error would wait for its exporter task, which a current-thread runtime that is
        // busy here cannot run.
        let (provider, stats) = build_tracer_provider(&service, &config.tracing)?;
        let exporting = config.tracing.resolved_traces_endpoint().is_some();
        let mut warnings = warnings;
        if !config.metrics.enabled && config.resolved_metrics_endpoint().is_some() {
            warnings.push(
                "metrics.otlp / OTEL_METRICS_EXPORTER=otlp is set, but metrics are disabled \
                 (metrics.enabled = false): nothing is pushed"
                    .to_owned(),
            );
        }

        let (sink, log_writer) = match output {
            Output::Direct(w) => (LogSink::Direct(w), None),
            Output::Stdout => batch_writer(io::stdout(), &config.log)?,
            Output::NonBlocking(w) => batch_writer(w, &config.log)?,
        };
        let log_stats = match &sink {
            LogSink::Batch(w) => Some(w.clone()),
            LogSink::Direct(_) => None,
        };

        let mut dispatch_slot = None;
        let fmt_layer: Box<dyn Layer<Inner> + Send + Sync> = match config.log.format {
            LogFormat::Json => {
                let layer = match sink {
                    LogSink::Batch(w) => JsonLayer::batched(&service, w),
                    LogSink::Direct(w) => JsonLayer::new(&service, w),
                }
                .span_fields(config.log.span_fields);
                dispatch_slot = Some(layer.dispatch_slot());
                layer.boxed()
            }
            // Not `fmt::format::Pretty`: it records event fields with its own visitor, bypassing
            // `fmt_fields`, so field-name redaction would not apply. The full format with source
            // locations is the readable development format that honours it.
            LogFormat::Pretty => tracing_subscriber::fmt::layer()
                .with_file(true)
                .with_line_number(true)
                .with_thread_names(true)
                .fmt_fields(redacting_fields())
                .with_ansi(config.log.ansi)
                .with_writer(sink)
                .boxed(),
            LogFormat::Compact => tracing_subscriber::fmt::layer()
                .compact()
                .fmt_fields(redacting_fields())
                .with_ansi(config.log.ansi)
                .with_writer(sink)
                .boxed(),
        };
        // Events below WARN do not reach the OpenTelemetry layer. It turns every event inside a
        // span into a span event (a name, attributes, a timestamp: several allocations, plus a
        // lock on the span's data), which at one access-log line per request cost as much as
        // the line itself, and the info-level lines are in the log anyway, correlated by trace
        // id. Warnings and errors still become span events, and an ERROR event still marks its
        // span as failed. Spans themselves pass at every level. The level test comes first: an
        // info event is then turned away without matching its target against the list below.
        // (The price of a per-layer filter that turns callsites away: every event of the
        // subscriber goes through `enabled` on each filter. Keeping the callsite interest at
        // "always" and deciding in `Filter::event_enabled` instead trips a debug assertion of
        // tracing-subscriber 0.3.23's per-layer filter state.)
        let span_events = filter_fn(|meta| meta.is_span() || *meta.level() <= Level::WARN);
        let details = config.tracing.span_details;
        let otel_layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("chassis"))
            .with_location(details)
            .with_threads(details)
            .with_tracked_inactivity(details)
            // The exporter's own HTTP stack must not produce spans: they would be exported in
            // turn, a feedback loop.
            .with_filter(
                span_events.and(
                    Targets::new()
                        .with_default(LevelFilter::TRACE)
                        .with_target("hyper", LevelFilter::OFF)
                        .with_target("hyper_util", LevelFilter::OFF)
                        .with_target("h2", LevelFilter::OFF)
                        .with_target("reqwest", LevelFilter::OFF)
                        .with_target("tonic", LevelFilter::OFF)
                        .with_target("opentelemetry", LevelFilter::OFF)
                        .with_target("opentelemetry_sdk", LevelFilter::OFF)
                        .with_target("opentelemetry-otlp", LevelFilter::OFF)
                        .with_target("opentelemetry_otlp", LevelFilter::OFF),
                ),
            )
            .boxed();

        #[cfg_attr(not(feature = "sentry"), allow(unused_mut))]
        let mut layers = vec![otel_layer, fmt_layer];
        // Sentry (feature `sentry`): a layer of its own, and a handle `Telemetry` flushes last.
        #[cfg(feature = "sentry")]
        let sentry = crate::sentry::start(&service, &config.sentry)?.map(|(layer, handle)| {
            layers.push(layer);
            handle
        });
        #[cfg(not(feature = "sentry"))]
        let warnings = {
            let mut warnings = warnings;
            if config.sentry.is_enabled() {
                warnings.push(
                    "SENTRY_DSN / sentry.dsn is set, but chassis-observability was built without \
                     its `sentry` feature: nothing is sent to Sentry"
                        .to_owned(),
                );
            }
            warnings
        };

        let subscriber = Registry::default().with(filter).with(layers);
        let dispatch = Dispatch::new(subscriber);
        if let Some(slot) = dispatch_slot {
            let _ = slot.set(dispatch.downgrade());
        }

        let prometheus = recorder.as_ref().map(PrometheusRecorder::handle);
        let upkeep = prometheus.clone().and_then(|handle| {
            let rt = tokio::runtime::Handle::try_current().ok()?;
            Some(rt.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    handle.run_upkeep();
                }
            }))
        });

        #[cfg(any(feature = "otlp-http", feature = "grpc"))]
        let metrics_export = metrics_exporter.map(|exporter| {
            let task = Arc::clone(&exporter).spawn(config.metrics.otlp.interval);
            (exporter, task)
        });

        Ok((
            dispatch,
            Telemetry {
                service,
                log_level: crate::log_level::LogLevelHandle::new(filter_handle),
                #[cfg(any(feature = "otlp-http", feature = "grpc"))]
                metrics_export,
                provider,
                stats,
                exporting,
                prometheus,
                recorder,
                upkeep,
                log_writer,
                log_stats,
                warnings,
                #[cfg(feature = "sentry")]
                sentry,
                done: false,
            },
        ))
    }

    /// Builds everything and installs it process-wide: the global `tracing` subscriber (plus the
    /// `log` bridge), the global OpenTelemetry tracer provider and propagator (W3C Trace Context +
    /// Baggage), and, unless disabled, the global `metrics` recorder. Keep the returned
    /// [`Telemetry`] alive; call [`Telemetry::shutdown`] at the end.
    ///
    /// Fails with [`ErrorKind::GlobalSubscriberExists`] / [`ErrorKind::GlobalRecorderExists`]
    /// (changing nothing) when another subscriber/recorder is installed, so it is safe in tests.
    pub fn init(self) -> Result<Telemetry, Error> {
        use tracing_subscriber::util::SubscriberInitExt as _;
        if tracing::dispatcher::has_been_set() {
            return Err(Error::new(ErrorKind::GlobalSubscriberExists));
        }
        let install_recorder = self.install_recorder;
        let (dispatch, mut guard) = self.build()?;
        if install_recorder && let Some(recorder) = guard.recorder.take() {
            ::metrics::set_global_recorder(recorder)
                .map_err(|e| Error::with_source(ErrorKind::GlobalRecorderExists, e))?;
            crate::metrics::describe_all();
            // Registered now, so the series exists (at 0) before a line is ever dropped; the
            // writer thread keeps it up to date.
            ::metrics::counter!(crate::metrics::names::LOG_LINES_DROPPED)
                .absolute(guard.dropped_log_lines());
            // Likewise the dropped spans, one series per reason, when spans are exported.
            if guard.exporting {
                crate::metrics::names::preregister(crate::metrics::names::OTEL_SPANS_DROPPED, &[]);
            }
        }
        if let Err(e) = dispatch.try_init() {
            // `try_init` sets the subscriber first, then the `log` bridge: if the subscriber is
            // ours now, only the bridge failed (another `log` logger exists), which is harmless.
            if !tracing::dispatcher::has_been_set() {
                return Err(Error::with_source(ErrorKind::GlobalSubscriberExists, e));
            }
        }
        opentelemetry::global::set_tracer_provider(guard.provider.clone());
        opentelemetry::global::set_text_map_propagator(crate::propagation::text_map_propagator());
        for warning in std::mem::take(&mut guard.warnings) {
            tracing::warn!(target: "chassis_observability", "{warning}");
        }
        tracing::debug!(
            target: "chassis_observability",
            exporting = guard.exporting,
            "telemetry initialised"
        );
        Ok(guard)
    }
}

type Inner = tracing_subscriber::layer::Layered<
    tracing_subscriber::reload::Layer<EnvFilter, Registry>,
    Registry,
>;

/// Where log lines go: the batching writer, or a caller's `MakeWriter` called synchronously.
enum LogSink {
    Batch(BatchWriter),
    Direct(BoxMakeWriter),
}

impl<'a> MakeWriter<'a> for LogSink {
    type Writer = EitherWriter<BatchLineWriter<'a>, <BoxMakeWriter as MakeWriter<'a>>::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        match self {
            Self::Batch(w) => EitherWriter::A(w.make_writer()),
            Self::Direct(w) => EitherWriter::B(w.make_writer()),
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        match self {
            Self::Batch(w) => EitherWriter::A(w.make_writer()),
            Self::Direct(w) => EitherWriter::B(w.make_writer_for(meta)),
        }
    }
}

fn batch_writer<W: io::Write + Send + 'static>(
    output: W,
    config: &LogConfig,
) -> Result<(LogSink, Option<BatchWriterGuard>), Error> {
    let (writer, guard) = BatchWriter::builder()
        .lines_limit(config.buffered_lines_limit)
        .bytes_limit(config.buffered_bytes_limit)
        .interval(config.flush_interval)
        .spawn(output)
        .map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig {
                    reason: format!("cannot start the log writer thread: {e}"),
                },
                e,
            )
        })?;
    Ok((LogSink::Batch(writer), Some(guard)))
}

/// The filter: the configured directives plus `opentelemetry=off` (unless the directives mention
/// opentelemetry), because the SDK logs an error per failed batch, which would flood the log while
/// a collector is down; the chassis logs one warning instead.
pub(crate) fn build_filter(directives: &str) -> Result<EnvFilter, Error> {
    let mut directives = directives.trim().to_owned();
    if !directives.contains("opentelemetry") {
        if !directives.is_empty() {
            directives.push(',');
        }
        directives.push_str("opentelemetry=off");
    }
    EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse(&directives)
        .map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig {
                    reason: format!("log filter {directives:?}: {e}"),
                },
                e,
            )
        })
}

/// Resource attributes (including `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`) override the
/// identity given in code, so logs and traces agree on who is speaking.
fn resolve_identity(service: &mut ServiceInfo, config: &TelemetryConfig) {
    let attrs = &config.tracing.resource_attributes;
    if let Some(v) = attrs.get("service.name") {
        service.name.clone_from(v);
    }
    if let Some(v) = attrs.get("service.version") {
        service.version.clone_from(v);
    }
    if let Some(v) = attrs
        .get("deployment.environment.name")
        .or_else(|| attrs.get("deployment.environment"))
    {
        service.environment.clone_from(v);
    }
    if let Some(v) = attrs.get("service.instance.id") {
        service.instance_id.clone_from(v);
    }
}

/// Running telemetry, started with [`Telemetry::builder`]`(..).init()`; flushes it on
/// [`shutdown`](Self::shutdown) or, best effort, on drop.
///
/// Dropping it writes the buffered log lines (waiting at most 2 s) and tries to flush spans for
/// at most 2 s on a helper thread (not at all when dropped on a current-thread runtime, where waiting would
/// deadlock the exporter task). Prefer `shutdown(deadline).await`.
pub struct Telemetry {
    service: ServiceInfo,
    log_level: crate::log_level::LogLevelHandle,
    #[cfg(any(feature = "otlp-http", feature = "grpc"))]
    metrics_export: Option<(
        Arc<crate::otlp_metrics::OtlpMetricsExporter>,
        tokio::task::JoinHandle<()>,
    )>,
    provider: SdkTracerProvider,
    stats: Arc<ExportStats>,
    exporting: bool,
    prometheus: Option<PrometheusHandle>,
    recorder: Option<PrometheusRecorder>,
    upkeep: Option<tokio::task::JoinHandle<()>>,
    log_writer: Option<BatchWriterGuard>,
    log_stats: Option<BatchWriter>,
    warnings: Vec<String>,
    #[cfg(feature = "sentry")]
    sentry: Option<crate::sentry::SentryHandle>,
    done: bool,
}

chassis_core::__debug_fields!(Telemetry {
    service,
    exporting,
    stats
});

impl Telemetry {
    /// A builder for the given service, with [`TelemetryConfig::default`] and the environment
    /// read at build time; its [`init`](TelemetryBuilder::init) returns the running
    /// [`Telemetry`].
    pub fn builder(service: ServiceInfo) -> TelemetryBuilder {
        TelemetryBuilder {
            service,
            config: TelemetryConfig::default(),
            use_env: true,
            output: Output::Stdout,
            install_recorder: true,
        }
    }

    /// The service identity in effect (after `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`).
    pub fn service(&self) -> &ServiceInfo {
        &self.service
    }

    /// Renders the Prometheus text exposition (`handle.render()`); `None` when metrics are
    /// disabled.
    pub fn prometheus_handle(&self) -> Option<PrometheusHandle> {
        self.prometheus.clone()
    }

    /// The Prometheus recorder when it was not installed globally (after
    /// [`TelemetryBuilder::build`], or `init` with `install_metrics_recorder(false)`): record into
    /// it with [`metrics::with_local_recorder`] or install it
    /// yourself.
    pub fn metrics_recorder(&self) -> Option<&PrometheusRecorder> {
        self.recorder.as_ref()
    }

    /// Takes the not-installed recorder out of the telemetry (see [`metrics_recorder`](Self::metrics_recorder)).
    pub fn take_metrics_recorder(&mut self) -> Option<PrometheusRecorder> {
        self.recorder.take()
    }

    /// The OTLP metrics push, when enabled (see [`crate::otlp_metrics`]): its
    /// [`export`](crate::otlp_metrics::OtlpMetricsExporter::export) pushes a snapshot now.
    #[cfg(any(feature = "otlp-http", feature = "grpc"))]
    #[cfg_attr(docsrs, doc(cfg(any(feature = "otlp-http", feature = "grpc"))))]
    pub fn metrics_exporter(&self) -> Option<&crate::otlp_metrics::OtlpMetricsExporter> {
        self.metrics_export.as_ref().map(|(e, _)| &**e)
    }

    /// The filter in effect (see [`crate::log_level`]).
    pub fn log_level(&self) -> String {
        self.log_level.log_level()
    }

    /// Replaces the log filter at run time; an invalid directive is an
    /// [`ErrorKind::InvalidConfig`] error and the old filter stays (see [`crate::log_level`]).
    pub fn set_log_level(&self, directives: &str) -> Result<(), Error> {
        self.log_level.set_log_level(directives)
    }

    /// A cloneable handle reading and replacing the log filter, for an admin endpoint that
    /// outlives borrows of the [`Telemetry`].
    pub fn log_level_handle(&self) -> crate::log_level::LogLevelHandle {
        self.log_level.clone()
    }

    /// The OpenTelemetry tracer provider.
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Whether spans are exported (an OTLP endpoint is configured).
    pub fn is_exporting(&self) -> bool {
        self.exporting
    }

    /// Spans lost so far (queue full or failed export); also in `otel_spans_dropped_total`.
    pub fn dropped_spans(&self) -> u64 {
        self.stats.dropped()
    }

    /// The export counters, shared: they stay readable after [`shutdown`](Self::shutdown).
    pub fn export_stats(&self) -> Arc<ExportStats> {
        Arc::clone(&self.stats)
    }

    /// Spans the collector accepted so far.
    pub fn exported_spans(&self) -> u64 {
        self.stats.exported()
    }

    /// Log lines dropped so far because the log writer's buffer was full (or the output failed);
    /// also in `log_lines_dropped_total`. Always 0 with [`TelemetryBuilder::make_writer`], which writes
    /// synchronously.
    pub fn dropped_log_lines(&self) -> u64 {
        self.log_stats
            .as_ref()
            .map_or(0, BatchWriter::dropped_lines)
    }

    /// Waits until every log line logged before the call has been written, at most `timeout`;
    /// returns whether it got there (always `true` with a synchronous writer).
    pub fn flush_logs(&self, timeout: Duration) -> bool {
        self.log_stats
            .as_ref()
            .is_none_or(|w| w.flush_timeout(timeout))
    }

    /// The Sentry hub and client, when a DSN is configured (see [`crate::sentry`]).
    #[cfg(feature = "sentry")]
    #[cfg_attr(docsrs, doc(cfg(feature = "sentry")))]
    pub fn sentry(&self) -> Option<&crate::sentry::SentryHandle> {
        self.sentry.as_ref()
    }

    /// Warnings about ignored environment variables (already logged by `init`).
    pub fn config_warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Exports the queued spans now, waiting at most `deadline`.
    pub async fn force_flush(&self, deadline: Duration) -> Result<(), Error> {
        let provider = self.provider.clone();
        run_blocking(deadline, move || provider.force_flush()).await
    }

    /// Flushes and stops: queued spans are exported (within `deadline`), the exporter is shut
    /// down, buffered log lines are written. Returns [`ErrorKind::ShutdownTimedOut`] when the
    /// deadline passed first (spans still queued are lost; the service can exit anyway). In a
    /// service run by [`App`](chassis_core::lifecycle::App), register it as a component
    /// instead: the app flushes it last.
    pub async fn shutdown(mut self, deadline: Duration) -> Result<(), Error> {
        self.close(deadline).await
    }

    /// [`shutdown`](Self::shutdown) in place, for the lifecycle component; a second call does
    /// nothing.
    async fn close(&mut self, deadline: Duration) -> Result<(), Error> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        if let Some(task) = self.upkeep.take() {
            task.abort();
        }
        let started = std::time::Instant::now();
        #[cfg(any(feature = "otlp-http", feature = "grpc"))]
        if let Some((exporter, task)) = self.metrics_export.take() {
            // The last values, so a short-lived process still reports; bounded by the deadline.
            task.abort();
            let _ = tokio::time::timeout(deadline, exporter.export_logged()).await;
        }
        let provider = self.provider.clone();
        let result = run_blocking(deadline, move || provider.shutdown()).await;
        let dropped = self.stats.dropped();
        if dropped > 0 {
            tracing::warn!(
                target: "chassis_observability",
                dropped_spans = dropped,
                "spans were dropped during this run (see otel_spans_dropped_total)"
            );
        }
        let dropped_lines = self.dropped_log_lines();
        if dropped_lines > 0 {
            tracing::warn!(
                target: "chassis_observability",
                dropped_lines,
                "log lines were dropped during this run (see log_lines_dropped_total)"
            );
        }
        #[cfg(feature = "sentry")]
        if let Some(sentry) = self.sentry.take() {
            // Queued error events are sent with what is left of the deadline (at least half a
            // second, as the spans may have used it all).
            let left = deadline
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(500));
            let _ = tokio::task::spawn_blocking(move || sentry.close(left)).await;
        }
        if let Some(log_writer) = self.log_writer.take() {
            // The log lines go last, so the shutdown's own lines are in. Writing what is
            // buffered normally takes microseconds; a stuck output gets what is left of the
            // deadline, and at least half a second, as the spans may have used it all.
            let left = deadline
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(500));
            let _ = tokio::task::spawn_blocking(move || log_writer.shutdown(left)).await;
        }
        result
    }
}

/// The telemetry pipeline as a lifecycle component: nothing to start (it runs from
/// [`TelemetryBuilder::init`]), flushed and stopped in
/// [`Stage::Telemetry`](chassis_core::lifecycle::Stage::Telemetry), the last stage, so the
/// shutdown's own logs and spans are exported.
impl chassis_core::lifecycle::Component for Telemetry {
    fn name(&self) -> &str {
        "telemetry"
    }

    fn stage(&self) -> chassis_core::lifecycle::Stage {
        chassis_core::lifecycle::Stage::Telemetry
    }

    fn start(
        &mut self,
        _ctx: chassis_core::lifecycle::Context,
    ) -> chassis_core::health::BoxFuture<'_, Result<(), chassis_core::BoxError>> {
        Box::pin(async { Ok(()) })
    }

    fn stop(
        &mut self,
        deadline: Duration,
    ) -> chassis_core::health::BoxFuture<'_, Result<(), chassis_core::BoxError>> {
        Box::pin(async move { self.close(deadline).await.map_err(Into::into) })
    }
}

/// Runs a blocking SDK call (they `block_on` a reply from the exporter task) off the runtime's
/// threads, bounded by `deadline`.
async fn run_blocking(
    deadline: Duration,
    f: impl FnOnce() -> opentelemetry_sdk::error::OTelSdkResult + Send + 'static,
) -> Result<(), Error> {
    match tokio::time::timeout(deadline, tokio::task::spawn_blocking(f)).await {
        Err(_) => Err(Error::new(ErrorKind::ShutdownTimedOut { after: deadline })),
        Ok(Err(join)) => Err(Error::with_source(
            ErrorKind::Shutdown {
                reason: join.to_string(),
            },
            join,
        )),
        Ok(Ok(Err(sdk))) => Err(Error::with_source(
            ErrorKind::Shutdown {
                reason: sdk.to_string(),
            },
            sdk,
        )),
        Ok(Ok(Ok(()))) => Ok(()),
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if let Some(task) = self.upkeep.take() {
            task.abort();
        }
        #[cfg(any(feature = "otlp-http", feature = "grpc"))]
        if let Some((_, task)) = self.metrics_export.take() {
            task.abort();
        }
        if self.exporting {
            let provider = self.provider.clone();
            let (tx, rx) = std::sync::mpsc::channel();
            let spawned = std::thread::Builder::new()
                .name("chassis-otel-flush".into())
                .spawn(move || {
                    let _ = tx.send(provider.shutdown());
                });
            let current_thread = tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread);
            if spawned.is_ok() && !current_thread {
                let _ = rx.recv_timeout(Duration::from_secs(2));
            }
        }
        #[cfg(feature = "sentry")]
        if let Some(sentry) = self.sentry.take() {
            // Its transport runs on a thread of its own: waiting cannot deadlock a runtime.
            sentry.close(Duration::from_secs(2));
        }
        // `log_writer` drops after this, writing the buffered lines (waiting at most 2 s).
    }
}
