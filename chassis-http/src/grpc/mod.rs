//! gRPC as a first-class transport (feature `grpc`): tonic services behind the chassis layers,
//! the `grpc.health.v1` health service from the [`HealthRegistry`](chassis_core::health::HealthRegistry),
//! and a resilient client over a tonic `Channel`. Pure Rust: the health service is
//! tonic-health's pre-generated one, and nothing here needs `protoc`.
//!
//! # Server
//! The chassis [`Server`](crate::server::Server) serves tonic services as it serves any tower
//! service (h2c, or HTTP/2 over TLS by ALPN), with the same graceful shutdown and lifecycle
//! ([`HttpServer`](crate::server::HttpServer)): wrap them in [`GrpcLayers`] (trace context,
//! `rpc.*` metrics, error answers as gRPC statuses with the trace id in the `x-trace-id`
//! metadata, panic -> `INTERNAL`, load shedding -> `RESOURCE_EXHAUSTED`, `grpc-timeout`
//! honoured). Several services share one stack through a [`GrpcRouter`]; [`Multiplex`] puts
//! REST and gRPC on one port by content type.
//!
//! - [`GrpcLayers`] (in [`layers`]), the stack;
//! - [`StatusMappingLayer`] (in [`status_mapping`]), chassis HTTP error answers (guard,
//!   service tokens, rate limits) as gRPC statuses;
//! - [`GrpcDeadlineLayer`] (in [`deadline`]), `grpc-timeout`;
//! - [`GrpcMetricsLayer`] (in [`metrics`]), `rpc_server_call_duration_seconds`;
//! - [`GrpcRouter`] and [`Multiplex`] (in [`router`]);
//! - [`GrpcHealth`] (in [`health`]);
//! - [`GrpcReflection`] (in [`reflection`], feature `grpc-reflection`), `grpc.reflection.v1`;
//! - status codes on the wire (in [`code`]).
//!
//! # Identity and context
//! gRPC metadata are HTTP/2 header fields, so the HTTP layers apply unchanged: the server span
//! extracts `traceparent`/`tracestate`/`baggage`;
//! [`RequireServiceTokenLayer`](crate::auth::RequireServiceTokenLayer) inside [`GrpcLayers`]
//! verifies the `authorization` metadata, with per-method scopes by path prefix
//! (`require_scopes_for("/inventory.v1.Inventory/Reserve", ..)`); its 401 reaches the caller as
//! `UNAUTHENTICATED`, its 403 as `PERMISSION_DENIED`. The client attaches tokens and the
//! trace context per attempt (see [`client`]).
//!
//! # Example
//! ```no_run
//! use chassis_core::lifecycle::App;
//! use chassis_http::grpc::{GrpcHealth, GrpcLayers, GrpcRouter};
//! use chassis_http::server::{HttpServer, ServerConfig};
//! use tower::Layer;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), chassis_core::Error> {
//! let app = App::new("inventory");
//! let health = GrpcHealth::new(app.health().clone()).service("inventory.v1.Inventory");
//! let routes = GrpcRouter::new()
//!     .add_service(health.into_service());
//!     // .add_service(InventoryServer::new(MyInventory::default()))
//! let service = GrpcLayers::new().layer(routes);
//! app.component(HttpServer::new(ServerConfig::default(), service))
//!     .run()
//!     .await
//! # }
//! ```

pub mod client;
pub mod code;
pub mod deadline;
pub mod health;
pub mod layers;
pub mod metrics;
#[cfg(feature = "grpc-reflection")]
#[cfg_attr(docsrs, doc(cfg(feature = "grpc-reflection")))]
pub mod reflection;
pub mod router;
pub mod status_mapping;

pub use client::{GrpcClient, GrpcClientBuilder};
pub use deadline::GrpcDeadlineLayer;
pub use health::GrpcHealth;
pub use layers::GrpcLayers;
pub use metrics::GrpcMetricsLayer;
#[cfg(feature = "grpc-reflection")]
pub use reflection::GrpcReflection;
pub use router::{GrpcRouter, Multiplex};
pub use status_mapping::StatusMappingLayer;
