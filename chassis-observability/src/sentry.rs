//! Sentry error reporting, set up by the same [`Telemetry::builder`](crate::Telemetry::builder)
//! call as logs and traces (crate feature `sentry`).
//!
//! With a DSN (`SENTRY_DSN`, or [`SentryConfig::dsn`]):
//!
//! - every event logged at ERROR becomes a Sentry event: its message and fields (the fields in
//!   the "Rust Tracing Fields" context, `tags.*` fields as tags), `release` `name@version` of the
//!   [`ServiceInfo`] (or `SENTRY_RELEASE`), `environment` the service's `deployment.environment`
//!   (or `SENTRY_ENVIRONMENT`), the tags `service.name` and `service.instance.id`, and the
//!   OpenTelemetry trace id and span id of the span it was logged in, both in the event's `trace`
//!   context and as the tag `trace_id`, so an issue leads to its trace and the trace's logs;
//! - WARN events (and INFO ones with [`SentryBreadcrumbs::Info`]) are kept as breadcrumbs of the
//!   next error event;
//! - a handler panic is an event too: chassis-http's catch-panic layer logs it at ERROR with the
//!   panic message in the field `panic`, which becomes the event's exception (type `panic`, the
//!   message as its value), so each distinct panic is an issue of its own (no stack trace: the
//!   panic was caught and unwound before it was logged);
//! - [`Telemetry::shutdown`](crate::Telemetry::shutdown) (and, best effort, dropping the
//!   guard) sends what is still queued before the service exits.
//!
//! Without a DSN nothing is set up: no thread, no layer, no request.
//!
//! Traces stay OpenTelemetry's: no Sentry transactions are created (so there is no
//! `SENTRY_TRACES_SAMPLE_RATE`), but the trace context is exchanged with services that use a Sentry
//! SDK: [`SentryTracePropagator`] (part of the [`propagation`](crate::propagation) functions with
//! this feature) continues an incoming `sentry-trace` header when no `traceparent` came with it,
//! and writes `sentry-trace: {trace_id}-{span_id}-{sampled}` beside every `traceparent`; Sentry's
//! `baggage` entries (`sentry-trace_id`, `sentry-public_key`, ...) travel with the W3C Baggage
//! propagator like any other entry.
//! This part depends on the feature only, not on a DSN: a service that reports nothing itself
//! still passes the trace on from a caller on a Sentry SDK to its own callees.
//!
//! # Transport
//!
//! Envelopes are sent by a transport of this crate: one background thread with a small tokio
//! runtime and a hyper client over hyper-rustls with rustls's ring provider (the platform's and
//! Mozilla's roots), like the OTLP exporter. Sentry's own reqwest transport is not used: its
//! `rustls` feature brings aws-lc-rs in as a second crypto provider, and since Cargo unifies
//! features, it would change the TLS features of every reqwest client in a service's tree. The
//! queue is bounded ([`SentryConfig::queue_size`]): while Sentry is unreachable, new envelopes
//! are dropped rather than held; a `429` answer pauses sending for its `Retry-After`.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use chassis_core::ServiceInfo;
//! use chassis_observability::Telemetry;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), chassis_observability::Error> {
//! // SENTRY_DSN=https://public@o1.ingest.sentry.io/2 DEPLOYMENT_ENVIRONMENT=production
//! let telemetry = Telemetry::builder(ServiceInfo::from_env("orders", "1.2.0")).init()?;
//!
//! let span = tracing::info_span!("place_order");
//! span.in_scope(|| {
//!     tracing::warn!("payment slow"); // a breadcrumb
//!     // An event with release orders@1.2.0, the service tags and this span's trace id:
//!     tracing::error!(order.id = 42, "payment failed");
//! });
//! // Events can also be captured by hand through the hub:
//! if let Some(sentry) = telemetry.sentry() {
//!     sentry.hub().capture_message("cache rebuilt", sentry::Level::Info);
//! }
//! # use chassis_observability::sentry::sentry_core as sentry;
//! telemetry.shutdown(Duration::from_secs(5)).await?; // sends what is queued
//! # Ok(())
//! # }
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chassis_core::ServiceInfo;
use http_body_util::{BodyExt as _, Full};
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
};
use sentry_core::protocol::{Context as SentryContext, TraceContext};
use sentry_core::types::Dsn;
use sentry_core::{ClientOptions, Envelope, Hub, Scope, Transport};
use tokio::sync::mpsc;
use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

