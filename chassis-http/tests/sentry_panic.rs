//! A handler panic caught by the guard layer reaches Sentry (chassis-observability's `sentry`
//! feature): the guard logs it at ERROR, the Sentry layer turns that into an event whose
//! exception is the panic message, in the request's trace. The event is sent to a Sentry
//! endpoint on loopback and parsed with sentry-types.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use chassis_core::ServiceInfo;
use chassis_http::layers::guard::{GuardLayer, LimitedBody};
use chassis_http::layers::server_span::ServerSpanLayer;
use chassis_observability::config::{SentryConfig, TelemetryConfig};
use chassis_observability::{Secret, Telemetry};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sentry_types::protocol::v7::{Context, Envelope, Event};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::{ServiceBuilder, ServiceExt as _};
use tracing::instrument::WithSubscriber as _;

/// A Sentry endpoint on 127.0.0.1:<ephemeral>: every request body parsed as an envelope.
async fn sentry_endpoint() -> (String, mpsc::UnboundedReceiver<Envelope>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dsn = format!("http://public@{}/1", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<Incoming>| {
                    let tx = tx.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let _ = tx.send(Envelope::from_slice(&body).expect("a valid envelope"));
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                            b"{}",
                        ))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (dsn, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_becomes_a_sentry_event_in_the_request_trace() {
    let (dsn, mut envelopes) = sentry_endpoint().await;
    let service = ServiceInfo {
        name: "orders".into(),
        version: "1.2.3".into(),
        environment: "staging".into(),
        instance_id: "orders-1".into(),
    };
    let config = TelemetryConfig {
        sentry: SentryConfig {
            dsn: Some(Secret::new(dsn)),
            ..SentryConfig::default()
        },
        ..TelemetryConfig::default()
    };
    let (dispatch, guard) = Telemetry::builder(service)
        .ignore_env()
        .config(config)
        .make_writer(std::io::sink)
        .install_metrics_recorder(false)
        .build()
        .unwrap();

    let svc = ServiceBuilder::new()
        .layer(ServerSpanLayer::new())
        .layer(GuardLayer::errors_only().catch_panic(true))
        .service(tower::service_fn(
            |_req: http::Request<LimitedBody<Empty<Bytes>>>| async {
                if true {
                    panic!("order 42 has no lines");
                }
                Ok::<_, Infallible>(http::Response::new(String::new()))
            },
        ));
    let request = http::Request::get("/orders/42")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .body(Empty::<Bytes>::new())
        .unwrap();
    let response = svc
        .oneshot(request)
        .with_subscriber(dispatch)
        .await
        .unwrap();
    assert_eq!(response.status(), 500);
    guard.shutdown(Duration::from_secs(5)).await.unwrap();

    let events: Vec<Event<'static>> = std::iter::from_fn(|| envelopes.try_recv().ok())
        .filter_map(|e| e.event().cloned())
        .collect();
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.message.as_deref(), Some("request handler panicked"));
    let exception = &event.exception.values[..];
    assert_eq!(exception.len(), 1, "{exception:?}");
    assert_eq!(exception[0].ty, "panic");
    assert_eq!(exception[0].value.as_deref(), Some("order 42 has no lines"));
    assert_eq!(event.release.as_deref(), Some("orders@1.2.3"));
    assert_eq!(event.environment.as_deref(), Some("staging"));
    assert_eq!(
        event.tags.get("trace_id").map(String::as_str),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    match event.contexts.get("trace") {
        Some(Context::Trace(trace)) => {
            assert_eq!(
                trace.trace_id.to_string(),
                "4bf92f3577b34da6a3ce929d0e0e4736"
            )
        }
        other => panic!("no trace context: {other:?}"),
    }
}
