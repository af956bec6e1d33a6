//! Telemetry configuration: what a file or the environment can tune.
//!
//! [`TelemetryConfig`] is `Deserialize` (every field has a default), and
//! [`TelemetryConfig::apply_env`] overlays the standard variables:
//!
//! | variable | effect |
//! |---|---|
//! | `LOG_FORMAT` | `json`, `pretty` or `compact` ([`LogConfig::format`]) |
//! | `RUST_LOG` | the [`EnvFilter`](tracing_subscriber::EnvFilter) directives ([`LogConfig::filter`]) |
//! | `LOG_SPAN_FIELDS` | `true`/`false`: whether JSON lines carry their spans' fields ([`LogConfig::span_fields`]) |
//! | `OTEL_SERVICE_NAME` | `service.name` (wins over `OTEL_RESOURCE_ATTRIBUTES`) |
//! | `OTEL_RESOURCE_ATTRIBUTES` | `k=v,k2=v2` (percent-encoded values) merged into the resource |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | collector base URL; `/v1/traces` is appended for HTTP |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | full traces URL, used as is |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` / `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` | `http/protobuf` or `grpc` (with the `grpc` feature); `http/json` is refused by `init` |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT` / `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` | timeout of one span export, ms ([`TracingConfig::export_timeout`]; wins over `OTEL_BSP_EXPORT_TIMEOUT`) |
//! | `OTEL_METRICS_EXPORTER` | `otlp` also pushes the metrics over OTLP ([`OtlpMetricsConfig::enabled`]); `none` / `prometheus` (the default) serve Prometheus only |
//! | `OTEL_EXPORTER_OTLP_METRICS_ENDPOINT` | full metrics URL ([`OtlpMetricsConfig::endpoint`]); else `OTEL_EXPORTER_OTLP_ENDPOINT`, plus `/v1/metrics` over HTTP, as is over gRPC |
//! | `OTEL_EXPORTER_OTLP_METRICS_HEADERS` | headers of the metrics push, else `OTEL_EXPORTER_OTLP_HEADERS` ([`OtlpMetricsConfig::headers`], over [`TracingConfig::headers`]) |
//! | `OTEL_EXPORTER_OTLP_METRICS_PROTOCOL` | protocol of the metrics push, else `OTEL_EXPORTER_OTLP_PROTOCOL`: `http/protobuf` or `grpc` (with the `grpc` feature); `http/json` is refused by `init` |
//! | `OTEL_EXPORTER_OTLP_METRICS_TIMEOUT` | timeout of one metrics push, ms, else `OTEL_EXPORTER_OTLP_TIMEOUT` ([`OtlpMetricsConfig::timeout`]) |
//! | `OTEL_METRIC_EXPORT_INTERVAL` | time between two metrics pushes, ms ([`OtlpMetricsConfig::interval`], default 60000) |
//! | `OTEL_EXPORTER_OTLP_HEADERS` / `OTEL_EXPORTER_OTLP_TRACES_HEADERS` | `k=v,k2=v2` (percent-encoded values) sent with every export ([`TracingConfig::headers`]) |
//! | `OTEL_EXPORTER_OTLP_CERTIFICATE` / `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` | PEM file of the CA(s) trusted for the collector ([`OtlpTlsConfig::ca_file`]) |
//! | `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` / `OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE` | PEM client certificate chain for mTLS ([`OtlpTlsConfig::cert_file`]) |
//! | `OTEL_EXPORTER_OTLP_CLIENT_KEY` / `OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY` | PEM private key of that certificate ([`OtlpTlsConfig::key_file`]) |
//! | `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` | `always_on`, `always_off`, `traceidratio`, `parentbased_always_on`, `parentbased_always_off`, `parentbased_traceidratio` with the ratio |
//! | `OTEL_TRACES_EXPORTER` | `none` disables export (`otlp` is the only other value) |
//! | `OTEL_SDK_DISABLED` | `true` disables export (spans and the metrics push) |
//! | `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_EXPORT_TIMEOUT` | batch processor settings (delays in ms) |
//! | `SENTRY_DSN` | the Sentry project's DSN ([`SentryConfig::dsn`]); unset, nothing goes to Sentry |
//! | `SENTRY_ENVIRONMENT` | Sentry's `environment` ([`SentryConfig::environment`]; defaults to the service's `deployment.environment`) |
//! | `SENTRY_RELEASE` | Sentry's `release` ([`SentryConfig::release`]; defaults to `name@version`) |
//! | `SENTRY_SAMPLE_RATE` | fraction of error events sent, `0.0..=1.0` ([`SentryConfig::sample_rate`]) |
//!
//! Environment values win over the file; of a generic and a signal-specific variable
//! (`OTEL_EXPORTER_OTLP_X` and `OTEL_EXPORTER_OTLP_TRACES_X`), the specific one wins. As the
//! OpenTelemetry specification asks, an invalid variable is not fatal: it is ignored and reported
//! once as a warning after the subscriber is up ([`TelemetryConfig::apply_env`] returns the
//! warnings). The exceptions are the export headers and TLS files, which usually carry the
//! collector's credentials: exporting without them would only collect rejections, so
//! [`TelemetryConfig::try_apply_env`] (what [`init`](crate::TelemetryBuilder::init) uses) fails on
//! a malformed `OTEL_EXPORTER_OTLP_HEADERS`, and a TLS file that cannot be read or holds no usable
//! PEM fails `init` with [`ErrorKind::Tls`](crate::ErrorKind::Tls) naming the file and setting.
//!
//! # TLS
//!
//! An `https://` endpoint is reached over TLS (rustls with the ring provider) with either
//! transport. The collector's certificate is verified against [`OtlpTlsConfig::ca_file`] when it
//! is set (only those CAs are trusted), otherwise against the platform's trust store together
//! with Mozilla's root programme (webpki-roots), so a public CA works in a minimal container image
//! too. [`OtlpTlsConfig::cert_file`] and [`key_file`](OtlpTlsConfig::key_file) present a client
//! certificate to a collector that asks for one (mTLS). For an `http://` endpoint the TLS
//! settings are still checked at `init` but not used.
//!
//! ```
//! use chassis_observability::config::{LogFormat, TelemetryConfig};
//! let mut config: TelemetryConfig = serde_json::from_str(r#"{
//!     "log": { "format": "pretty", "filter": "info,sqlx=warn" },
//!     "tracing": { "endpoint": "http://otel-collector:4318", "sampling": { "ratio": 0.25 } }
//! }"#).unwrap();
//! assert_eq!(config.log.format, LogFormat::Pretty);
//!
//! let env = [("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.5")];
//! let warnings = config.apply_env(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()));
//! assert!(warnings.is_empty());
//! assert_eq!(config.tracing.sampling.ratio, 0.5);
//! assert!(!config.tracing.sampling.parent_based);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::Error;
use crate::redact::Secret;

/// Everything telemetry can be configured with.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Logging.
    pub log: LogConfig,
    /// Tracing and OTLP export.
    pub tracing: TracingConfig,
    /// Prometheus metrics.
    pub metrics: MetricsConfig,
    /// Sentry error reporting (used with the crate feature `sentry`).
    pub sentry: SentryConfig,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for production. The default.
    #[default]
    Json,
    /// Human-readable with source locations, thread names and the span stack, for development.
    Pretty,
    /// One human-readable line per event.
    Compact,
}

impl FromStr for LogFormat {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "pretty" => Ok(Self::Pretty),
            "compact" | "text" => Ok(Self::Compact),
            other => Err(Error::invalid_config(format!(
                "log format {other:?}: expected json, pretty or compact"
            ))),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Json => "json",
            Self::Pretty => "pretty",
            Self::Compact => "compact",
        })
    }
}

