//! gRPC through the chassis: a real tonic client against tonic services served by the chassis
//! [`Server`](chassis_http::server::Server) behind [`GrpcLayers`](chassis_http::grpc::GrpcLayers),
//! the `grpc.health.v1` service following readiness, the resilient client against a real
//! server with its spans and metrics, and the reflection option.

mod client;
#[path = "../common/mod.rs"]
mod common;
mod health;
#[cfg(feature = "grpc-reflection")]
mod reflection;
mod server;
mod support;
mod telemetry;
