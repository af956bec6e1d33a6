//! Shared helpers: a real server on 127.0.0.1:0, a real hyper-util client, a test app.
#![allow(dead_code)]

#[path = "../common/mod.rs"]
mod common;
#[allow(unused_imports)] // not every test binary uses every helper
pub(crate) use common::{LogBuffer, read_until_closed, switched_check};

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Extension, Path};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, post};
use bytes::Bytes;
use chassis_core::health::HealthRegistry;
use chassis_core::shutdown::Shutdown;
use chassis_http::error::{ApiError, Error};
use chassis_http::health::HealthLayer;
use chassis_http::layers::StandardLayers;
use chassis_http::layers::request_id::RequestId;
use chassis_http::server::{ServeOutcome, Server, ServerConfig};
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tower::ServiceBuilder;

/// A W3C `traceparent` the tests send, and its trace id.
pub(crate) const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
pub(crate) const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

pub(crate) type TestClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/1.1 client with keep-alive.
pub(crate) fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An h2c client (HTTP/2 with prior knowledge).
pub(crate) fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) version: Version,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    pub(crate) fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    /// Asserts the chassis error body shape and returns it.
    pub(crate) fn error_body(&self, status: StatusCode, code: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.headers["content-type"], "application/json");
        let json = self.json();
        assert_eq!(json["success"], false);
        assert_eq!(json["error"]["code"], code);
        assert!(json["error"]["message"].is_string());
        assert!(json.get("traceId").is_some());
        json
    }
}

pub(crate) async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Reply {
    let res = client.request(req).await.expect("request failed");
    let status = res.status();
    let version = res.version();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        version,
        headers,
        body,
    }
}

pub(crate) async fn get(client: &TestClient, addr: SocketAddr, path: &str) -> Reply {
    send(
        client,
        Request::get(format!("http://{addr}{path}"))
            .body(Full::default())
            .unwrap(),
    )
    .await
}

/// State shared with the test app's handlers.
#[derive(Clone, Default)]
pub(crate) struct AppState {
    /// `/hold` waits for this before answering.
    pub(crate) release: Arc<Notify>,
    /// `/hold` notifies this when it started.
    pub(crate) entered: Arc<Notify>,
}

/// An `ApiError` as an axum response (how a service uses the helper under axum).
pub(crate) struct AxumApiError(pub(crate) ApiError);

impl IntoResponse for AxumApiError {
    fn into_response(self) -> Response {
        self.0.into_response().map(axum::body::Body::new)
    }
}

/// The test application: an axum Router.
pub(crate) fn app(state: AppState) -> Router {
    Router::new()
        .route("/hello", routing::get(|| async { "hello" }))
        .route(
            "/traced",
            routing::get(|| async {
                // A span of the handler's own, with an event in it.
                let span = tracing::info_span!("handler work");
                let _entered = span.enter();
                tracing::info!("handler event");
                "traced"
            }),
        )
        .route(
            "/request-id",
            routing::get(|Extension(id): Extension<RequestId>| async move { id.to_string() }),
        )
        .route(
            "/sleep/{ms}",
            routing::get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                "slept"
            }),
        )
        .route(
            "/hold",
            routing::get(move || {
                let state = state.clone();
                async move {
                    state.entered.notify_one();
                    state.release.notified().await;
                    "released"
                }
            }),
        )
        .route(
            "/echo",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .route(
            "/panic",
            routing::get(|| async {
                if true {
                    panic!("handler bug");
                }
                "unreachable"
            }),
        )
        .route(
            "/orders/{id}",
            routing::get(|Path(id): Path<u64>| async move {
                Err::<String, _>(AxumApiError(
                    ApiError::not_found(format!("no order {id}"))
                        .with_details(serde_json::json!({ "orderId": id })),
                ))
            }),
        )
}

pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) shutdown: Shutdown,
    pub(crate) handle: JoinHandle<Result<ServeOutcome, Error>>,
}

impl TestServer {
    pub(crate) async fn stop(self) -> ServeOutcome {
        self.shutdown.trigger();
        self.handle.await.unwrap().unwrap()
    }
}

pub(crate) fn test_config() -> ServerConfig {
    ServerConfig::default()
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .drain_timeout(Duration::from_secs(5))
}

/// Binds 127.0.0.1:0 and serves `service` in a task.
pub(crate) async fn start<S, B>(server: Server, service: S) -> TestServer
where
    S: common::Servable<B>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<chassis_core::BoxError>,
{
    let server = server.handle_signals(false);
    let addr = server.local_addr();
    let shutdown = server.shutdown_handle();
    let handle = tokio::spawn(server.serve(service));
    TestServer {
        addr,
        shutdown,
        handle,
    }
}

/// The test app behind `StandardLayers::new()` (no health endpoints) on a server built from
/// `config`.
pub(crate) async fn start_standard(config: ServerConfig) -> TestServer {
    let server = Server::bind(config).await.unwrap();
    start(
        server,
        app(AppState::default()).layer(StandardLayers::new()),
    )
    .await
}

/// The full chassis stack around the test app: health outside, standard layers, the router.
pub(crate) async fn start_app(
    layers: StandardLayers,
    registry: HealthRegistry,
    state: AppState,
) -> TestServer {
    let service = ServiceBuilder::new()
        .layer(HealthLayer::new(registry.clone()))
        .layer(layers)
        .service(app(state));
    let server = Server::bind(test_config()).await.unwrap().health(registry);
    start(server, service).await
}

/// The test app with the standard layers and a started health registry: the server most
/// tests start.
pub(crate) async fn start_default_app() -> TestServer {
    start_app(
        StandardLayers::new(),
        started_registry(),
        AppState::default(),
    )
    .await
}

/// The default health registry of a test server: started, no result cache.
pub(crate) fn started_registry() -> HealthRegistry {
    let registry = HealthRegistry::with_cache_ttl(Duration::ZERO);
    registry.mark_started();
    registry
}