pub use sentry_core;

use crate::config::{SentryBreadcrumbs, SentryConfig};
use crate::{Error, ErrorKind};

/// The `sentry-trace` header name.
pub const SENTRY_TRACE: &str = "sentry-trace";

/// Where the transport's own logs go; they are never sent to Sentry (a failing send would
/// otherwise report itself).
const TARGET: &str = "chassis_observability::sentry";

const USER_AGENT: &str = concat!("chassis-observability/", env!("CARGO_PKG_VERSION"));

/// The Sentry side of a running telemetry pipeline: the hub the chassis layer reports to. Get it
/// from [`Telemetry::sentry`](crate::Telemetry::sentry) to capture events by hand or
/// to configure the scope (a user, more tags).
#[derive(Clone)]
pub struct SentryHandle {
    hub: Arc<Hub>,
    client: Arc<sentry_core::Client>,
}

impl std::fmt::Debug for SentryHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options = self.client.options();
        f.debug_struct("SentryHandle")
            .field("release", &options.release)
            .field("environment", &options.environment)
            .finish_non_exhaustive()
    }
}

impl SentryHandle {
    /// The hub events are captured through. It is the chassis's own hub, not bound to
    /// `sentry_core::Hub::main()`, so building telemetry twice (in tests) never mixes clients.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Waits until the events captured so far are sent, at most `timeout`; returns whether it
    /// got there.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.client.flush(Some(timeout))
    }

    /// Sends what is queued (at most `timeout`) and stops the transport; later events are
    /// dropped. Blocking: from async code, call it on a blocking thread.
    pub(crate) fn close(&self, timeout: Duration) -> bool {
        self.client.close(Some(timeout))
    }
}

/// The boxed, filtered `tracing` layer for a subscriber `S`.
pub(crate) type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

/// Builds the client, the hub and the filtered layer for `config`; `None` without a DSN.
pub(crate) fn start<S>(
    service: &ServiceInfo,
    config: &SentryConfig,
) -> Result<Option<(BoxedLayer<S>, SentryHandle)>, Error>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if !config.is_enabled() {
        return Ok(None);
    }
    config.validate()?;
    let dsn: Dsn = config
        .dsn
        .as_ref()
        .map(|d| d.expose().trim())
        .unwrap_or_default()
        .parse()
        .map_err(|e| {
            // The DSN carries the project's key: say what is wrong, not what it is.
            Error::with_source(
                ErrorKind::InvalidConfig {
                    reason: format!("SENTRY_DSN / sentry.dsn is not a valid DSN: {e}"),
                },
                e,
            )
        })?;
    let transport: Arc<dyn Transport> = Arc::new(HyperTransport::spawn(&dsn, config)?);
    let release = config
        .release
        .clone()
        .unwrap_or_else(|| format!("{}@{}", service.name, service.version));
    let environment = config
        .environment
        .clone()
        .unwrap_or_else(|| service.environment.clone());
    let options = ClientOptions {
        dsn: Some(dsn),
        release: Some(release.into()),
        environment: Some(environment.into()),
        server_name: Some(service.instance_id.clone().into()),
        sample_rate: config.sample_rate,
        user_agent: USER_AGENT.into(),
        transport: Some(Arc::new(move |_: &ClientOptions| Arc::clone(&transport))),
        ..ClientOptions::default()
    };
    let client = Arc::new(sentry_core::Client::with_options(options));
    let mut scope = Scope::default();
    scope.set_tag("service.name", &service.name);
    scope.set_tag("service.instance.id", &service.instance_id);
    let hub = Arc::new(Hub::new(Some(Arc::clone(&client)), Arc::new(scope)));
    let layer = SentryLayer {
        hub: Arc::clone(&hub),
        breadcrumbs: config.breadcrumbs,
    };
    let filter = tracing_subscriber::filter::filter_fn(layer.filter());
    Ok(Some((
        layer.with_filter(filter).boxed(),
        SentryHandle { hub, client },
    )))
}

