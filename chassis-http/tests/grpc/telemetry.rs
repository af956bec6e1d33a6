//! The client's telemetry: one client span per attempt with the `rpc.*` fields, the trace
//! context sent under it, and `rpc_client_call_duration_seconds` by method and status code.

use std::sync::Arc;

use chassis_http::grpc::{GrpcClient, GrpcLayers, GrpcRouter};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tonic::Code;
use tower::Layer as _;

use super::support::{Echo, EchoClient, EchoServer, msg, serve};
use crate::common::{LogBuffer, log_spans_to, recorder};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test(flavor = "current_thread")]
async fn each_attempt_has_a_client_span_and_a_duration_sample() {
    let recorder = recorder();
    let handle = recorder.handle();
    let _metrics = metrics::set_default_local_recorder(&recorder);
    let logs = LogBuffer::default();
    let _tracing = log_spans_to(&logs);

    let router = GrpcRouter::new().add_service(EchoServer(Arc::new(Echo::default())));
    let server = serve(GrpcLayers::new().layer(router), None).await;
    let client = GrpcClient::builder("echo", server.url()).build().unwrap();
    let mut echo = EchoClient::new(client);

    let parent = SpanContext::new(
        TraceId::from_hex(TRACE_ID).unwrap(),
        SpanId::from_hex("00f067aa0ba902b7").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let _attached = opentelemetry::Context::new()
        .with_remote_span_context(parent)
        .attach();
    // The handler answers the trace id it runs under: the caller's, sent by the client.
    let got = echo.say(msg("trace")).await.unwrap().into_inner().text;
    assert_eq!(got, TRACE_ID);
    let status = echo.say(msg("fail:5")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let text = handle.render();
    let samples = |code: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("rpc_client_call_duration_seconds_count")
                    && l.contains("rpc_system=\"grpc\"")
                    && l.contains("rpc_service=\"echo.v1.Echo\"")
                    && l.contains("rpc_method=\"Say\"")
                    && l.contains(&format!("rpc_grpc_status_code=\"{code}\""))
            })
            .map(|l| l.rsplit(' ').next().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(samples("0"), ["1"], "{text}");
    assert_eq!(samples("5"), ["1"], "{text}");

    let spans = logs.text();
    let client_spans: Vec<&str> = spans
        .lines()
        .filter(|l| l.contains("grpc.client") && l.contains("close"))
        .collect();
    assert_eq!(client_spans.len(), 2, "{spans}");
    for field in [
        "otel.kind=\"client\"",
        "rpc.system=\"grpc\"",
        "rpc.service=\"echo.v1.Echo\"",
        "rpc.method=\"Say\"",
        "server.address=\"127.0.0.1\"",
    ] {
        assert!(
            client_spans.iter().all(|s| s.contains(field)),
            "{field}: {spans}"
        );
    }
    assert!(
        client_spans[0].contains("rpc.grpc.status_code=0"),
        "{spans}"
    );
    assert!(
        client_spans[1].contains("rpc.grpc.status_code=5"),
        "{spans}"
    );
    assert!(
        client_spans[1].contains("otel.status_code=\"ERROR\""),
        "{spans}"
    );
}
