//! Behaviour of the chassis HTTP server: a real server on 127.0.0.1 with a real client.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chassis_core::health::{CheckOptions, HealthRegistry, fn_check};
use chassis_http::health::{HealthLayer, HealthPaths};
use chassis_http::layers::StandardLayers;
use chassis_http::server::Server;
use http::{Request, StatusCode, Version};
use http_body_util::{Full, StreamBody};
use support::*;
use tower::ServiceBuilder;

#[tokio::test]
async fn request_id_is_generated_propagated_and_echoed() {
    let server = start_default_app().await;
    let client = client();

    let reply = get(&client, server.addr, "/request-id").await;
    assert_eq!(reply.status, StatusCode::OK);
    let generated = reply.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(
        uuid::Uuid::parse_str(&generated).unwrap().get_version_num(),
        7
    );
    assert_eq!(reply.text(), generated, "handler sees the same id");

    let req = Request::get(format!("http://{}/request-id", server.addr))
        .header("x-request-id", "client-chosen-42")
        .body(Full::default())
        .unwrap();
    let reply = send(&client, req).await;
    assert_eq!(reply.headers["x-request-id"], "client-chosen-42");
    assert_eq!(reply.text(), "client-chosen-42");

    let req = Request::get(format!("http://{}/request-id", server.addr))
        .header("x-request-id", "bad id with spaces")
        .body(Full::default())
        .unwrap();
    let reply = send(&client, req).await;
    let replaced = reply.headers["x-request-id"].to_str().unwrap();
    assert_ne!(replaced, "bad id with spaces");
    assert!(uuid::Uuid::parse_str(replaced).is_ok());

    // Errors produced by the chassis carry it too.
    let reply = get(&client, server.addr, "/nowhere").await;
    assert!(reply.headers.contains_key("x-request-id"));
    assert!(server.stop().await.drained);
}

#[tokio::test]
async fn trace_id_without_opentelemetry_layer_comes_from_the_request() {
    let server = start_app(
        StandardLayers::new().timeout(Duration::from_millis(50)),
        started_registry(),
        AppState::default(),
    )
    .await;
    let req = Request::get(format!("http://{}/sleep/1000", server.addr))
        .header("traceparent", TRACEPARENT)
        .body(Full::default())
        .unwrap();
    let body = send(&client(), req)
        .await
        .error_body(StatusCode::GATEWAY_TIMEOUT, "timeout");
    assert_eq!(body["traceId"], TRACE_ID);
    // Without any trace context there is no trace id to report.
    let body = get(&client(), server.addr, "/sleep/1000")
        .await
        .error_body(StatusCode::GATEWAY_TIMEOUT, "timeout");
    assert_eq!(body["traceId"], serde_json::Value::Null);
    server.stop().await;
}

