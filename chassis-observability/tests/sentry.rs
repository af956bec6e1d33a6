//! The `sentry` feature end to end: real envelopes sent to a Sentry endpoint on loopback, parsed
//! with sentry-types.
#![cfg(feature = "sentry")]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chassis_core::ServiceInfo;
use chassis_observability::config::{SentryConfig, TelemetryConfig};
use chassis_observability::propagation::{
    HeaderExtractor, HeaderInjector, extract_context, inject_current,
};
use chassis_observability::{Secret, Telemetry};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use opentelemetry::trace::TraceContextExt as _;
use sentry_types::protocol::v7::{Context, Envelope, Event, Level};
use support::{Background, assert_child_passed, http1_server, run_env_child};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// One request the endpoint received.
struct Received {
    path: String,
    auth: String,
    envelope: Envelope,
}

/// A Sentry endpoint on 127.0.0.1:<ephemeral>: parses every request body as an envelope.
struct SentryEndpoint {
    addr: SocketAddr,
    requests: mpsc::UnboundedReceiver<Received>,
    _server: Background,
}

impl SentryEndpoint {
    async fn start() -> Self {
        let (tx, requests) = mpsc::unbounded_channel();
        let (addr, server) = http1_server(move |req: Request<Incoming>| {
            let tx = tx.clone();
            async move {
                let path = req.uri().path().to_owned();
                let auth = req
                    .headers()
                    .get("x-sentry-auth")
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let envelope = Envelope::from_slice(&body).expect("a valid envelope");
                let _ = tx.send(Received {
                    path,
                    auth,
                    envelope,
                });
                Response::new(Full::new(Bytes::from_static(b"{}")))
            }
        })
        .await;
        Self {
            addr,
            requests,
            _server: server,
        }
    }

    fn dsn(&self) -> String {
        format!("http://public@{}/1", self.addr)
    }

    /// The events received so far (the endpoint's queue is drained).
    fn events(&mut self) -> Vec<(Received, Event<'static>)> {
        let mut out = Vec::new();
        while let Ok(r) = self.requests.try_recv() {
            let event = r.envelope.event().cloned();
            if let Some(event) = event {
                out.push((r, event));
            }
        }
        out
    }
}

fn service() -> ServiceInfo {
    ServiceInfo {
        name: "orders".into(),
        version: "1.2.3".into(),
        environment: "staging".into(),
        instance_id: "orders-7".into(),
    }
}

fn config(dsn: Option<String>) -> TelemetryConfig {
    TelemetryConfig {
        sentry: SentryConfig {
            dsn: dsn.map(Secret::new),
            ..SentryConfig::default()
        },
        ..TelemetryConfig::default()
    }
}

fn build(config: TelemetryConfig) -> (tracing::Dispatch, Telemetry) {
    Telemetry::builder(service())
        .ignore_env()
        .config(config)
        .make_writer(std::io::sink)
        .install_metrics_recorder(false)
        .build()
        .unwrap()
}

