//! # chassis-http
//!
//! The HTTP side of the chassis SDK, on hyper 1 and tower: a server runner with graceful
//! shutdown, the standard server layers, health and metrics endpoints, service-token auth and a
//! resilient client. Every piece is a plain tower `Layer`/`Service`, so it works the same under
//! hyper, axum or any tower stack; chassis-http itself does not depend on axum. The optional
//! `axum` feature reads axum's `MatchedPath` as the route of spans and metrics, and makes
//! [`ApiResponse`] and [`ApiError`] axum responses, so handlers return [`ApiResult`].
//!
//! ## Layout
//! - [`server`]: [`Server`] serves any tower service (an axum `Router` as is)
//!   over HTTP/1.1 and h2c, with a connection limit and graceful shutdown (readiness fails
//!   first, pre-stop delay, listener closes, in-flight requests drain, on-shutdown hook).
//! - [`layers`]: request id, trace context + server span, RED metrics, access log, catch panic,
//!   timeout, load shedding, body limit, error mapping (an error response without a JSON body,
//!   such as an axum rejection or a router's 404/405, gets the JSON error body), and
//!   [`StandardLayers`] stacking them with good defaults.
//! - [`health`]: `/health/live`, `/health/ready`, `/health/startup` and `/metrics` as a layer in
//!   front of the application.
//! - [`error`]: [`ApiError`], the one JSON error body
//!   `{"success":false,"error":{"code","message","details"},"traceId"}`, and the runner's
//!   [`Error`](error::Error).
//! - [`response`]: [`ApiResponse`], the success envelope
//!   `{"success":true,"data","traceId"}`; [`ApiResult`], what a handler returns; and
//!   [`ResultExt::or_internal`], which turns any error into a logged 500 at a `?`.
//! - [`body`]: [`Body`], the boxed response body of the chassis layers.
//! - [`auth`]: service-to-service JWTs (issuer, key sets/JWKS, verify and attach layers).
//! - [`client`]: the resilient HTTP client for calling other services.
//! - [`idempotency`]: the `Idempotency-Key` header (IETF draft, as Stripe uses it): a retried
//!   `POST`/`PATCH` replays the first response instead of running again, 422 for a key reused
//!   with another request, 409 for one still running; an in-memory store, or Redis (feature
//!   `redis`) shared by every replica.
//! - [`response_cache`]: a cache of `GET`/`HEAD` responses honouring `Cache-Control` (of the
//!   response and of the request), keyed by method, path, query, chosen header fields and an
//!   optional scope, with `Age` and an RFC 9211 `Cache-Status`; an in-memory store, or Redis
//!   (feature `redis`). A store that fails passes requests to the handler.
//! - [`admin`]: `GET`/`PUT /admin/loggers`, reading and changing a running service's log
//!   filter, behind a service token with the `admin` scope.
//! - [`control`]: the admin API over `chassis_core::control::ControlRegistry`: breakers,
//!   bulkheads, rate limits, retry budgets, health, outbox and consumers, read, steered and
//!   streamed (Server-Sent Events), behind the `admin` scope.
//! - [`dashboard`]: the resilience dashboard page (embedded HTML/JS/CSS) aggregating the admin
//!   streams of several services through a proxy.
//! - [`grpc`] (feature `grpc`): tonic services behind gRPC-aware chassis layers, the
//!   `grpc.health.v1` service from the health registry, and a resilient gRPC client.
//! - [`tls`] (feature `tls`): HTTPS for the server and the client, certificate reload, client
//!   certificates and the peer's identity.
//!
//! ## Quick start
//! A service's [`App`](chassis_core::lifecycle::App) runs the server as a component
//! ([`HttpServer`](server::HttpServer)): it binds at start, and on SIGTERM readiness fails,
//! the listener closes, in-flight requests drain, and the rest of the service stops after it.
//! ```no_run
//! use chassis_core::lifecycle::App;
//! use chassis_http::{health::HealthLayer, layers::StandardLayers, server::{HttpServer, ServerConfig}};
//! use tower::{ServiceBuilder, service_fn};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), chassis_core::Error> {
//! let app = App::new("hello");
//! let handler = service_fn(|_req: http::Request<_>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hello")))
//! });
//! let service = ServiceBuilder::new()
//!     .layer(HealthLayer::new(app.health().clone())) // probes bypass the stack below
//!     .layer(StandardLayers::new())                   // request id, tracing, metrics, limits...
//!     .service(handler);
//! app.component(HttpServer::new(ServerConfig::default(), service))
//!     .run() // returns after SIGTERM/SIGINT and the drain
//!     .await
//! # }
//! ```
//!
//! Without an app, [`server::Server`] serves on its own and handles the signals itself.
//!
//! ## Handlers (with the `axum` feature)
//! ```
//! use axum::extract::Path;
//! use chassis_http::{ApiError, ApiResponse, ApiResult, ResultExt as _};
//!
//! async fn get_price(Path(item): Path<String>) -> ApiResult<u64> {
//!     let price = std::env::var(format!("PRICE_{item}"))
//!         .map_err(|_| ApiError::not_found(format!("no price for {item}")))?;
//!     // A stored price that does not parse is our fault: a 500, its cause logged once.
//!     Ok(ApiResponse::ok(price.parse().or_internal()?))
//! }
//! # #[cfg(feature = "axum")]
//! # let _: axum::Router = axum::Router::new().route("/prices/{item}", axum::routing::get(get_price));
//! ```
//!
//! ## Features
//! | feature | default | what it adds |
//! |---|---|---|
//! | `tls` | yes | HTTPS for the server runner and the client, on rustls with the ring provider: [`tls`] (certificate rotation, client certificates, the peer's identity; webpki or native roots) |
//! | `axum` | no | axum's `MatchedPath` as the route of spans and metrics; [`ApiResponse`] and [`ApiError`] as axum responses (pulls in axum) |
//! | `grpc` | no | gRPC as a transport: [`grpc`] (tonic services behind the chassis layers, `grpc.health.v1`, a resilient client; pulls in tonic, tonic-health and prost, no protoc) |
//! | `redis` | no | the Redis stores of the [`idempotency`] layer (`RedisStore`: redis-rs, a lock by `SET NX PX`, a timeout and a circuit breaker per call), so every replica replays the others' responses, and of the [`response_cache`] (`RedisCacheStore`, the same connection handling), so every replica hits the others' entries |

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admin;
pub mod auth;
pub mod body;
pub mod client;
pub mod control;
pub mod dashboard;
pub mod error;
mod future;
#[cfg(feature = "grpc")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc")))]
pub mod grpc;
pub mod health;
pub mod idempotency;
pub mod layers;
mod middleware;
pub mod response;
pub mod response_cache;
pub mod server;
mod stored;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;

pub use body::Body;
pub use error::ApiError;
pub use health::HealthLayer;
pub use layers::StandardLayers;
pub use response::{ApiResponse, ApiResult, ResultExt};
pub use server::{Server, ServerConfig};

// The README's example is compiled and run as a doctest, so the crate's front page stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