/// Logging settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Output format. Defaults to [`LogFormat::Json`].
    pub format: LogFormat,
    /// `RUST_LOG`-style directives. Defaults to `info`.
    pub filter: String,
    /// Whether pretty/compact output uses ANSI colours. Defaults to `false`.
    pub ansi: bool,
    /// Capacity, in lines, of the log writer's buffer (the lines written but not yet handed to
    /// the output); lines beyond it are dropped and counted (`log_lines_dropped_total`) rather than
    /// blocking the service. Defaults to 128 000.
    pub buffered_lines_limit: usize,
    /// Capacity, in bytes, of the same buffer; whichever limit is reached first drops lines.
    /// Defaults to 16 MiB.
    pub buffered_bytes_limit: usize,
    /// How long the log writer gathers lines into one batch (one write to the output) before
    /// writing them: the most a line waits when the output keeps up. Defaults to 5 ms.
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    /// Whether each JSON line carries the fields of the spans it is logged in (the request id,
    /// the route, ...), formatted once per span (see
    /// [`JsonLayer::span_fields`](crate::logging::JsonLayer::span_fields)). Defaults to `true`:
    /// a line that can be read without its trace is worth the few hundred nanoseconds per span.
    pub span_fields: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            filter: "info".to_owned(),
            ansi: false,
            buffered_lines_limit: 128_000,
            buffered_bytes_limit: 16 << 20,
            flush_interval: Duration::from_millis(5),
            span_fields: true,
        }
    }
}

/// OTLP wire protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP (port 4318, path `/v1/traces`). The default. Needs the crate feature
    /// `otlp-http` (on by default).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// gRPC (port 4317). Needs the crate feature `grpc`.
    #[serde(rename = "grpc")]
    Grpc,
}

impl OtlpProtocol {
    /// The protocol's name as `OTEL_EXPORTER_OTLP_PROTOCOL` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HttpProtobuf => "http/protobuf",
            Self::Grpc => "grpc",
        }
    }
}

impl FromStr for OtlpProtocol {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "http/protobuf" => Ok(Self::HttpProtobuf),
            "grpc" => Ok(Self::Grpc),
            "http/json" => Err(Error::invalid_config(
                "OTLP protocol \"http/json\" is not supported: use http/protobuf or grpc",
            )),
            other => Err(Error::invalid_config(format!(
                "OTLP protocol {other:?}: expected http/protobuf or grpc"
            ))),
        }
    }
}

/// The head sampler: `ratio` of new traces are sampled; with `parent_based`, a span with a parent
/// follows the parent's decision (`sampled` flag) instead.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sampling {
    /// Follow the parent's sampling decision. Defaults to `true`.
    pub parent_based: bool,
    /// Fraction of root traces sampled, `0.0..=1.0`. Defaults to `1.0`.
    pub ratio: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Self {
            parent_based: true,
            ratio: 1.0,
        }
    }
}

impl Sampling {
    /// Parses `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` as the OpenTelemetry
    /// specification defines them. For the ratio samplers a missing or invalid argument means
    /// `1.0`, as the specification says; the returned warning says so.
    pub fn from_otel_env(
        sampler: &str,
        arg: Option<&str>,
    ) -> Result<(Self, Option<String>), Error> {
        let ratio = || -> (f64, Option<String>) {
            match arg.map(|a| a.trim().parse::<f64>()) {
                Some(Ok(r)) if (0.0..=1.0).contains(&r) => (r, None),
                Some(_) => (
                    1.0,
                    Some(format!(
                        "OTEL_TRACES_SAMPLER_ARG={:?} is not a ratio in [0, 1]; using 1.0",
                        arg.unwrap_or_default()
                    )),
                ),
                None => (1.0, None),
            }
        };
        let (parent_based, (ratio, warning)) = match sampler.trim() {
            "always_on" => (false, (1.0, None)),
            "always_off" => (false, (0.0, None)),
            "traceidratio" => (false, ratio()),
            "parentbased_always_on" => (true, (1.0, None)),
            "parentbased_always_off" => (true, (0.0, None)),
            "parentbased_traceidratio" => (true, ratio()),
            other => {
                return Err(Error::invalid_config(format!(
                    "OTEL_TRACES_SAMPLER={other:?} is not supported"
                )));
            }
        };
        Ok((
            Self {
                parent_based,
                ratio,
            },
            warning,
        ))
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if (0.0..=1.0).contains(&self.ratio) {
            Ok(())
        } else {
            Err(Error::invalid_config(format!(
                "tracing.sampling.ratio {} is not within 0..=1",
                self.ratio
            )))
        }
    }
}

/// Tracing and OTLP export settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TracingConfig {
    /// Collector base URL (`http://otel-collector:4318`). `None` (the default) disables export;
    /// spans still get ids so logs correlate and contexts propagate.
    pub endpoint: Option<String>,
    /// Full traces URL, used as is; wins over [`endpoint`](Self::endpoint).
    pub traces_endpoint: Option<String>,
    /// Wire protocol. Defaults to [`OtlpProtocol::HttpProtobuf`].
    pub protocol: OtlpProtocol,
    /// Head sampling. Defaults to parent-based, ratio 1.0.
    pub sampling: Sampling,
    /// Extra resource attributes (`k8s.namespace.name`, `cloud.region`, ...).
    pub resource_attributes: BTreeMap<String, String>,
    /// Spans buffered for export at most; beyond it spans are dropped and counted in
    /// `otel_spans_dropped_total`. Defaults to 2048.
    pub max_queue_size: usize,
    /// Spans per export request. Defaults to 512.
    pub max_export_batch_size: usize,
    /// Delay between two exports. Defaults to 5 s.
    #[serde(with = "humantime_serde")]
    pub scheduled_delay: Duration,
    /// Timeout of one export request. Defaults to 10 s.
    #[serde(with = "humantime_serde")]
    pub export_timeout: Duration,
    /// Whether every span also carries the source location (`code.file.path`,
    /// `code.module.name`, `code.line.number`), the thread (`thread.id`, `thread.name`) and its
    /// busy and idle time. Defaults to `false`: together they cost about 2 000 instructions per
    /// span (the thread name is copied into a new string and the clock read on every enter and
    /// exit), as much as a quarter of a small request's server time, and a trace viewer already
    /// shows where a span sits and how long it took.
    pub span_details: bool,
    /// Headers sent with every export request (HTTP headers, or gRPC metadata), typically the
    /// collector's credentials (`authorization`, `x-api-key`); their values never appear in
    /// `Debug` output. `OTEL_EXPORTER_OTLP_HEADERS` is merged over them, a variable's value
    /// winning for the same name. Names must be valid header names (they are sent lowercased)
    /// and values valid header values. Defaults to none.
    pub headers: BTreeMap<String, Secret<String>>,
    /// TLS for an `https://` endpoint. Defaults to the platform's and Mozilla's roots, no client
    /// certificate.
    pub tls: OtlpTlsConfig,
}