/// The `tracing` layer: ERROR events become Sentry events, the configured lower levels
/// breadcrumbs. Filtered per layer (see [`SentryLayer::filter`]) so other events never reach it.
struct SentryLayer {
    hub: Arc<Hub>,
    breadcrumbs: SentryBreadcrumbs,
}

impl SentryLayer {
    /// The per-layer filter: events only, at the levels this layer uses, and none of the HTTP
    /// stack's or this module's own (a send failure must not report itself).
    fn filter(&self) -> impl Fn(&Metadata<'_>) -> bool + Send + Sync + 'static {
        let lowest = match self.breadcrumbs {
            SentryBreadcrumbs::Off => Level::ERROR,
            SentryBreadcrumbs::Warn => Level::WARN,
            SentryBreadcrumbs::Info => Level::INFO,
        };
        move |meta| meta.is_event() && *meta.level() <= lowest && !is_own_target(meta.target())
    }
}

fn is_own_target(target: &str) -> bool {
    const EXCLUDED: [&str; 5] = [TARGET, "hyper", "hyper_util", "h2", "rustls"];
    EXCLUDED.iter().any(|prefix| {
        target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

impl<S> Layer<S> for SentryLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() == Level::ERROR {
            let mut sentry_event = sentry_tracing::event_from_event(event, None::<&Context<'_, S>>);
            // The span context tracing-opentelemetry attached when the event's span was
            // entered; the same ids as the JSON log line's `trace_id` and `span_id`.
            let ids = opentelemetry::Context::map_current(|cx| {
                let span = cx.span();
                let sc = span.span_context();
                sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
            });
            if let Some((trace_id, span_id)) = ids {
                sentry_event
                    .tags
                    .insert("trace_id".to_owned(), trace_id.to_string());
                let trace = TraceContext {
                    trace_id: trace_id.to_bytes().into(),
                    span_id: span_id.to_bytes().into(),
                    ..TraceContext::default()
                };
                sentry_event
                    .contexts
                    .insert("trace".to_owned(), SentryContext::Trace(Box::new(trace)));
            }
            add_panic_exception(&mut sentry_event);
            self.hub.capture_event(sentry_event);
        } else {
            self.hub
                .add_breadcrumb(sentry_tracing::breadcrumb_from_event(
                    event,
                    None::<&Context<'_, S>>,
                ));
        }
    }
}

/// An ERROR event with a `panic` field (chassis-http's catch-panic layer logs handler panics so)
/// gets an exception of type `panic` whose value is the panic message: Sentry titles and groups
/// an issue by its exception, so each panic has its own issue rather than all of them sharing
/// the log message "request handler panicked".
fn add_panic_exception(event: &mut sentry_core::protocol::Event<'static>) {
    if !event.exception.values.is_empty() {
        return;
    }
    let Some(SentryContext::Other(fields)) = event.contexts.get("Rust Tracing Fields") else {
        return;
    };
    let Some(sentry_core::protocol::Value::String(message)) = fields.get("panic") else {
        return;
    };
    let exception = sentry_core::protocol::Exception {
        ty: "panic".to_owned(),
        value: Some(message.clone()),
        module: event.logger.clone(),
        mechanism: Some(sentry_core::protocol::Mechanism {
            ty: "panic".to_owned(),
            handled: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    event.exception.values.push(exception);
}

enum Task {
    /// Boxed: an envelope is some 450 bytes, and every slot of the queue is as large as a task.
    Send(Box<Envelope>),
    /// Answered once every task queued before it is done.
    Flush(std::sync::mpsc::SyncSender<()>),
}

/// Sends envelopes from a thread of its own, in order, over hyper + rustls (ring).
struct HyperTransport {
    tx: mpsc::Sender<Task>,
}

type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

impl HyperTransport {
    fn spawn(dsn: &Dsn, config: &SentryConfig) -> Result<Self, Error> {
        let url: http::Uri = dsn.envelope_api_url().as_str().parse().map_err(|e| {
            Error::with_source(
                ErrorKind::InvalidConfig {
                    reason: format!("the Sentry envelope URL of the DSN is not a URI: {e}"),
                },
                e,
            )
        })?;
        let auth = dsn.to_auth(Some(USER_AGENT)).to_string();
        let tls = tls_config()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| start_error("runtime", e))?;
        let (tx, rx) = mpsc::channel(config.queue_size);
        let sender = Sender {
            url,
            auth,
            timeout: config.timeout,
            paused_until: None,
            failing: false,
        };
        std::thread::Builder::new()
            .name("chassis-sentry".into())
            .spawn(move || {
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls)
                    .https_or_http()
                    .enable_http1()
                    .build();
                let client: HttpsClient = hyper_util::client::legacy::Client::builder(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .build(connector);
                runtime.block_on(sender.run(client, rx));
            })
            .map_err(|e| start_error("thread", e))?;
        Ok(Self { tx })
    }
}

fn start_error(what: &str, e: std::io::Error) -> Error {
    Error::with_source(
        ErrorKind::InvalidConfig {
            reason: format!("cannot start the Sentry transport's {what}: {e}"),
        },
        e,
    )
}

/// rustls with the ring provider, trusting the platform's roots and Mozilla's.
fn tls_config() -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let native = rustls_native_certs::load_native_certs();
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    if !native.errors.is_empty() || ignored > 0 {
        tracing::debug!(target: TARGET, added, ignored, errors = ?native.errors,
            "some platform root certificates could not be loaded");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| {
            Error::with_source(
                ErrorKind::Tls {
                    reason: format!("Sentry transport: {e}"),
                },
                e,
            )
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Transport for HyperTransport {
    fn send_envelope(&self, envelope: Envelope) {
        if self.tx.try_send(Task::Send(Box::new(envelope))).is_err() {
            tracing::debug!(target: TARGET, "Sentry queue full or closed: envelope dropped");
        }
    }

    fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let (done, finished) = std::sync::mpsc::sync_channel(1);
        let mut task = Task::Flush(done);
        loop {
            match self.tx.try_send(task) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(t)) if Instant::now() < deadline => {
                    task = t;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(mpsc::error::TrySendError::Full(_)) => return false,
                // The thread is gone: nothing is waiting any more.
                Err(mpsc::error::TrySendError::Closed(_)) => return true,
            }
        }
        finished
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .is_ok()
    }
}

/// The transport thread's state.
struct Sender {
    url: http::Uri,
    auth: String,
    timeout: Duration,
    /// Set by a `429` answer: nothing is sent before then.
    paused_until: Option<Instant>,
    /// Whether the last send failed, so a failure is logged once, not per event.
    failing: bool,
}

impl Sender {
    async fn run(mut self, client: HttpsClient, mut rx: mpsc::Receiver<Task>) {
        while let Some(task) = rx.recv().await {
            match task {
                Task::Flush(done) => {
                    let _ = done.try_send(());
                }
                Task::Send(envelope) => self.send(&client, envelope).await,
            }
        }
    }

    async fn send(&mut self, client: &HttpsClient, envelope: Box<Envelope>) {
        if self.paused_until.is_some_and(|t| Instant::now() < t) {
            tracing::debug!(target: TARGET, "Sentry asked to wait: envelope dropped");
            return;
        }
        self.paused_until = None;
        let mut body = Vec::new();
        if let Err(e) = envelope.to_writer(&mut body) {
            tracing::debug!(target: TARGET, error = %e, "cannot serialise a Sentry envelope");
            return;
        }
        let request = http::Request::post(self.url.clone())
            .header("x-sentry-auth", &self.auth)
            .header(http::header::CONTENT_TYPE, "application/x-sentry-envelope")
            .header(http::header::USER_AGENT, USER_AGENT)
            .body(Full::new(Bytes::from(body)));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(target: TARGET, error = %e, "cannot build a Sentry request");
                return;
            }
        };
        let outcome = match tokio::time::timeout(self.timeout, client.request(request)).await {
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
            Ok(Err(e)) => Err(e.to_string()),
            Ok(Ok(response)) => {
                let status = response.status();
                if status == http::StatusCode::TOO_MANY_REQUESTS {
                    let wait = response
                        .headers()
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .filter(|s| s.is_finite() && *s >= 0.0)
                        .map_or(Duration::from_secs(60), Duration::from_secs_f64);
                    self.paused_until = Some(Instant::now() + wait);
                }
                // Read to the end, so the connection can be reused.
                let _ = response.into_body().collect().await;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("Sentry answered {status}"))
                }
            }
        };
        match outcome {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!(target: TARGET, "events reach Sentry again");
            }
            Ok(()) => {}
            Err(reason) if !self.failing => {
                self.failing = true;
                tracing::warn!(target: TARGET, %reason,
                    "cannot send events to Sentry; dropping them until it works again");
            }
            Err(_) => {}
        }
    }
}

