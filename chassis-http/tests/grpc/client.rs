//! The resilient gRPC client against a real chassis-served server: retries only idempotent
//! methods and retryable codes, the breaker opens on UNAVAILABLE, each attempt carries its
//! deadline as `grpc-timeout`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chassis_core::resilience::circuit_breaker::{CircuitBreakerConfig, SlidingWindowType};
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::resilience::retry::{Backoff, Jitter, RetryBudgetConfig, RetryConfig};
use chassis_http::grpc::deadline::parse_grpc_timeout;
use chassis_http::grpc::{GrpcClient, GrpcLayers, GrpcRouter};
use tonic::Code;
use tower::Layer as _;

use super::support::{Echo, EchoClient, EchoServer, Running, msg, serve, serve_with};

async fn echo_server() -> (Arc<Echo>, Running) {
    let echo = Arc::new(Echo::default());
    let router = GrpcRouter::new().add_service(EchoServer(Arc::clone(&echo)));
    let server = serve(GrpcLayers::new().layer(router), None).await;
    (echo, server)
}

fn retry(attempts: u32) -> RetryConfig {
    RetryConfig::new("echo")
        .max_attempts(attempts)
        .backoff(Backoff::exponential(Duration::from_millis(5)).jitter(Jitter::None))
        .budget(RetryBudgetConfig::disabled())
}

#[tokio::test]
async fn idempotent_methods_are_retried_on_retryable_codes_only() {
    let (echo, server) = echo_server().await;
    let client = GrpcClient::builder("echo", server.url())
        .policy(ResiliencePolicy::new().retry(retry(3)))
        .idempotent("/echo.v1.Echo/Say")
        .build()
        .unwrap();
    let mut client = EchoClient::new(client);
    // UNAVAILABLE twice, then success: three calls reached the server.
    let reply = client.say(msg("fail-first:14:2")).await.unwrap();
    assert_eq!(reply.into_inner().text, "fail-first:14:2");
    assert_eq!(echo.calls.load(Ordering::SeqCst), 3);

    // NOT_FOUND is an answer, not a fault: not retried.
    echo.calls.store(0, Ordering::SeqCst);
    let status = client.say(msg("fail-first:5:1")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(echo.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn other_methods_are_sent_once() {
    let (echo, server) = echo_server().await;
    let client = GrpcClient::builder("echo", server.url())
        .policy(ResiliencePolicy::new().retry(retry(3)))
        .idempotent("/echo.v1.Echo/Count")
        .build()
        .unwrap();
    let status = EchoClient::new(client)
        .say(msg("fail-first:14:2"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(echo.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_breaker_opens_on_unavailable_and_stops_calling() {
    let (echo, server) = echo_server().await;
    let breaker = CircuitBreakerConfig::new("echo")
        .sliding_window(SlidingWindowType::CountBased, 4)
        .minimum_number_of_calls(4)
        .failure_rate_threshold(50.0)
        .wait_duration_in_open_state(Duration::from_secs(600));
    let client = GrpcClient::builder("echo", server.url())
        .policy(ResiliencePolicy::new().circuit_breaker(breaker))
        .build()
        .unwrap();
    let mut client = EchoClient::new(client);
    // Answers that are not faults are successes: were they failures, these four would open
    // the breaker.
    for _ in 0..4 {
        let status = client.say(msg("fail:5")).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    // Two UNAVAILABLE of the last four calls: 50%, the breaker opens.
    for _ in 0..2 {
        let status = client.say(msg("fail:14")).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("circuit"), "{status:?}");
    }
    assert_eq!(echo.calls.load(Ordering::SeqCst), 6);
    let status = client.say(msg("never sent")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("circuit"), "{status:?}");
    assert_eq!(
        echo.calls.load(Ordering::SeqCst),
        6,
        "an open breaker calls nobody"
    );
}

#[tokio::test]
async fn each_attempt_sends_its_deadline_and_is_cut_off_by_it() {
    let (echo, server) = echo_server().await;
    let client = GrpcClient::builder("echo", server.url())
        .policy(
            ResiliencePolicy::new()
                .timeout(Duration::from_millis(300))
                .retry(retry(2)),
        )
        .idempotent("/echo.v1.Echo/")
        .build()
        .unwrap();
    let mut client = EchoClient::new(client);
    let sent = client.say(msg("deadline")).await.unwrap().into_inner().text;
    let sent = parse_grpc_timeout(&sent.parse().unwrap()).unwrap();
    assert_eq!(sent, Duration::from_millis(300));

    // The caller's own, shorter deadline wins.
    let mut req = tonic::Request::new(msg("deadline"));
    req.set_timeout(Duration::from_millis(120));
    let sent = client.say(req).await.unwrap().into_inner().text;
    assert_eq!(
        parse_grpc_timeout(&sent.parse().unwrap()),
        Some(Duration::from_millis(120))
    );

    // A hung handler: both attempts time out, the caller gets DEADLINE_EXCEEDED.
    echo.calls.store(0, Ordering::SeqCst);
    let status = client.say(msg("sleep:30000")).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(echo.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = GrpcClient::builder("echo", format!("http://{addr}"))
        .policy(ResiliencePolicy::new().retry(retry(2)))
        .idempotent("/echo.v1.Echo/")
        .build()
        .unwrap();
    let status = EchoClient::new(client).say(msg("hello")).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
}

#[cfg(feature = "tls")]
#[tokio::test]
async fn https_endpoints_share_the_http_clients_tls_settings() {
    use chassis_http::server::ServerConfig;
    use chassis_http::tls::client::{ClientTlsConfig, TrustRoots};
    use chassis_http::tls::server::ServerTlsConfig;

    let ca = chassis_testkit::TestCa::new("grpc test CA");
    let leaf = ca
        .leaf("localhost")
        .ip("127.0.0.1".parse().unwrap())
        .issue();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = leaf.write(dir.path(), "server");
    let echo = Arc::new(Echo::default());
    let router = GrpcRouter::new().add_service(EchoServer(Arc::clone(&echo)));
    let config = ServerConfig::default().tls(ServerTlsConfig::new(cert, key));
    let server = serve_with(config, GrpcLayers::new().layer(router), None).await;
    let url = format!("https://127.0.0.1:{}", server.addr.port());

    let trusting = GrpcClient::builder("echo", &url)
        .tls(
            ClientTlsConfig::new()
                .roots(TrustRoots::None)
                .add_ca_pem(ca.cert_pem().as_bytes().to_vec()),
        )
        .build()
        .unwrap();
    let reply = EchoClient::new(trusting)
        .say(msg("over tls"))
        .await
        .unwrap();
    assert_eq!(reply.into_inner().text, "over tls");

    // The default roots do not know the test CA: the handshake fails, nothing is called.
    let default_roots = GrpcClient::builder("echo", &url).build().unwrap();
    let status = EchoClient::new(default_roots)
        .say(msg("x"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(echo.calls.load(Ordering::SeqCst), 1);
}