/// TLS settings of the connection to the collector (see the [module docs](self#tls)). The files
/// are read when telemetry is built; a file that cannot be read, a PEM without certificate or
/// key, or a key that does not match the certificate is an
/// [`ErrorKind::Tls`](crate::ErrorKind::Tls) error naming the file.
///
/// ```
/// use chassis_observability::config::{OtlpTlsConfig, TracingConfig};
/// let tracing: TracingConfig = serde_json::from_str(r#"{
///     "endpoint": "https://otel-collector:4318",
///     "headers": { "x-api-key": "s3cr3t" },
///     "tls": { "ca_file": "/etc/otel/ca.pem", "cert_file": "/etc/otel/client.pem", "key_file": "/etc/otel/client.key" }
/// }"#).unwrap();
/// assert_eq!(tracing.tls.ca_file.as_deref(), Some(std::path::Path::new("/etc/otel/ca.pem")));
/// assert!(!format!("{tracing:?}").contains("s3cr3t"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpTlsConfig {
    /// PEM file with the CA certificate(s) trusted for the collector's certificate, instead of
    /// the default roots (`OTEL_EXPORTER_OTLP_CERTIFICATE`). Defaults to none: the platform's
    /// trust store plus Mozilla's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM file with the client certificate (leaf first, then intermediates) presented to the
    /// collector, for mTLS (`OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`). Needs
    /// [`key_file`](Self::key_file). Defaults to none.
    pub cert_file: Option<PathBuf>,
    /// PEM file with the private key of [`cert_file`](Self::cert_file) (PKCS#8, PKCS#1 or SEC1)
    /// (`OTEL_EXPORTER_OTLP_CLIENT_KEY`). Defaults to none.
    pub key_file: Option<PathBuf>,
}

impl Default for TracingConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            traces_endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            sampling: Sampling::default(),
            resource_attributes: BTreeMap::new(),
            max_queue_size: 2048,
            max_export_batch_size: 512,
            scheduled_delay: Duration::from_secs(5),
            export_timeout: Duration::from_secs(10),
            span_details: false,
            headers: BTreeMap::new(),
            tls: OtlpTlsConfig::default(),
        }
    }
}

impl TracingConfig {
    /// The URL spans are sent to, or `None` when export is disabled.
    pub fn resolved_traces_endpoint(&self) -> Option<String> {
        if let Some(full) = self.traces_endpoint.as_deref().filter(|s| !s.is_empty()) {
            return Some(full.to_owned());
        }
        let base = self.endpoint.as_deref().filter(|s| !s.is_empty())?;
        Some(match self.protocol {
            OtlpProtocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
            OtlpProtocol::Grpc => base.to_owned(),
        })
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        self.sampling.validate()?;
        if self.max_queue_size == 0 || self.max_export_batch_size == 0 {
            return Err(Error::invalid_config(
                "tracing.max_queue_size and tracing.max_export_batch_size must be > 0",
            ));
        }
        if let Some(url) = self.resolved_traces_endpoint() {
            url.parse::<http::Uri>()
                .ok()
                .filter(|u| u.scheme().is_some() && u.host().is_some())
                .ok_or_else(|| {
                    Error::invalid_config(format!("OTLP endpoint {url:?} is not a URL"))
                })?;
        }
        for (name, value) in &self.headers {
            check_header(name, value.expose(), "tracing.headers")?;
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => Err(Error::invalid_config(
                "tracing.tls.cert_file (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE) is set without \
                 tracing.tls.key_file (OTEL_EXPORTER_OTLP_CLIENT_KEY)",
            )),
            (None, Some(_)) => Err(Error::invalid_config(
                "tracing.tls.key_file (OTEL_EXPORTER_OTLP_CLIENT_KEY) is set without \
                 tracing.tls.cert_file (OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE)",
            )),
            _ => Ok(()),
        }
    }
}

/// `Ok` when `name: value` can be sent as an HTTP header and as gRPC metadata (names are sent
/// lowercased).
fn check_header(name: &str, value: &str, setting: &str) -> Result<(), Error> {
    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
        return Err(Error::invalid_config(format!(
            "{setting}: {name:?} is not a valid header name"
        )));
    }
    if http::HeaderValue::from_str(value).is_err() {
        // The value is a credential more often than not: name the header, not the value.
        return Err(Error::invalid_config(format!(
            "{setting}: the value of header {name:?} is not a valid header value"
        )));
    }
    Ok(())
}

/// Prometheus metrics settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Build the Prometheus recorder. Defaults to `true`.
    pub enabled: bool,
    /// Histogram bucket upper bounds, in the metric's unit (seconds for durations). Defaults to
    /// the OpenTelemetry semantic-convention buckets for `http.server.request.duration`:
    /// `[0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]`.
    pub buckets: Vec<f64>,
    /// Per-metric bucket overrides, keyed by the metric name as exposed (the catalogue's
    /// constants, e.g. `outbox_publish_latency_seconds`).
    pub buckets_for_metric: BTreeMap<String, Vec<f64>>,
    /// Pushing the same metrics over OTLP as well (see [`crate::otlp_metrics`]). Defaults to off.
    pub otlp: OtlpMetricsConfig,
}

/// OTLP push of the metrics, beside the Prometheus endpoint (which stays as it is). The
/// collector, its headers and its TLS are [`TracingConfig`]'s unless set here.
///
/// ```
/// use chassis_observability::TelemetryConfig;
/// let env = [
///     ("OTEL_METRICS_EXPORTER", "otlp"),
///     ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
///     ("OTEL_METRIC_EXPORT_INTERVAL", "15000"),
/// ];
/// let mut config = TelemetryConfig::default();
/// config.try_apply_env(|k| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap();
/// assert!(config.metrics.otlp.enabled);
/// assert_eq!(
///     config.resolved_metrics_endpoint().as_deref(),
///     Some("http://collector:4318/v1/metrics")
/// );
/// assert_eq!(config.metrics.otlp.interval, std::time::Duration::from_secs(15));
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtlpMetricsConfig {
    /// Push metrics over OTLP (`OTEL_METRICS_EXPORTER=otlp`). Defaults to `false`: Prometheus only.
    pub enabled: bool,
    /// Full metrics URL, used as is (`OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`). Defaults to none:
    /// [`TracingConfig::endpoint`], plus `/v1/metrics` over HTTP/protobuf and as is over gRPC
    /// (`http://collector:4317`).
    pub endpoint: Option<String>,
    /// Wire protocol (`OTEL_EXPORTER_OTLP_METRICS_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`).
    /// Defaults to none: [`TracingConfig::protocol`]. [`OtlpProtocol::Grpc`] needs the crate
    /// feature `grpc`, [`OtlpProtocol::HttpProtobuf`] the feature `otlp-http`; `http/json` is not
    /// a protocol this crate speaks (an [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig)
    /// error).
    pub protocol: Option<OtlpProtocol>,
    /// Time between two pushes (`OTEL_METRIC_EXPORT_INTERVAL`, in ms). Defaults to 60 s.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Timeout of one push (`OTEL_EXPORTER_OTLP_[METRICS_]TIMEOUT`, in ms). Defaults to 10 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Headers sent with every push, over [`TracingConfig::headers`] (a name here wins).
    /// `OTEL_EXPORTER_OTLP_METRICS_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS`, is merged over
    /// them. Values never appear in `Debug` output. Defaults to none.
    pub headers: BTreeMap<String, Secret<String>>,
}

impl Default for OtlpMetricsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            endpoint: None,
            protocol: None,
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            headers: BTreeMap::new(),
        }
    }
}

/// The OpenTelemetry semantic-convention duration buckets, in seconds.
pub const DEFAULT_DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            buckets: DEFAULT_DURATION_BUCKETS.to_vec(),
            buckets_for_metric: BTreeMap::new(),
            otlp: OtlpMetricsConfig::default(),
        }
    }
}