/// The `sentry-trace` header for services instrumented with a Sentry SDK, beside W3C Trace
/// Context: `{trace_id}-{span_id}-{sampled}`, 32 and 16 lowercase hex digits and `1` or `0`.
///
/// - **Inject** writes it for every valid span context, from the same ids as `traceparent`.
/// - **Extract** continues it only when the context has no remote span yet: placed after the
///   W3C propagator (as [`text_map_propagator`](crate::propagation::text_map_propagator) does
///   with the `sentry` feature), a valid `traceparent` wins and `sentry-trace` is the fallback.
///   Without the sampled flag (Sentry's "deferred" decision) the span is taken as sampled, so a
///   parent-based sampler records the trace rather than losing it. A malformed value is ignored.
///
/// ```
/// use chassis_observability::propagation::{extract_context, inject_context, HeaderExtractor, HeaderInjector};
/// use opentelemetry::trace::TraceContextExt;
///
/// let mut incoming = http::HeaderMap::new();
/// incoming.insert("sentry-trace", "771a43a4192642f0b136d5159a501700-a1b2c3d4e5f60718-1".parse().unwrap());
/// let cx = extract_context(&HeaderExtractor(&incoming));
/// assert_eq!(cx.span().span_context().trace_id().to_string(), "771a43a4192642f0b136d5159a501700");
///
/// let mut outgoing = http::HeaderMap::new();
/// inject_context(&cx, &mut HeaderInjector(&mut outgoing));
/// assert_eq!(outgoing["sentry-trace"], "771a43a4192642f0b136d5159a501700-a1b2c3d4e5f60718-1");
/// assert_eq!(outgoing["traceparent"], "00-771a43a4192642f0b136d5159a501700-a1b2c3d4e5f60718-01");
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct SentryTracePropagator {
    _private: (),
}

