//! The server side: unary and streaming calls, deadlines, panics, shedding, service tokens,
//! REST and gRPC on one port.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use chassis_http::auth::{RequireServiceTokenLayer, ServiceTokenSource};
use chassis_http::grpc::code::TRACE_ID_KEY;
use chassis_http::grpc::{GrpcClient, GrpcLayers, GrpcRouter, Multiplex};
use chassis_http::layers::StandardLayers;
use http_body_util::{BodyExt as _, Full};
use prost::Message as _;
use tonic::Code;
use tower::Layer as _;

use super::support::{Echo, EchoClient, EchoServer, msg, serve};

fn echo() -> (
    Arc<Echo>,
    GrpcRouter<chassis_http::layers::guard::LimitedBody<hyper::body::Incoming>>,
) {
    let echo = Arc::new(Echo::default());
    let router = GrpcRouter::new().add_service(EchoServer(Arc::clone(&echo)));
    (echo, router)
}

#[tokio::test]
async fn unary_and_server_streaming_calls() {
    let (_echo, router) = echo();
    let server = serve(GrpcLayers::new().layer(router), None).await;
    let mut client = EchoClient::new(server.channel().await);
    assert_eq!(
        client.say(msg("hello")).await.unwrap().into_inner().text,
        "hello"
    );
    let mut stream = client.count(3).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(item) = stream.message().await.unwrap() {
        got.push(item.text);
    }
    assert_eq!(got, ["1", "2", "3"]);
}

#[tokio::test]
async fn unknown_services_are_unimplemented() {
    let (_echo, router) = echo();
    let server = serve(GrpcLayers::new().layer(router), None).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(server.channel().await);
    let err = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

fn traced(text: &str) -> tonic::Request<super::support::Msg> {
    let mut req = tonic::Request::new(msg(text));
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    req
}

#[tokio::test]
async fn the_callers_trace_context_reaches_the_handler() {
    let (_echo, router) = echo();
    let server = serve(GrpcLayers::new().layer(router), None).await;
    let mut client = EchoClient::new(server.channel().await);
    let got = client.say(traced("trace")).await.unwrap().into_inner().text;
    assert_eq!(got, TRACE_ID);
}

#[tokio::test]
async fn a_panicking_handler_is_internal_with_the_trace_id() {
    let (_echo, router) = echo();
    let server = serve(GrpcLayers::new().layer(router), None).await;
    let mut client = EchoClient::new(server.channel().await);
    let status = client.say(traced("panic")).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(!status.message().contains("handler bug"), "{status:?}");
    assert_eq!(status.metadata().get(TRACE_ID_KEY).unwrap(), TRACE_ID);
    // The connection and other calls are unaffected.
    assert_eq!(
        client.say(msg("after")).await.unwrap().into_inner().text,
        "after"
    );
}

#[tokio::test]
async fn the_servers_bound_ends_slow_calls_with_deadline_exceeded() {
    let (echo, router) = echo();
    let layers = GrpcLayers::new().timeout(Duration::from_millis(100));
    let server = serve(layers.layer(router), None).await;
    let mut client = EchoClient::new(server.channel().await);
    let status = client.say(traced("sleep:30000")).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.metadata().get(TRACE_ID_KEY).unwrap(), TRACE_ID);
    assert_eq!(echo.calls.load(Ordering::SeqCst), 1);
}

/// One unary call on a bare HTTP/2 connection, so that no client-side deadline races the
/// server's answer: returns the response head's `grpc-status`.
async fn raw_call(addr: std::net::SocketAddr, text: &str, grpc_timeout: &str) -> Option<String> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let payload = msg(text).encode_to_vec();
    let mut frame = BytesMut::new();
    frame.put_u8(0);
    frame.put_u32(payload.len() as u32);
    frame.put_slice(&payload);
    let req = http::Request::post(format!("http://{addr}/echo.v1.Echo/Say"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(Full::new(frame.freeze()))
        .unwrap();
    let res = client.request(req).await.unwrap();
    let head = res
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let trailers = res.into_body().collect().await.unwrap().trailers().cloned();
    head.or_else(|| {
        trailers?
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_owned())
    })
}

#[tokio::test]
async fn the_callers_grpc_timeout_is_honoured() {
    let (_echo, router) = echo();
    let server = serve(GrpcLayers::new().layer(router), None).await;
    assert_eq!(
        raw_call(server.addr, "sleep:30000", "50m").await.as_deref(),
        Some("4")
    );
    assert_eq!(
        raw_call(server.addr, "quick", "10S").await.as_deref(),
        Some("0")
    );
}

#[tokio::test]
async fn calls_over_the_limit_are_resource_exhausted() {
    let (echo, router) = echo();
    let server = serve(GrpcLayers::new().max_in_flight(1).layer(router), None).await;
    let channel = server.channel().await;
    let mut first = EchoClient::new(channel.clone());
    let held = tokio::spawn(async move { first.say(msg("hold")).await });
    while echo.held.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut second = EchoClient::new(channel);
    let status = second.say(msg("shed")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.metadata().get("retry-after").is_some());
    echo.gate.notify_waiters();
    assert_eq!(held.await.unwrap().unwrap().into_inner().text, "hold");
    assert_eq!(
        second.say(msg("again")).await.unwrap().into_inner().text,
        "again"
    );
}

#[tokio::test]
async fn service_tokens_are_verified_with_per_method_scopes() {
    let (issuer, verifier) = crate::common::issuer_and_verifier("orders", "echo");
    let (_echo, router) = echo();
    let auth = RequireServiceTokenLayer::new(verifier)
        .require_scopes_for("/echo.v1.Echo/Say", &["echo:say"]);
    let server = serve(GrpcLayers::new().layer(auth.layer(router)), None).await;

    let mut anonymous = EchoClient::new(server.channel().await);
    let status = anonymous.say(msg("whoami")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let mut forged = tonic::Request::new(msg("whoami"));
    forged
        .metadata_mut()
        .insert("authorization", "Bearer not.a.token".parse().unwrap());
    let status = anonymous.say(forged).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let client = |scopes: &[&str]| {
        GrpcClient::builder("echo", server.url())
            .service_token(ServiceTokenSource::new(issuer.clone(), "echo", scopes).unwrap())
            .build()
            .unwrap()
    };
    let mut unscoped = EchoClient::new(client(&["echo:other"]));
    let status = unscoped.say(msg("whoami")).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let mut allowed = EchoClient::new(client(&["echo:say"]));
    assert_eq!(
        allowed.say(msg("whoami")).await.unwrap().into_inner().text,
        "orders"
    );
}

#[tokio::test]
async fn rest_and_grpc_share_one_port() {
    let (_echo, router) = echo();
    let grpc = GrpcLayers::new().layer(router);
    let rest = StandardLayers::new().layer(tower::service_fn(|_req: http::Request<_>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new(String::from("rest here")))
    }));
    let server = serve(Multiplex::new(rest, grpc), None).await;
    let mut client = EchoClient::new(server.channel().await);
    assert_eq!(
        client
            .say(msg("grpc here"))
            .await
            .unwrap()
            .into_inner()
            .text,
        "grpc here"
    );
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let res = http
        .get(format!("{}/anything", server.url()).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"rest here");
}