impl MetricsConfig {
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let check = |name: &str, b: &[f64]| {
            if b.is_empty()
                || b.iter().any(|v| !v.is_finite())
                || b.windows(2).any(|w| w[0] >= w[1])
            {
                Err(Error::invalid_config(format!(
                    "histogram buckets for {name} must be finite, non-empty and strictly increasing"
                )))
            } else {
                Ok(())
            }
        };
        check("all metrics", &self.buckets)?;
        for (name, b) in &self.buckets_for_metric {
            check(name, b)?;
        }
        Ok(())
    }
}

/// Sentry error reporting: where events go and how they are labelled. Used with the crate
/// feature `sentry` (module `sentry`); without it a configured DSN only earns a warning.
///
/// ```
/// use chassis_observability::config::{SentryBreadcrumbs, SentryConfig};
/// let sentry: SentryConfig = serde_json::from_str(r#"{
///     "dsn": "https://public@o1.ingest.sentry.io/2",
///     "environment": "staging",
///     "breadcrumbs": "info"
/// }"#).unwrap();
/// assert_eq!(sentry.breadcrumbs, SentryBreadcrumbs::Info);
/// assert!(!format!("{sentry:?}").contains("public@"));
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SentryConfig {
    /// The project's DSN (`SENTRY_DSN`); kept out of `Debug` output. Defaults to none: nothing is
    /// sent and nothing is set up.
    pub dsn: Option<Secret<String>>,
    /// Sentry's `environment` (`SENTRY_ENVIRONMENT`). Defaults to none: the service's
    /// `deployment.environment` (`DEPLOYMENT_ENVIRONMENT`).
    pub environment: Option<String>,
    /// Sentry's `release` (`SENTRY_RELEASE`). Defaults to none: `name@version` of the service.
    pub release: Option<String>,
    /// Fraction of error events sent, `0.0..=1.0` (`SENTRY_SAMPLE_RATE`). Defaults to `1.0`.
    pub sample_rate: f32,
    /// Which events below ERROR are kept as breadcrumbs of the next error event. Defaults to
    /// [`SentryBreadcrumbs::Warn`].
    pub breadcrumbs: SentryBreadcrumbs,
    /// Envelopes waiting to be sent at most; beyond it new ones are dropped rather than held in
    /// memory while Sentry is unreachable. Defaults to 64.
    pub queue_size: usize,
    /// Timeout of one request to Sentry. Defaults to 10 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for SentryConfig {
    fn default() -> Self {
        Self {
            dsn: None,
            environment: None,
            release: None,
            sample_rate: 1.0,
            breadcrumbs: SentryBreadcrumbs::Warn,
            queue_size: 64,
            timeout: Duration::from_secs(10),
        }
    }
}

/// Which log events below ERROR become breadcrumbs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SentryBreadcrumbs {
    /// None.
    Off,
    /// WARN events. The default: a warning is rare and usually explains the error that follows.
    #[default]
    Warn,
    /// WARN and INFO events. Each INFO line (an access log line, say) then also costs a
    /// breadcrumb: a few allocations and a lock on the Sentry scope.
    Info,
}

impl SentryConfig {
    /// `SENTRY_DSN`, `SENTRY_ENVIRONMENT`, `SENTRY_RELEASE`, `SENTRY_SAMPLE_RATE` over the
    /// configuration; an invalid sample rate is a warning.
    fn apply_env(&mut self, var: &impl Fn(&str) -> Option<String>, warnings: &mut Vec<String>) {
        if let Some(v) = var("SENTRY_DSN") {
            self.dsn = Some(Secret::new(v.trim().to_owned()));
        }
        if let Some(v) = var("SENTRY_ENVIRONMENT") {
            self.environment = Some(v.trim().to_owned());
        }
        if let Some(v) = var("SENTRY_RELEASE") {
            self.release = Some(v.trim().to_owned());
        }
        if let Some(v) = var("SENTRY_SAMPLE_RATE") {
            match v.trim().parse::<f32>() {
                Ok(r) if (0.0..=1.0).contains(&r) => self.sample_rate = r,
                _ => warnings.push(format!(
                    "SENTRY_SAMPLE_RATE={v:?} is not a ratio in [0, 1]; ignored"
                )),
            }
        }
    }

    /// Whether a DSN is configured (an empty string counts as none, as Sentry's SDKs do).
    pub fn is_enabled(&self) -> bool {
        self.dsn
            .as_ref()
            .is_some_and(|d| !d.expose().trim().is_empty())
    }

    #[cfg_attr(not(feature = "sentry"), allow(dead_code))]
    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !(0.0..=1.0).contains(&self.sample_rate) {
            return Err(Error::invalid_config(format!(
                "sentry.sample_rate {} is not within 0..=1",
                self.sample_rate
            )));
        }
        if self.queue_size == 0 {
            return Err(Error::invalid_config("sentry.queue_size must be > 0"));
        }
        Ok(())
    }
}