impl SentryTracePropagator {
    /// The propagator.
    pub fn new() -> Self {
        Self::default()
    }
}

impl TextMapPropagator for SentryTracePropagator {
    fn inject_context(&self, cx: &opentelemetry::Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            injector.set(SENTRY_TRACE, format_sentry_trace(sc));
        }
    }

    fn extract_with_context(
        &self,
        cx: &opentelemetry::Context,
        extractor: &dyn Extractor,
    ) -> opentelemetry::Context {
        if cx.span().span_context().is_valid() {
            return cx.clone();
        }
        match extractor.get(SENTRY_TRACE).and_then(parse_sentry_trace) {
            Some(sc) => cx.with_remote_span_context(sc),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(sentry_trace_field())
    }
}

fn sentry_trace_field() -> &'static [String] {
    static FIELD: std::sync::OnceLock<[String; 1]> = std::sync::OnceLock::new();
    FIELD.get_or_init(|| [SENTRY_TRACE.to_owned()])
}

/// `{trace_id}-{span_id}-{1|0}` for `sc`.
pub fn format_sentry_trace(sc: &SpanContext) -> String {
    format!(
        "{}-{}-{}",
        sc.trace_id(),
        sc.span_id(),
        if sc.is_sampled() { '1' } else { '0' }
    )
}

