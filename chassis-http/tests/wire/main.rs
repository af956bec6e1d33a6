//! A chassis server driven from outside over raw TCP on 127.0.0.1: what a client that is not
//! a well-behaved HTTP library sees (unknown routes and methods outside the standard layers,
//! oversized and malformed request heads, connections that never send a request).

#[path = "../common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use chassis_core::shutdown::Shutdown;
use chassis_http::layers::StandardLayers;
use chassis_http::server::{Server, ServerConfig};
use common::read_until_closed;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn config() -> ServerConfig {
    ServerConfig::default()
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .drain_timeout(Duration::from_secs(2))
}

/// The routes behind the standard layers, as a service's `main` builds them.
fn routes() -> Router {
    Router::new()
        .route("/greetings", get(|| async { "hi" }))
        .layer(StandardLayers::new())
}

async fn serve(config: ServerConfig, app: Router) -> (SocketAddr, Shutdown) {
    let server = Server::bind(config).await.unwrap().handle_signals(false);
    let addr = server.local_addr();
    let shutdown = server.shutdown_handle();
    tokio::spawn(server.serve(app));
    (addr, shutdown)
}

/// An HTTP/1.1 answer as it came over the wire.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// Asserts the chassis JSON error body and returns it.
    fn error_body(&self, status: u16, code: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{}",
            self.head
        );
        assert_eq!(
            self.header("content-length"),
            Some(self.body.len().to_string().as_str())
        );
        let json: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"));
        assert_eq!(json["success"], false);
        assert_eq!(json["error"]["code"], code, "{json}");
        assert!(json["error"]["message"].is_string(), "{json}");
        assert!(json.get("traceId").is_some(), "{json}");
        json
    }
}

/// Sends `request` on a fresh connection and reads until the server closes it.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Raw {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before it read everything (hyper stops at its limit).
    let _ = stream.write_all(request).await;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the server neither answered nor closed")
        {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            // A reset after the answer (unread request bytes): the answer is what came before.
            Err(_) => break,
        }
    }
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&bytes)));
    let head = String::from_utf8(bytes[..split].to_vec()).unwrap();
    let status = head[9..12].parse().unwrap();
    Raw {
        status,
        head,
        body: bytes[split + 4..].to_vec(),
    }
}

fn request(method: &str, path: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n{extra}\r\n")
        .into_bytes()
}

#[tokio::test]
async fn unknown_routes_and_methods_outside_the_standard_layers_get_the_json_body() {
    // The layered routes nested in an outer router, with a route of its own: the outer
    // router's 404 and 405 never pass through the standard layers.
    let app = Router::new()
        .route("/outer", get(|| async { "outer" }))
        .nest_service("/api", routes());
    let (addr, shutdown) = serve(config(), app).await;

    let raw = exchange(addr, &request("GET", "/nowhere", "")).await;
    let body = raw.error_body(404, "not_found");
    assert_eq!(body["error"]["message"], "Not Found");
    assert_eq!(
        body["traceId"],
        serde_json::Value::Null,
        "no request span out there"
    );

    let raw = exchange(addr, &request("DELETE", "/outer", "")).await;
    raw.error_body(405, "method_not_allowed");
    assert_eq!(raw.header("allow"), Some("GET,HEAD"));

    // Inside the layers: answered there, with the trace id.
    let raw = exchange(
        addr,
        &request(
            "DELETE",
            "/api/greetings",
            &format!("traceparent: {TRACEPARENT}\r\n"),
        ),
    )
    .await;
    assert_eq!(
        raw.error_body(405, "method_not_allowed")["traceId"],
        TRACE_ID
    );
    assert!(raw.header("x-request-id").is_some());
    let raw = exchange(addr, &request("GET", "/api/greetings", "")).await;
    assert_eq!((raw.status, &raw.body[..]), (200, &b"hi"[..]));
    shutdown.trigger();
}