#[tokio::test]
async fn body_limit_answers_413_json_for_declared_and_streamed_bodies() {
    let server = start_app(
        StandardLayers::new().body_limit(16),
        started_registry(),
        AppState::default(),
    )
    .await;
    let client = client();
    let post = |body: &'static [u8]| {
        Request::post(format!("http://{}/echo", server.addr))
            .body(Full::new(Bytes::from_static(body)))
            .unwrap()
    };
    let reply = send(&client, post(b"small")).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "5");

    let body = send(&client, post(&[b'x'; 17]))
        .await
        .error_body(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    assert_eq!(body["error"]["details"]["limitBytes"], 16);

    // Chunked (no content-length): the limit trips while the handler reads.
    let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::convert::Infallible>> = (0..4)
        .map(|_| Ok(hyper::body::Frame::data(Bytes::from_static(b"0123456789"))))
        .collect();
    let stream_client: hyper_util::client::legacy::Client<_, StreamBody<_>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = Request::post(format!("http://{}/echo", server.addr))
        .body(StreamBody::new(futures_util::stream::iter(chunks)))
        .unwrap();
    let res = stream_client.request(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(res.headers()["content-type"], "application/json");
    server.stop().await;
}

#[tokio::test]
async fn concurrency_limit_sheds_with_503_and_retry_after() {
    let state = AppState::default();
    let server = start_app(
        StandardLayers::new()
            .max_in_flight(1)
            .retry_after(Duration::from_secs(3)),
        started_registry(),
        state.clone(),
    )
    .await;
    let addr = server.addr;
    let held = tokio::spawn(async move { get(&client(), addr, "/hold").await });
    state.entered.notified().await;

    let reply = get(&client(), addr, "/hello").await;
    reply.error_body(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert_eq!(reply.headers["retry-after"], "3");

    // Probes are not shed: they sit outside the standard layers.
    assert_eq!(
        get(&client(), addr, "/health/live").await.status,
        StatusCode::OK
    );

    state.release.notify_one();
    assert_eq!(held.await.unwrap().text(), "released");
    assert_eq!(get(&client(), addr, "/hello").await.status, StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn panic_becomes_500_and_the_server_keeps_serving() {
    let server = start_default_app().await;
    let client = client();
    let reply = get(&client, server.addr, "/panic").await;
    let body = reply.error_body(StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
    assert!(
        !body.to_string().contains("handler bug"),
        "panic message leaked: {body}"
    );
    // Same client, same keep-alive connection: still serving.
    let reply = get(&client, server.addr, "/hello").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "hello");
    server.stop().await;
}

#[tokio::test]
async fn health_states_and_metrics() {
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let _metrics = metrics::set_default_local_recorder(&recorder);

    let registry = HealthRegistry::with_cache_ttl(Duration::ZERO);
    let cache_ok = Arc::new(AtomicBool::new(true));
    let db_ok = Arc::new(AtomicBool::new(true));
    let (c, d) = (cache_ok.clone(), db_ok.clone());
    registry.register(switched_check("database", d), CheckOptions::required());
    registry.register(
        fn_check("cache", move || {
            let ok = c.load(Ordering::SeqCst);
            async move { if ok { Ok(()) } else { Err("timeout".into()) } }
        }),
        CheckOptions::optional(),
    );
    let paths = HealthPaths {
        live: "/livez".into(),
        ..HealthPaths::default()
    };
    let service = ServiceBuilder::new()
        .layer(
            HealthLayer::new(registry.clone())
                .paths(paths)
                .prometheus(handle),
        )
        .layer(StandardLayers::new())
        .service(app(AppState::default()));
    let server = start(
        Server::bind(test_config())
            .await
            .unwrap()
            .health(registry.clone()),
        service,
    )
    .await;
    let addr = server.addr;
    let client = client();

    // Starting.
    let ready = get(&client, addr, "/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["status"], "DOWN");
    assert_eq!(ready.json()["reason"], "starting");
    assert_eq!(
        get(&client, addr, "/health/startup").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let live = get(&client, addr, "/livez").await;
    assert_eq!(live.status, StatusCode::OK);
    assert_eq!(live.json()["status"], "UP");
    assert_eq!(live.headers["cache-control"], "no-store");

    // Ready.
    registry.mark_started();
    assert_eq!(
        get(&client, addr, "/health/startup").await.status,
        StatusCode::OK
    );
    let ready = get(&client, addr, "/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    let json = ready.json();
    assert_eq!(json["status"], "UP");
    assert_eq!(json["checks"].as_array().unwrap().len(), 2);
    assert_eq!(json["checks"][0]["name"], "database");
    assert!(json["checks"][0]["latency_ms"].is_number());

    // Degraded: an optional check fails, still ready.
    cache_ok.store(false, Ordering::SeqCst);
    let ready = get(&client, addr, "/health/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(ready.json()["status"], "DEGRADED");
    assert_eq!(ready.json()["checks"][1]["error"], "timeout");

    // A required check fails: not ready, liveness unaffected.
    db_ok.store(false, Ordering::SeqCst);
    let ready = get(&client, addr, "/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["checks"][0]["error"], "connection refused");
    assert_eq!(get(&client, addr, "/livez").await.status, StatusCode::OK);
    db_ok.store(true, Ordering::SeqCst);
    cache_ok.store(true, Ordering::SeqCst);
    assert_eq!(
        get(&client, addr, "/health/ready").await.status,
        StatusCode::OK
    );

    // Other methods on a probe path.
    let req = Request::post(format!("http://{addr}/health/ready"))
        .body(Full::default())
        .unwrap();
    let reply = send(&client, req).await;
    reply.error_body(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");

    // Metrics: the RED histogram of an application request, in Prometheus text.
    assert_eq!(get(&client, addr, "/hello").await.status, StatusCode::OK);
    let metrics = get(&client, addr, "/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert_eq!(metrics.headers["content-type"], "text/plain; version=0.0.4");
    let text = metrics.text();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("http_server_request_duration_seconds")
                && l.contains("http_response_status_code=\"200\"")
        })
        .unwrap_or_else(|| panic!("no duration series in:\n{text}"));
    assert!(line.contains("http_request_method=\"GET\""), "{line}");
    assert!(text.contains("http_server_active_requests"), "{text}");
    assert!(!text.contains("health"), "probes are not counted:\n{text}");

    // Shutting down: readiness fails first.
    registry.mark_shutting_down();
    let ready = get(&client, addr, "/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["reason"], "shutting down");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_drains_in_flight_then_refuses_connections() {
    let registry = started_registry();
    let state = AppState::default();
    let service = ServiceBuilder::new()
        .layer(HealthLayer::new(registry.clone()))
        .layer(StandardLayers::new())
        .service(app(state.clone()));
    let hook_ran = Arc::new(AtomicBool::new(false));
    let hook_flag = hook_ran.clone();
    let server = Server::bind(
        test_config()
            .pre_stop_delay(Duration::from_millis(300))
            .drain_timeout(Duration::from_secs(10)),
    )
    .await
    .unwrap()
    .health(registry.clone())
    .on_shutdown(move || async move { hook_flag.store(true, Ordering::SeqCst) });
    let server = start(server, service).await;
    let addr = server.addr;

    let in_flight = tokio::spawn(async move { get(&client(), addr, "/hold").await });
    state.entered.notified().await;
    let started = Instant::now();
    server.shutdown.trigger();

    // Readiness fails at once, while the server still accepts (pre-stop delay).
    let ready = get(&client(), addr, "/health/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(ready.json()["reason"], "shutting down");

    // Then the listener closes while the request is still in flight.
    let refused = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) => break e,
            Ok(_) if started.elapsed() > Duration::from_secs(5) => panic!("still accepting"),
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    assert!(
        matches!(
            refused.kind(),
            std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
        ),
        "{refused:?}"
    );
    let again = tokio::net::TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(again.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed before the pre-stop delay"
    );
    assert!(!in_flight.is_finished());
    assert!(
        !server.handle.is_finished(),
        "serve waits for the in-flight request"
    );

    // The in-flight request completes normally.
    state.release.notify_one();
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "released");

    let outcome = server.handle.await.unwrap().unwrap();
    assert!(outcome.drained);
    assert!(hook_ran.load(Ordering::SeqCst), "on_shutdown hook ran");
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = start_standard(test_config().drain_timeout(Duration::from_secs(10))).await;
    let addr = server.addr;

    // An HTTP/1.1 keep-alive connection, idle after one request.
    let mut h1 = tokio::net::TcpStream::connect(addr).await.unwrap();
    h1.write_all(b"GET /hello HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"hello") {
        let n = h1.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    // An h2c connection, idle after one request.
    let h2 = h2_client();
    assert_eq!(get(&h2, addr, "/hello").await.status, StatusCode::OK);

    let started = Instant::now();
    server.shutdown.trigger();
    let outcome = tokio::time::timeout(Duration::from_secs(5), server.handle)
        .await
        .expect("idle connections kept the server from draining")
        .unwrap()
        .unwrap();
    assert!(outcome.drained);
    assert!(started.elapsed() < Duration::from_secs(5));
    // The server closed the idle HTTP/1.1 connection.
    let n = tokio::time::timeout(Duration::from_secs(1), h1.read(&mut buf))
        .await
        .expect("connection still open")
        .unwrap_or(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn shutdown_returns_within_the_drain_deadline() {
    let state = AppState::default();
    let server = Server::bind(test_config().drain_timeout(Duration::from_millis(200)))
        .await
        .unwrap();
    let server = start(server, app(state.clone()).layer(StandardLayers::new())).await;
    let addr = server.addr;
    let stuck = tokio::spawn(async move {
        client()
            .request(
                Request::get(format!("http://{addr}/hold"))
                    .body(Full::default())
                    .unwrap(),
            )
            .await
    });
    state.entered.notified().await;
    let started = Instant::now();
    server.shutdown.trigger();
    let outcome = server.handle.await.unwrap().unwrap();
    let took = started.elapsed();
    assert!(!outcome.drained);
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The stuck request's connection was closed.
    assert!(stuck.await.unwrap().is_err());
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    let server = start_default_app().await;
    let client = h2_client();
    let reply = get(&client, server.addr, "/hello").await;
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers.contains_key("x-request-id"));
    let reply = get(&client, server.addr, "/panic").await;
    reply.error_body(StatusCode::INTERNAL_SERVER_ERROR, "internal_error");
    let reply = get(&client, server.addr, "/health/live").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(get(&client, server.addr, "/hello").await.text(), "hello");
    server.stop().await;
}

#[tokio::test]
async fn connection_limit_holds_extra_connections_in_the_backlog() {
    let state = AppState::default();
    let server = Server::bind(test_config().max_connections(1))
        .await
        .unwrap();
    let server = start(server, app(state.clone()).layer(StandardLayers::new())).await;
    let addr = server.addr;
    let first = tokio::spawn(async move { get(&client(), addr, "/hold").await });
    state.entered.notified().await;
    // A second connection is not served while the first one is open.
    let second = tokio::spawn(async move { get(&client(), addr, "/hello").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !second.is_finished(),
        "second connection served beyond the limit"
    );
    state.release.notify_one();
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    // The first client's pool drops its idle connection when the client is dropped (inside the
    // task), freeing the slot.
    let second = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("served after the slot freed");
    assert_eq!(second.unwrap().status, StatusCode::OK);
    server.stop().await;
}

/// Writes `bytes` on a new connection to `addr`, then waits (5 s at most) for the server to
/// close it: what the server sent, and how long after the write it closed.
async fn write_and_wait_for_close(
    addr: std::net::SocketAddr,
    bytes: &[u8],
    context: &str,
) -> (Vec<u8>, Duration) {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_until_closed(&mut stream, Instant::now(), Duration::from_secs(5), context).await
}

#[tokio::test]
async fn a_request_head_that_never_completes_is_cut_off_after_the_header_read_timeout() {
    let timeout = Duration::from_millis(400);
    let server = start_standard(test_config().header_read_timeout(timeout)).await;

    // Slowloris: half a request head, then nothing.
    let (sent, took) = write_and_wait_for_close(
        server.addr,
        b"GET /hello HTTP/1.1\r\nhost: test\r\n",
        "slow connection",
    )
    .await;
    assert!(
        took >= timeout - Duration::from_millis(50),
        "closed after {took:?}"
    );
    assert!(
        !String::from_utf8_lossy(&sent).contains("hello"),
        "the incomplete request was not served"
    );

    // A keep-alive connection that goes quiet after a request is closed the same way, and a
    // prompt request on it was served normally.
    let (sent, took) = write_and_wait_for_close(
        server.addr,
        b"GET /hello HTTP/1.1\r\nhost: test\r\n\r\n",
        "idle connection",
    )
    .await;
    assert!(
        String::from_utf8_lossy(&sent).ends_with("hello"),
        "{sent:?}"
    );
    assert!(
        took >= timeout - Duration::from_millis(50),
        "closed after {took:?}"
    );

    // The server still serves new connections.
    assert_eq!(
        get(&client(), server.addr, "/hello").await.status,
        StatusCode::OK
    );
    server.stop().await;
}