/// A remote span context from a `sentry-trace` value, `None` when it is malformed (ids of the
/// wrong length, upper-case or non-hex digits, all-zero ids, a flag other than `1` or `0`,
/// anything after it). Surrounding spaces are allowed.
pub fn parse_sentry_trace(value: &str) -> Option<SpanContext> {
    let mut parts = value.trim().split('-');
    let trace_id = parts.next().filter(|p| is_lower_hex(p, 32))?;
    let span_id = parts.next().filter(|p| is_lower_hex(p, 16))?;
    let sampled = match parts.next() {
        None | Some("1") => true,
        Some("0") => false,
        Some(_) => return None,
    };
    if parts.next().is_some() {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_hex(span_id).ok()?;
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let sc = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    sc.is_valid().then_some(sc)
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const TRACE: &str = "771a43a4192642f0b136d5159a501700";
    const SPAN: &str = "a1b2c3d4e5f60718";

    #[test]
    fn sentry_trace_parses_and_formats() {
        let sc = parse_sentry_trace(&format!("{TRACE}-{SPAN}-1")).unwrap();
        assert_eq!(sc.trace_id().to_string(), TRACE);
        assert_eq!(sc.span_id().to_string(), SPAN);
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(format_sentry_trace(&sc), format!("{TRACE}-{SPAN}-1"));

        let unsampled = parse_sentry_trace(&format!(" {TRACE}-{SPAN}-0 ")).unwrap();
        assert!(!unsampled.is_sampled());
        assert_eq!(format_sentry_trace(&unsampled), format!("{TRACE}-{SPAN}-0"));
        // Deferred: taken as sampled.
        assert!(
            parse_sentry_trace(&format!("{TRACE}-{SPAN}"))
                .unwrap()
                .is_sampled()
        );
    }

    #[test]
    fn malformed_sentry_trace_is_ignored() {
        for bad in [
            String::new(),
            "garbage".to_owned(),
            TRACE.to_owned(),
            format!("{TRACE}-{SPAN}-2"),
            format!("{TRACE}-{SPAN}-1-extra"),
            format!("{}-{SPAN}-1", TRACE.to_uppercase()),
            format!("{}-{SPAN}-1", &TRACE[1..]),
            format!("{TRACE}-{}-1", &SPAN[1..]),
            format!("{TRACE}-{SPAN}x-1"),
            format!("{}-{SPAN}-1", "0".repeat(32)),
            format!("{TRACE}-{}-1", "0".repeat(16)),
            format!("{TRACE}--{SPAN}-1"),
        ] {
            assert!(parse_sentry_trace(&bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn propagator_round_trip_and_traceparent_wins() {
        let p = SentryTracePropagator::new();
        let mut carrier = HashMap::new();
        carrier.insert(SENTRY_TRACE.to_owned(), format!("{TRACE}-{SPAN}-0"));
        let cx = p.extract(&carrier);
        let mut out = HashMap::new();
        p.inject_context(&cx, &mut out);
        assert_eq!(out[SENTRY_TRACE], format!("{TRACE}-{SPAN}-0"));
        assert_eq!(p.fields().collect::<Vec<_>>(), [SENTRY_TRACE]);

        // A context that already has a span keeps it.
        let other = crate::test_support::span_context(
            "0af7651916cd43dd8448eb211c80319c",
            "b7ad6b7169203331",
            TraceFlags::SAMPLED,
            true,
        );
        let base = opentelemetry::Context::new().with_remote_span_context(other.clone());
        let kept = p.extract_with_context(&base, &carrier);
        assert_eq!(kept.span().span_context(), &other);

        // Nothing valid to inject: nothing written.
        let mut out = HashMap::new();
        p.inject_context(&opentelemetry::Context::new(), &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn own_targets_are_not_reported() {
        assert!(is_own_target(TARGET));
        assert!(is_own_target("hyper_util::client::legacy"));
        assert!(is_own_target("hyper"));
        assert!(!is_own_target("hyperion"));
        assert!(!is_own_target("chassis_http::panic"));
    }
}