impl TelemetryConfig {
    /// Overlays the environment (see the [module docs](self)) read through `var`, returning
    /// warnings about variables that were ignored because they were invalid. Lenient throughout:
    /// a malformed `OTEL_EXPORTER_OTLP_HEADERS` is a warning too (the configured headers stay);
    /// [`try_apply_env`](Self::try_apply_env) refuses it instead.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Vec<String> {
        let mut warnings = self.apply_env_lenient(&var);
        if let Err(e) = self.apply_env_headers(&var) {
            warnings.push(format!("{e}; ignored"));
        }
        warnings
    }

    /// [`apply_env`](Self::apply_env), except that a malformed `OTEL_EXPORTER_OTLP_HEADERS` /
    /// `OTEL_EXPORTER_OTLP_TRACES_HEADERS` is an [`ErrorKind::InvalidConfig`](crate::ErrorKind)
    /// error naming the variable: the headers usually carry the collector's credentials, and
    /// exporting without them would only collect rejections. This is what
    /// [`TelemetryBuilder::build`](crate::TelemetryBuilder::build) and `init` use.
    ///
    /// ```
    /// use chassis_observability::TelemetryConfig;
    /// let env = [("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20abc,x-tenant=shop")];
    /// let var = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
    /// let mut config = TelemetryConfig::default();
    /// config.try_apply_env(var).unwrap();
    /// assert_eq!(config.tracing.headers["authorization"].expose(), "Bearer abc");
    ///
    /// let env = [("OTEL_EXPORTER_OTLP_HEADERS", "authorization")];
    /// let var = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
    /// let err = TelemetryConfig::default().try_apply_env(var).unwrap_err();
    /// assert!(err.to_string().contains("OTEL_EXPORTER_OTLP_HEADERS"), "{err}");
    /// ```
    pub fn try_apply_env(
        &mut self,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Vec<String>, Error> {
        self.apply_env_headers(&var)?;
        check_env_protocols(&var)?;
        Ok(self.apply_env_lenient(&var))
    }

    /// The URL metrics are pushed to over OTLP, or `None` when the push is off: the configured
    /// [`OtlpMetricsConfig::endpoint`], else [`TracingConfig::endpoint`], plus `/v1/metrics`
    /// over HTTP/protobuf and as is over gRPC (the OTLP exporter specification: a gRPC endpoint
    /// has no per-signal path, the service is named by the gRPC method).
    pub fn resolved_metrics_endpoint(&self) -> Option<String> {
        if !self.metrics.otlp.enabled {
            return None;
        }
        if let Some(full) = self
            .metrics
            .otlp
            .endpoint
            .as_deref()
            .filter(|s| !s.is_empty())
        {
            return Some(full.to_owned());
        }
        let base = self.tracing.endpoint.as_deref().filter(|s| !s.is_empty())?;
        Some(metrics_url(base, self.metrics_protocol()))
    }

    /// The protocol of the metrics push: [`OtlpMetricsConfig::protocol`], else the traces'.
    pub fn metrics_protocol(&self) -> OtlpProtocol {
        self.metrics.otlp.protocol.unwrap_or(self.tracing.protocol)
    }

    /// `OTEL_EXPORTER_OTLP_TRACES_HEADERS`, else `OTEL_EXPORTER_OTLP_HEADERS`, merged over the
    /// configured headers, and the same with `_METRICS_` for the metrics push.
    fn apply_env_headers(&mut self, var: &impl Fn(&str) -> Option<String>) -> Result<(), Error> {
        let var = |k: &'static str| var(k).filter(|v| !v.trim().is_empty()).map(|v| (k, v));
        if let Some((name, value)) =
            var("OTEL_EXPORTER_OTLP_TRACES_HEADERS").or_else(|| var("OTEL_EXPORTER_OTLP_HEADERS"))
        {
            let headers = parse_otlp_headers(&value)
                .map_err(|e| Error::invalid_config(format!("{name}: {}", reason(&e))))?;
            self.tracing
                .headers
                .extend(headers.into_iter().map(|(k, v)| (k, Secret::new(v))));
        }
        if let Some((name, value)) =
            var("OTEL_EXPORTER_OTLP_METRICS_HEADERS").or_else(|| var("OTEL_EXPORTER_OTLP_HEADERS"))
        {
            let headers = parse_otlp_headers(&value)
                .map_err(|e| Error::invalid_config(format!("{name}: {}", reason(&e))))?;
            self.metrics
                .otlp
                .headers
                .extend(headers.into_iter().map(|(k, v)| (k, Secret::new(v))));
        }
        Ok(())
    }

    fn apply_env_lenient(&mut self, var: &impl Fn(&str) -> Option<String>) -> Vec<String> {
        let var = |k: &str| var(k).filter(|v| !v.trim().is_empty());
        let mut warnings = Vec::new();
        let mut warn = |r: Result<(), Error>| {
            if let Err(e) = r {
                warnings.push(e.to_string());
            }
        };

        if let Some(v) = var("LOG_FORMAT") {
            warn(v.parse().map(|f| self.log.format = f));
        }
        if let Some(v) = var("RUST_LOG") {
            self.log.filter = v;
        }
        if let Some(v) = var("LOG_SPAN_FIELDS") {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "on" => self.log.span_fields = true,
                "false" | "0" | "off" => self.log.span_fields = false,
                _ => warn(Err(Error::invalid_config(format!(
                    "LOG_SPAN_FIELDS={v:?}: expected true or false; keeping {}",
                    self.log.span_fields
                )))),
            }
        }

        let t = &mut self.tracing;
        if let Some(v) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            t.endpoint = Some(v);
        }
        if let Some(v) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            t.traces_endpoint = Some(v);
        }
        if let Some(v) =
            var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        {
            warn(v.parse().map(|p| t.protocol = p));
        }
        if let Some(v) = var("OTEL_TRACES_SAMPLER") {
            let arg = var("OTEL_TRACES_SAMPLER_ARG");
            match Sampling::from_otel_env(&v, arg.as_deref()) {
                Ok((s, w)) => {
                    t.sampling = s;
                    warnings.extend(w);
                }
                Err(e) => warnings.push(format!("{e}; keeping the configured sampler")),
            }
        }
        let disabled_sdk =
            var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let disabled =
            disabled_sdk || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none");
        if disabled {
            t.endpoint = None;
            t.traces_endpoint = None;
        }
        if let Some(v) = var("OTEL_RESOURCE_ATTRIBUTES") {
            match parse_resource_attributes(&v) {
                Ok(attrs) => t.resource_attributes.extend(attrs),
                Err(e) => warnings.push(format!("{e}; OTEL_RESOURCE_ATTRIBUTES ignored")),
            }
        }
        if let Some(v) = var("OTEL_SERVICE_NAME") {
            t.resource_attributes.insert("service.name".to_owned(), v);
        }
        let mut size = |name: &str, slot: &mut usize| {
            if let Some(v) = var(name) {
                match v.trim().parse::<usize>() {
                    Ok(n) if n > 0 => *slot = n,
                    _ => warnings.push(format!("{name}={v:?} is not a positive integer; ignored")),
                }
            }
        };
        size("OTEL_BSP_MAX_QUEUE_SIZE", &mut t.max_queue_size);
        size(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            &mut t.max_export_batch_size,
        );
        let mut millis = |name: &str, slot: &mut Duration| {
            if let Some(v) = var(name) {
                match v.trim().parse::<u64>() {
                    Ok(n) => *slot = Duration::from_millis(n),
                    Err(_) => warnings.push(format!("{name}={v:?} is not milliseconds; ignored")),
                }
            }
        };
        millis("OTEL_BSP_SCHEDULE_DELAY", &mut t.scheduled_delay);
        millis("OTEL_BSP_EXPORT_TIMEOUT", &mut t.export_timeout);
        // The exporter's request timeout; it bounds the same export, so it wins over the batch
        // processor's.
        if var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT").is_some() {
            millis("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", &mut t.export_timeout);
        } else {
            millis("OTEL_EXPORTER_OTLP_TIMEOUT", &mut t.export_timeout);
        }
        let m = &mut self.metrics.otlp;
        if var("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT").is_some() {
            millis("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", &mut m.timeout);
        } else {
            millis("OTEL_EXPORTER_OTLP_TIMEOUT", &mut m.timeout);
        }
        if let Some(v) = var("OTEL_METRIC_EXPORT_INTERVAL") {
            match v.trim().parse::<u64>() {
                Ok(n) if n > 0 => m.interval = Duration::from_millis(n),
                _ => warnings.push(format!(
                    "OTEL_METRIC_EXPORT_INTERVAL={v:?} is not a positive number of milliseconds; ignored"
                )),
            }
        }
        if let Some(v) = var("OTEL_METRICS_EXPORTER") {
            match parse_metrics_exporter(&v) {
                Ok(otlp) => m.enabled = otlp,
                Err(e) => warnings.push(format!("{e}; ignored")),
            }
        }
        if disabled_sdk {
            m.enabled = false;
        }
        if let Some(v) = var("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL") {
            match v.parse() {
                Ok(p) => m.protocol = Some(p),
                Err(e) => warnings.push(e.to_string()),
            }
        } else if let Some(v) = var("OTEL_EXPORTER_OTLP_PROTOCOL") {
            // The generic variable is the metrics' too, whatever `_TRACES_PROTOCOL` says. An
            // invalid value was already reported for the traces unless they had their own.
            match v.parse() {
                Ok(p) => m.protocol = Some(p),
                Err(e) if var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").is_some() => {
                    warnings.push(e.to_string());
                }
                Err(_) => {}
            }
        }
        if let Some(v) = var("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") {
            m.endpoint = Some(v);
        } else if let Some(v) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            // Set here too: `OTEL_TRACES_EXPORTER=none` clears the traces' endpoint.
            m.endpoint = Some(metrics_url(v.trim(), m.protocol.unwrap_or(t.protocol)));
        }
        let file = |name: &str| {
            var(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
                .or_else(|| var(&format!("OTEL_EXPORTER_OTLP_{name}")))
                .map(|v| PathBuf::from(v.trim()))
        };
        if let Some(path) = file("CERTIFICATE") {
            t.tls.ca_file = Some(path);
        }
        if let Some(path) = file("CLIENT_CERTIFICATE") {
            t.tls.cert_file = Some(path);
        }
        if let Some(path) = file("CLIENT_KEY") {
            t.tls.key_file = Some(path);
        }
        self.sentry.apply_env(&var, &mut warnings);
        warnings
    }
}

