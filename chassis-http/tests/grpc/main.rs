//! gRPC through the chassis: a real tonic client against tonic services served by the chassis
//! [`Server`](chassis_http::server::Server) behind [`GrpcLayers`](chassis_http::grpc::GrpcLayers),
//! the `grpc.health.v1` service following readiness, and the resilient client against a real
//! server.

mod client;
mod health;
mod server;
mod support;