fn tag<'a>(event: &'a Event<'_>, key: &str) -> Option<&'a str> {
    event.tags.get(key).map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_events_carry_release_environment_service_tags_and_trace_id() {
    let mut endpoint = SentryEndpoint::start().await;
    let (dispatch, guard) = build(config(Some(endpoint.dsn())));
    assert!(guard.sentry().is_some());

    let trace_id = tracing::dispatcher::with_default(&dispatch, || {
        tracing::info!("not a breadcrumb by default");
        let span = tracing::info_span!("place_order");
        let _entered = span.enter();
        tracing::warn!(attempt = 2, "payment slow");
        tracing::error!(order.id = 42, "payment failed");
        tracing::debug!("never reported");
        span.context().span().span_context().trace_id().to_string()
    });
    // Nothing is flushed by hand: the guard's shutdown sends what is queued.
    guard.shutdown(Duration::from_secs(5)).await.unwrap();

    let events = endpoint.events();
    assert_eq!(events.len(), 1, "one ERROR, one event");
    let (request, event) = &events[0];
    assert_eq!(request.path, "/api/1/envelope/");
    assert!(
        request.auth.contains("sentry_key=public"),
        "{}",
        request.auth
    );

    assert_eq!(event.level, Level::Error);
    assert_eq!(event.message.as_deref(), Some("payment failed"));
    assert_eq!(event.release.as_deref(), Some("orders@1.2.3"));
    assert_eq!(event.environment.as_deref(), Some("staging"));
    assert_eq!(event.server_name.as_deref(), Some("orders-7"));
    assert_eq!(tag(event, "service.name"), Some("orders"));
    assert_eq!(tag(event, "service.instance.id"), Some("orders-7"));
    assert_eq!(tag(event, "trace_id"), Some(trace_id.as_str()));
    match event.contexts.get("trace") {
        Some(Context::Trace(trace)) => assert_eq!(trace.trace_id.to_string(), trace_id),
        other => panic!("no trace context: {other:?}"),
    }
    match event.contexts.get("Rust Tracing Fields") {
        Some(Context::Other(fields)) => assert_eq!(fields["order.id"], 42),
        other => panic!("no fields: {other:?}"),
    }
    // The WARN before it is a breadcrumb; INFO and DEBUG are not.
    let crumbs: Vec<_> = event
        .breadcrumbs
        .values
        .iter()
        .filter_map(|b| b.message.as_deref())
        .collect();
    assert_eq!(crumbs, ["payment slow"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dsn_nothing_is_sent() {
    let mut endpoint = SentryEndpoint::start().await;
    let (dispatch, guard) = build(config(None));
    assert!(guard.sentry().is_none());
    tracing::dispatcher::with_default(&dispatch, || {
        tracing::error!("not for Sentry");
    });
    guard.shutdown(Duration::from_secs(5)).await.unwrap();
    // Compare: the same line with a DSN reaches the endpoint by the end of shutdown.
    assert!(endpoint.requests.try_recv().is_err(), "no request");

    let (dispatch, guard) = build(config(Some(endpoint.dsn())));
    tracing::dispatcher::with_default(&dispatch, || tracing::error!("for Sentry"));
    guard.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(endpoint.events().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_sentry_does_not_hold_shutdown_past_its_deadline() {
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dsn = format!("http://public@{}/1", closed.local_addr().unwrap());
    drop(closed);
    let (dispatch, guard) = build(config(Some(dsn)));
    tracing::dispatcher::with_default(&dispatch, || {
        for i in 0..200 {
            tracing::error!(i, "lost");
        }
    });
    let started = Instant::now();
    let _ = guard.shutdown(Duration::from_secs(1)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_dsn_fails_the_build_without_showing_it() {
    let err = Telemetry::builder(service())
        .ignore_env()
        .config(config(Some("not-a-dsn-s3cr3t".into())))
        .make_writer(std::io::sink)
        .install_metrics_recorder(false)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("SENTRY_DSN"), "{err}");
    assert!(!err.to_string().contains("s3cr3t"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentry_trace_and_baggage_are_continued_and_sent_on() {
    let (dispatch, _guard) = build(config(None));
    let mut incoming = http::HeaderMap::new();
    incoming.insert(
        "sentry-trace",
        "771a43a4192642f0b136d5159a501700-a1b2c3d4e5f60718-1"
            .parse()
            .unwrap(),
    );
    incoming.insert(
        "baggage",
        "sentry-trace_id=771a43a4192642f0b136d5159a501700,sentry-public_key=public,sentry-sample_rate=1"
            .parse()
            .unwrap(),
    );
    let outgoing = tracing::dispatcher::with_default(&dispatch, || {
        let span = tracing::info_span!("handle");
        let _ = span.set_parent(extract_context(&HeaderExtractor(&incoming)));
        let _entered = span.enter();
        let mut outgoing = http::HeaderMap::new();
        inject_current(&mut HeaderInjector(&mut outgoing));
        let span_id = span.context().span().span_context().span_id().to_string();
        (outgoing, span_id)
    });
    let (headers, span_id) = outgoing;
    // Same trace, this service's span as the parent, in both formats.
    assert_eq!(
        headers["sentry-trace"],
        format!("771a43a4192642f0b136d5159a501700-{span_id}-1").as_str()
    );
    // (The W3C flags also say the trace-id is random: this service is the first W3C hop.)
    let traceparent = headers["traceparent"].to_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-771a43a4192642f0b136d5159a501700-{span_id}-0")),
        "{traceparent}"
    );
    assert!(
        traceparent.ends_with('1') || traceparent.ends_with('3'),
        "sampled: {traceparent}"
    );
    let baggage = headers["baggage"].to_str().unwrap();
    for entry in [
        "sentry-trace_id=771a43a4192642f0b136d5159a501700",
        "sentry-public_key=public",
        "sentry-sample_rate=1",
    ] {
        assert!(baggage.contains(entry), "{baggage}");
    }

    // A traceparent that came with it wins.
    incoming.insert(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
            .parse()
            .unwrap(),
    );
    let cx = extract_context(&HeaderExtractor(&incoming));
    assert_eq!(
        cx.span().span_context().trace_id().to_string(),
        "0af7651916cd43dd8448eb211c80319c"
    );
}

/// Run by [`environment_variables_configure_sentry`] in a child process: `init` from the
/// environment, one error, shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run in a child process by environment_variables_configure_sentry"]
async fn env_child() {
    let guard = Telemetry::builder(ServiceInfo::from_env("billing", "2.0.0"))
        .make_writer(std::io::sink)
        .init()
        .unwrap();
    assert!(guard.sentry().is_some());
    tracing::info_span!("charge").in_scope(|| tracing::error!("card declined"));
    guard.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_variables_configure_sentry() {
    let mut endpoint = SentryEndpoint::start().await;
    let run = async |vars: Vec<(&'static str, String)>| {
        let cleared = |k: &str| {
            k.starts_with("SENTRY_") || k.starts_with("OTEL_") || k == "DEPLOYMENT_ENVIRONMENT"
        };
        let out = run_env_child(cleared, vars).await;
        assert_child_passed("env_child", &out);
    };

    // Defaults from the service identity.
    run(vec![
        ("SENTRY_DSN", endpoint.dsn()),
        ("DEPLOYMENT_ENVIRONMENT", "production".into()),
    ])
    .await;
    let events = endpoint.events();
    assert_eq!(events.len(), 1);
    let event = &events[0].1;
    assert_eq!(event.release.as_deref(), Some("billing@2.0.0"));
    assert_eq!(event.environment.as_deref(), Some("production"));
    assert_eq!(tag(event, "service.name"), Some("billing"));
    assert!(tag(event, "trace_id").is_some_and(|t| t.len() == 32));

    // SENTRY_RELEASE and SENTRY_ENVIRONMENT override them.
    run(vec![
        ("SENTRY_DSN", endpoint.dsn()),
        ("DEPLOYMENT_ENVIRONMENT", "production".into()),
        ("SENTRY_ENVIRONMENT", "canary".into()),
        ("SENTRY_RELEASE", "billing@2.0.0+abc123".into()),
    ])
    .await;
    let events = endpoint.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1.release.as_deref(), Some("billing@2.0.0+abc123"));
    assert_eq!(events[0].1.environment.as_deref(), Some("canary"));
}