/// The metrics URL of the collector base URL `base`: `/v1/metrics` appended over HTTP/protobuf;
/// `base` as is over gRPC, whose requests name the service in their path.
fn metrics_url(base: &str, protocol: OtlpProtocol) -> String {
    match protocol {
        OtlpProtocol::HttpProtobuf => format!("{}/v1/metrics", base.trim_end_matches('/')),
        OtlpProtocol::Grpc => base.to_owned(),
    }
}

/// `OTEL_EXPORTER_OTLP_PROTOCOL` and its signal-specific variants, strictly: an unsupported
/// protocol (`http/json`) or a misspelt one is an error naming the variable, since exporting in a
/// protocol the collector does not expect would only collect rejections.
fn check_env_protocols(var: &impl Fn(&str) -> Option<String>) -> Result<(), Error> {
    for name in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ] {
        if let Some(v) = var(name).filter(|v| !v.trim().is_empty()) {
            v.parse::<OtlpProtocol>()
                .map_err(|e| Error::invalid_config(format!("{name}: {}", reason(&e))))?;
        }
    }
    Ok(())
}

/// Parses `OTEL_METRICS_EXPORTER`, a comma-separated list: `Ok(true)` when it names `otlp`,
/// `Ok(false)` for `none` and `prometheus` alone (the Prometheus endpoint is always served when
/// metrics are enabled), an error for any other name.
///
/// ```
/// use chassis_observability::config::parse_metrics_exporter;
/// assert!(parse_metrics_exporter("otlp").unwrap());
/// assert!(parse_metrics_exporter("prometheus, otlp").unwrap());
/// assert!(!parse_metrics_exporter("none").unwrap());
/// assert!(parse_metrics_exporter("console").is_err());
/// ```
pub fn parse_metrics_exporter(value: &str) -> Result<bool, Error> {
    let mut otlp = false;
    for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "otlp" => otlp = true,
            "none" | "prometheus" => {}
            other => {
                return Err(Error::invalid_config(format!(
                    "OTEL_METRICS_EXPORTER: {other:?} is not supported (otlp, prometheus or none)"
                )));
            }
        }
    }
    Ok(otlp)
}

/// The reason of an [`ErrorKind::InvalidConfig`](crate::ErrorKind) error, without the prefix
/// its `Display` adds.
fn reason(e: &Error) -> String {
    match e.kind() {
        crate::ErrorKind::InvalidConfig { reason } => reason.clone(),
        _ => e.to_string(),
    }
}

/// Parses `OTEL_EXPORTER_OTLP_HEADERS`: `name1=value1,name2=value2`, values percent-encoded
/// (`%20` for a space, `%2C` for a comma), as the OpenTelemetry specification defines it. Names
/// and values are trimmed; every name must be a valid header name and every decoded value a valid
/// header value. Any error rejects the whole value, and its message names the header but never
/// shows a value (they are usually credentials).
///
/// ```
/// use chassis_observability::config::parse_otlp_headers;
/// let h = parse_otlp_headers("api-key=abc%3D%3D, X-Tenant = shop").unwrap();
/// assert_eq!(h["api-key"], "abc==");
/// assert_eq!(h["X-Tenant"], "shop");
/// assert!(parse_otlp_headers("api-key").is_err());
/// ```
pub fn parse_otlp_headers(value: &str) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for (i, pair) in value.split(',').enumerate() {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let Some((name, encoded)) = pair.split_once('=') else {
            return Err(Error::invalid_config(format!(
                "OTLP header #{} has no '=' (expected name=value)",
                i + 1
            )));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(Error::invalid_config(format!(
                "OTLP header #{} has an empty name",
                i + 1
            )));
        }
        let decoded = percent_decode(encoded.trim()).ok_or_else(|| {
            Error::invalid_config(format!("OTLP header {name:?} is badly percent-encoded"))
        })?;
        check_header(name, &decoded, "OTLP header")?;
        out.insert(name.to_owned(), decoded);
    }
    Ok(out)
}