#[tokio::test]
async fn oversized_and_malformed_http1_heads_get_the_json_body() {
    let (addr, shutdown) = serve(config(), routes()).await;

    // Within the default 16 KiB: served.
    let fine = format!("x-fill: {}\r\n", "a".repeat(12 * 1024));
    let raw = exchange(addr, &request("GET", "/greetings", &fine)).await;
    assert_eq!(raw.status, 200, "{raw:?}");

    // 64 KiB of one header: the chassis answers, with the request's trace id.
    let big = format!(
        "traceparent: {TRACEPARENT}\r\nx-big: {}\r\n",
        "a".repeat(64 * 1024)
    );
    let raw = exchange(addr, &request("GET", "/greetings", &big)).await;
    let body = raw.error_body(431, "request_header_fields_too_large");
    assert_eq!(body["traceId"], TRACE_ID);
    assert!(
        body["error"]["message"].as_str().unwrap().contains("16384"),
        "{body}"
    );

    // Over hyper's own buffer limit: hyper answers before parsing anything; the body comes
    // without a trace id, since no request was parsed.
    let huge = format!("x-huge: {}\r\n", "a".repeat(600 * 1024));
    let raw = exchange(addr, &request("GET", "/greetings", &huge)).await;
    let body = raw.error_body(431, "request_header_fields_too_large");
    assert_eq!(body["traceId"], serde_json::Value::Null);
    assert_eq!(raw.header("connection"), Some("close"));

    // More header fields than hyper parses (100).
    let many: String = (0..120).map(|i| format!("x-h{i}: v\r\n")).collect();
    let raw = exchange(addr, &request("GET", "/greetings", &many)).await;
    raw.error_body(431, "request_header_fields_too_large");

    // A head that does not parse.
    let raw = exchange(addr, b"GET /greetings HTTP/1.1\r\nho st: x\r\n\r\n").await;
    let body = raw.error_body(400, "bad_request");
    assert_eq!(body["error"]["message"], "Bad Request");

    // The server still serves.
    let raw = exchange(addr, &request("GET", "/greetings", "")).await;
    assert_eq!(raw.status, 200);
    shutdown.trigger();
}

#[tokio::test]
async fn the_header_limit_is_configurable_and_holds_on_h2c() {
    let (addr, shutdown) = serve(config().max_header_bytes(4 * 1024), routes()).await;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let send = |value: String| {
        let client = client.clone();
        async move {
            let req = http::Request::get(format!("http://{addr}/greetings"))
                .header("x-fill", value)
                .header("traceparent", TRACEPARENT)
                .body(Full::default())
                .unwrap();
            let res = client.request(req).await.expect("h2 request failed");
            assert_eq!(res.version(), http::Version::HTTP_2);
            let status = res.status();
            let content_type = res.headers().get("content-type").cloned();
            let body = res.into_body().collect().await.unwrap().to_bytes();
            (status, content_type, body)
        }
    };

    let (status, _, body) = send("a".repeat(3 * 1024)).await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"hi"[..]));

    // Over the configured 4 KiB, below h2's own (raised) limit: the chassis answers.
    let (status, content_type, body) = send("a".repeat(20 * 1024)).await;
    assert_eq!(status.as_u16(), 431);
    assert_eq!(content_type.unwrap(), "application/json");
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["error"]["code"], "request_header_fields_too_large");
    assert_eq!(json["traceId"], TRACE_ID);

    // And on HTTP/1.1 the same limit.
    let raw = exchange(
        addr,
        &request(
            "GET",
            "/greetings",
            &format!("x-fill: {}\r\n", "a".repeat(5 * 1024)),
        ),
    )
    .await;
    raw.error_body(431, "request_header_fields_too_large");
    shutdown.trigger();
}

/// Connects, sends `first` (maybe nothing), and returns how long the server took to close.
async fn closed_after(addr: SocketAddr, first: &[u8], limit: Duration) -> Duration {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    stream.write_all(first).await.unwrap();
    // h2: the server sends its SETTINGS (and a GOAWAY); what it sent is not looked at.
    let context = format!("sent {first:?}");
    read_until_closed(&mut stream, started, limit, &context)
        .await
        .1
}

#[tokio::test]
async fn connections_that_send_no_request_are_closed_after_the_header_read_timeout() {
    let timeout = Duration::from_millis(400);
    // The coarse timer fires within a tick (timeout / 8) after the deadline; the rest is
    // slack for a loaded machine.
    let limit = timeout + timeout / 8 + Duration::from_secs(1);
    let (addr, shutdown) = serve(config().header_read_timeout(timeout), routes()).await;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    // An empty SETTINGS frame: the preface complete, then no request.
    let mut preface_and_settings = PREFACE.to_vec();
    preface_and_settings.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    for first in [&b""[..], &PREFACE[..10], &preface_and_settings[..]] {
        let took = closed_after(addr, first, limit).await;
        assert!(
            took >= timeout - Duration::from_millis(50),
            "closed after {took:?} (sent {first:?})"
        );
    }

    // A prompt request on a new connection is served as before.
    let raw = exchange(addr, &request("GET", "/greetings", "")).await;
    assert_eq!(raw.status, 200);
    shutdown.trigger();
}