/// Parses `OTEL_RESOURCE_ATTRIBUTES`: `key1=value1,key2=value2`, values percent-encoded (the W3C
/// Baggage octet rules). Per the OpenTelemetry specification, any error discards the whole value.
pub fn parse_resource_attributes(value: &str) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for pair in value.split(',') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            Error::invalid_config(format!("resource attribute {pair:?} has no '='"))
        })?;
        let k = k.trim();
        if k.is_empty() {
            return Err(Error::invalid_config(format!(
                "resource attribute {pair:?} has an empty key"
            )));
        }
        let v = percent_decode(v.trim()).ok_or_else(|| {
            Error::invalid_config(format!("resource attribute {k:?} is badly percent-encoded"))
        })?;
        out.insert(k.to_owned(), v);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(
                u8::from_str_radix(hex, 16)
                    .ok()
                    .filter(|_| hex.bytes().all(|c| c.is_ascii_hexdigit()))?,
            );
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn samplers_from_the_otel_spec() {
        let s = |name, arg| Sampling::from_otel_env(name, arg).unwrap();
        assert_eq!(
            s("always_on", None).0,
            Sampling {
                parent_based: false,
                ratio: 1.0
            }
        );
        assert_eq!(
            s("always_off", None).0,
            Sampling {
                parent_based: false,
                ratio: 0.0
            }
        );
        assert_eq!(
            s("traceidratio", Some("0.25")).0,
            Sampling {
                parent_based: false,
                ratio: 0.25
            }
        );
        assert_eq!(
            s("parentbased_always_on", None).0,
            Sampling {
                parent_based: true,
                ratio: 1.0
            }
        );
        assert_eq!(
            s("parentbased_always_off", None).0,
            Sampling {
                parent_based: true,
                ratio: 0.0
            }
        );
        assert_eq!(
            s("parentbased_traceidratio", Some(" 0.1 ")).0,
            Sampling {
                parent_based: true,
                ratio: 0.1
            }
        );
        // Spec: invalid or missing argument for a ratio sampler means 1.0.
        let (bad, warning) = s("traceidratio", Some("1.5"));
        assert_eq!(bad.ratio, 1.0);
        assert!(warning.unwrap().contains("1.5"));
        assert_eq!(s("parentbased_traceidratio", Some("x")).0.ratio, 1.0);
        assert_eq!(
            s("traceidratio", None),
            (
                Sampling {
                    parent_based: false,
                    ratio: 1.0
                },
                None
            )
        );
        assert!(Sampling::from_otel_env("jaeger_remote", None).is_err());
    }

    #[test]
    fn resource_attributes_parse_and_decode() {
        let a = parse_resource_attributes(
            "service.name=orders, k8s.namespace.name=shop,team=a%20b%2Cc",
        )
        .unwrap();
        assert_eq!(a["service.name"], "orders");
        assert_eq!(a["k8s.namespace.name"], "shop");
        assert_eq!(a["team"], "a b,c");
        assert!(parse_resource_attributes("").unwrap().is_empty());
        assert!(parse_resource_attributes("novalue").is_err());
        assert!(parse_resource_attributes("=v").is_err());
        assert!(parse_resource_attributes("k=%zz").is_err());
        assert!(parse_resource_attributes("k=%4").is_err());
        assert!(parse_resource_attributes("k=%+1").is_err());
    }

    #[test]
    fn env_overlays_the_config() {
        let mut c = TelemetryConfig::default();
        let warnings = c.apply_env(env(&[
            ("LOG_FORMAT", "pretty"),
            ("RUST_LOG", "debug,hyper=warn"),
            ("OTEL_SERVICE_NAME", "orders"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=ignored,cloud.region=eu-west-1",
            ),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
        ]));
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(c.log.format, LogFormat::Pretty);
        assert_eq!(c.log.filter, "debug,hyper=warn");
        // OTEL_SERVICE_NAME wins over service.name in OTEL_RESOURCE_ATTRIBUTES.
        assert_eq!(c.tracing.resource_attributes["service.name"], "orders");
        assert_eq!(c.tracing.resource_attributes["cloud.region"], "eu-west-1");
        assert_eq!(
            c.tracing.resolved_traces_endpoint().as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            c.tracing.sampling,
            Sampling {
                parent_based: true,
                ratio: 0.5
            }
        );
        assert_eq!(c.tracing.max_queue_size, 100);
        assert_eq!(c.tracing.scheduled_delay, Duration::from_millis(250));
    }

    #[test]
    fn signal_endpoint_wins_and_grpc_uses_the_base() {
        let mut c = TelemetryConfig::default();
        c.apply_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://other:9999/custom",
            ),
        ]));
        assert_eq!(
            c.tracing.resolved_traces_endpoint().as_deref(),
            Some("http://other:9999/custom")
        );
        let mut c = TelemetryConfig::default();
        c.apply_env(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]));
        assert_eq!(c.tracing.protocol, OtlpProtocol::Grpc);
        assert_eq!(
            c.tracing.resolved_traces_endpoint().as_deref(),
            Some("http://collector:4317")
        );
    }

    #[test]
    fn disabled_sdk_or_exporter_none_turns_export_off() {
        for pairs in [
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ][..],
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ][..],
        ] {
            let mut c = TelemetryConfig::default();
            let pairs: &'static [(&str, &str)] = Box::leak(pairs.to_vec().into_boxed_slice());
            c.apply_env(env(pairs));
            assert_eq!(c.tracing.resolved_traces_endpoint(), None);
        }
    }

    #[test]
    fn invalid_env_values_are_ignored_with_a_warning() {
        let mut c = TelemetryConfig::default();
        let w = c.apply_env(env(&[
            ("LOG_FORMAT", "xml"),
            ("OTEL_TRACES_SAMPLER", "nope"),
            ("OTEL_RESOURCE_ATTRIBUTES", "a=%zz,b=1"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "0"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]));
        assert_eq!(w.len(), 5, "{w:?}");
        assert_eq!(c, TelemetryConfig::default());
    }

    #[test]
    fn metrics_push_variables() {
        // Default: Prometheus only, even with an endpoint.
        let mut c = TelemetryConfig::default();
        c.apply_env(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")]));
        assert_eq!(c.resolved_metrics_endpoint(), None);

        let mut c = TelemetryConfig::default();
        let w = c.apply_env(env(&[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_TRACES_EXPORTER", "none"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "1500"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "700"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "9000"),
        ]));
        assert!(w.is_empty(), "{w:?}");
        // Spans off, metrics still pushed to the generic endpoint.
        assert_eq!(c.tracing.resolved_traces_endpoint(), None);
        assert_eq!(
            c.resolved_metrics_endpoint().as_deref(),
            Some("http://c:4318/v1/metrics")
        );
        assert_eq!(c.metrics.otlp.interval, Duration::from_millis(1500));
        assert_eq!(c.metrics.otlp.timeout, Duration::from_millis(700));
        // The exporter's timeout wins over the batch processor's.
        assert_eq!(c.tracing.export_timeout, Duration::from_millis(2500));

        let mut c = TelemetryConfig::default();
        c.apply_env(env(&[
            ("OTEL_METRICS_EXPORTER", "prometheus,otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            (
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                "http://m:4318/custom",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "300"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ]));
        assert_eq!(
            c.resolved_metrics_endpoint().as_deref(),
            Some("http://m:4318/custom")
        );
        assert_eq!(c.tracing.export_timeout, Duration::from_millis(300));
        assert_eq!(c.metrics.otlp.timeout, Duration::from_millis(2500));

        // A file's traces endpoint is the metrics' base too; OTEL_SDK_DISABLED turns it off.
        let mut c = TelemetryConfig::default();
        c.tracing.endpoint = Some("http://file:4318".into());
        c.metrics.otlp.enabled = true;
        assert_eq!(
            c.resolved_metrics_endpoint().as_deref(),
            Some("http://file:4318/v1/metrics")
        );
        c.apply_env(env(&[("OTEL_SDK_DISABLED", "true")]));
        assert_eq!(c.resolved_metrics_endpoint(), None);

        let mut c = TelemetryConfig::default();
        let w = c.apply_env(env(&[
            ("OTEL_METRICS_EXPORTER", "console"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "0"),
            ("OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "soon"),
        ]));
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(c.metrics, MetricsConfig::default());
    }

    #[test]
    fn metrics_headers_come_from_their_own_variable_else_the_generic_one() {
        let mut c = TelemetryConfig::default();
        c.try_apply_env(env(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-key=generic"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-key=traces"),
        ]))
        .unwrap();
        assert_eq!(c.tracing.headers["x-key"].expose(), "traces");
        assert_eq!(c.metrics.otlp.headers["x-key"].expose(), "generic");
        let mut c = TelemetryConfig::default();
        c.try_apply_env(env(&[
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-key=generic"),
            ("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-key=metrics%20key"),
        ]))
        .unwrap();
        assert_eq!(c.tracing.headers["x-key"].expose(), "generic");
        assert_eq!(c.metrics.otlp.headers["x-key"].expose(), "metrics key");
        let err = TelemetryConfig::default()
            .try_apply_env(env(&[("OTEL_EXPORTER_OTLP_METRICS_HEADERS", "x-key")]))
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("OTEL_EXPORTER_OTLP_METRICS_HEADERS"),
            "{err}"
        );
    }

    #[test]
    fn grpc_metrics_endpoint_has_no_signal_path() {
        // The generic protocol and endpoint: port 4317 as is, no `/v1/metrics`.
        let mut c = TelemetryConfig::default();
        let w = c.apply_env(env(&[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
        ]));
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.tracing.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(c.metrics_protocol(), OtlpProtocol::Grpc);
        assert_eq!(
            c.resolved_metrics_endpoint().as_deref(),
            Some("http://c:4317")
        );
        assert_eq!(
            c.tracing.resolved_traces_endpoint().as_deref(),
            Some("http://c:4317/v1/traces")
        );

        // The metrics-specific protocol over the traces' one.
        let mut c = TelemetryConfig::default();
        c.apply_env(env(&[
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317/"),
        ]));
        assert_eq!(c.tracing.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(
            c.resolved_metrics_endpoint().as_deref(),
            Some("https://c:4317/")
        );

        // From a file: the traces' base as is.
        let mut c = TelemetryConfig::default();
        c.tracing.endpoint = Some("http://file:4317".into());
        c.metrics.otlp.enabled = true;
        c.metrics.otlp.protocol = Some(OtlpProtocol::Grpc);
        assert_eq!(
            c.resolved_metrics_endpoint().as_deref(),
            Some("http://file:4317")
        );
        c.metrics.otlp.protocol = None;
        c.tracing.protocol = OtlpProtocol::Grpc;
        assert_eq!(
            c.resolved_metrics_endpoint().as_deref(),
            Some("http://file:4317")
        );

        // An invalid generic protocol is reported once, by the traces.
        let mut c = TelemetryConfig::default();
        let w = c.apply_env(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grcp")]));
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(c.metrics.otlp.protocol, None);
    }

    #[test]
    fn protocols_from_the_env_and_http_json_refused() {
        let mut c = TelemetryConfig::default();
        c.try_apply_env(env(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
        ]))
        .unwrap();
        assert_eq!(c.tracing.protocol, OtlpProtocol::Grpc);
        assert_eq!(c.metrics_protocol(), OtlpProtocol::HttpProtobuf);
        c.metrics.otlp.protocol = None;
        assert_eq!(c.metrics_protocol(), OtlpProtocol::Grpc);

        for name in [
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ] {
            let var = move |k: &str| (k == name).then(|| "http/json".to_owned());
            let err = TelemetryConfig::default().try_apply_env(var).unwrap_err();
            assert!(
                matches!(err.kind(), crate::ErrorKind::InvalidConfig { reason }
                    if reason.starts_with(name) && reason.contains("not supported")),
                "{err}"
            );
        }
    }

    #[test]
    fn otlp_headers_parse_and_decode() {
        let h =
            parse_otlp_headers("authorization=Bearer%20t0k%3D%3D, x-tenant = shop ,,Api-Key=a%2Cb")
                .unwrap();
        assert_eq!(h["authorization"], "Bearer t0k==");
        assert_eq!(h["x-tenant"], "shop");
        assert_eq!(h["Api-Key"], "a,b");
        assert_eq!(h.len(), 3);
        assert!(parse_otlp_headers("").unwrap().is_empty());
        for bad in [
            "novalue",
            "=v",
            "k=%zz",
            "k=%4",
            "bad name=v",
            "k=line%0Abreak",
            "x-ok=1,broken",
        ] {
            let err = parse_otlp_headers(bad).unwrap_err();
            assert!(
                matches!(err.kind(), crate::ErrorKind::InvalidConfig { .. }),
                "{bad}: {err}"
            );
        }
        // The message names the header, never the value (often a credential).
        let err = parse_otlp_headers("authorization=s3cr3t%0A").unwrap_err();
        assert!(err.to_string().contains("authorization"), "{err}");
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn env_headers_and_tls_files_overlay_the_config_specific_first() {
        let mut c = TelemetryConfig::default();
        c.tracing
            .headers
            .insert("x-tenant".into(), Secret::new("from-file".into()));
        c.tracing
            .headers
            .insert("x-kept".into(), Secret::new("kept".into()));
        c.tracing.tls.ca_file = Some("/from/file/ca.pem".into());
        let warnings = c
            .try_apply_env(env(&[
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-generic=ignored"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
                    "x-tenant=from-env,authorization=Basic%20YTpi",
                ),
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/generic/ca.pem"),
                ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/traces/ca.pem"),
                (
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                    "/generic/client.pem",
                ),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/generic/client.key"),
                ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/traces/client.key"),
            ]))
            .unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let headers: BTreeMap<&str, &str> = c
            .tracing
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.expose().as_str()))
            .collect();
        assert_eq!(
            headers,
            BTreeMap::from([
                ("authorization", "Basic YTpi"),
                ("x-kept", "kept"),
                ("x-tenant", "from-env"),
            ])
        );
        let tls = &c.tracing.tls;
        assert_eq!(tls.ca_file.as_deref(), Some("/traces/ca.pem".as_ref()));
        assert_eq!(
            tls.cert_file.as_deref(),
            Some("/generic/client.pem".as_ref())
        );
        assert_eq!(tls.key_file.as_deref(), Some("/traces/client.key".as_ref()));
        assert!(c.tracing.validate().is_ok());
        // Header values stay out of Debug output.
        assert!(!format!("{c:?}").contains("YTpi"));
    }

    #[test]
    fn malformed_env_headers_fail_strictly_and_warn_leniently() {
        let vars = env(&[
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "authorization"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318"),
        ]);
        let mut c = TelemetryConfig::default();
        let err = c.try_apply_env(&vars).unwrap_err();
        assert!(
            matches!(err.kind(), crate::ErrorKind::InvalidConfig { reason } if reason.starts_with("OTEL_EXPORTER_OTLP_TRACES_HEADERS:")),
            "{err}"
        );
        assert_eq!(c, TelemetryConfig::default(), "nothing applied");

        let mut c = TelemetryConfig::default();
        let warnings = c.apply_env(&vars);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("OTEL_EXPORTER_OTLP_TRACES_HEADERS"));
        assert!(c.tracing.headers.is_empty());
        assert_eq!(
            c.tracing.endpoint.as_deref(),
            Some("https://collector:4318")
        );
    }

    #[test]
    fn client_certificate_and_key_go_together_and_headers_are_checked() {
        let mut c = TracingConfig::default();
        c.tls.cert_file = Some("client.pem".into());
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("tracing.tls.key_file"), "{err}");
        let mut c = TracingConfig::default();
        c.tls.key_file = Some("client.key".into());
        assert!(c.validate().is_err());
        let mut c = TracingConfig::default();
        c.headers
            .insert("bad header".into(), Secret::new("v".into()));
        assert!(c.validate().is_err());
        let mut c = TracingConfig::default();
        c.headers
            .insert("x-api-key".into(), Secret::new("a\nb".into()));
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("x-api-key"), "{err}");
    }

    #[test]
    fn validation_rejects_bad_programmatic_values() {
        let mut c = TelemetryConfig::default();
        c.tracing.sampling.ratio = 2.0;
        assert!(c.tracing.validate().is_err());
        let mut c = TelemetryConfig::default();
        c.tracing.endpoint = Some("not a url".into());
        assert!(c.tracing.validate().is_err());
        let mut c = TelemetryConfig::default();
        c.metrics.buckets = vec![1.0, 0.5];
        assert!(c.metrics.validate().is_err());
        c.metrics.buckets = vec![];
        assert!(c.metrics.validate().is_err());
        assert!(TelemetryConfig::default().metrics.validate().is_ok());
    }

    #[test]
    fn config_deserializes_with_defaults() {
        let c: TelemetryConfig = serde_json::from_str(
            r#"{"tracing":{"scheduled_delay":"200ms","protocol":"grpc"},"metrics":{"buckets_for_metric":{"outbox_pending":[1,10,100]}}}"#,
        )
        .unwrap();
        assert_eq!(c.tracing.scheduled_delay, Duration::from_millis(200));
        assert_eq!(c.tracing.protocol, OtlpProtocol::Grpc);
        assert_eq!(c.log, LogConfig::default());
        let log: LogConfig = serde_json::from_str(
            r#"{"buffered_lines_limit":1000,"buffered_bytes_limit":65536,"flush_interval":"20ms"}"#,
        )
        .unwrap();
        assert_eq!(log.buffered_lines_limit, 1000);
        assert_eq!(log.buffered_bytes_limit, 65536);
        assert_eq!(log.flush_interval, Duration::from_millis(20));
        assert!(log.span_fields);
        let log: LogConfig = serde_json::from_str(r#"{"span_fields":false}"#).unwrap();
        assert!(!log.span_fields);
        let mut off = TelemetryConfig::default();
        assert!(off.apply_env(env(&[("LOG_SPAN_FIELDS", "off")])).is_empty());
        assert!(!off.log.span_fields);
        let warnings = off.apply_env(env(&[("LOG_SPAN_FIELDS", "maybe")]));
        assert!(
            warnings[0].contains("LOG_SPAN_FIELDS=\"maybe\""),
            "{warnings:?}"
        );
        assert!(!off.log.span_fields);
        assert_eq!(
            c.metrics.buckets_for_metric["outbox_pending"],
            vec![1.0, 10.0, 100.0]
        );
    }
}
