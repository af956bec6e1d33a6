//! A resilient gRPC client: a tonic `Channel` under chassis-core's
//! [`ResiliencePolicy`](chassis_core::resilience::policy::ResiliencePolicy).
//!
//! [`GrpcClient`] is a tower service of `http::Request<tonic::body::Body>`, so a generated
//! client takes it as is (`InventoryClient::new(client)`), as does
//! `tonic::client::Grpc::new(client)`:
//!
//! ```text
//! rate limit → bulkhead → retry (deadline, budget, backoff) → circuit breaker
//!   → attempt timeout → attempt (grpc-timeout, traceparent, service token) → tonic Channel
//! ```
//!
//! - **Retries only what is safe to repeat**: calls to the methods declared idempotent
//!   ([`GrpcClientBuilder::idempotent`], a full method `/pkg.Service/Method` or a whole
//!   service `/pkg.Service/`), and only on the retryable codes
//!   ([`retry_codes`](GrpcClientBuilder::retry_codes), default `UNAVAILABLE`), transport
//!   errors and attempt timeouts (with an attempt timeout, a server's `DEADLINE_EXCEEDED`
//!   too: it ended that attempt's own deadline). Their request message is buffered so each attempt sends it
//!   again; other calls (and client-streaming ones) are sent once, streamed.
//! - **Breaker**: `UNAVAILABLE`, `DEADLINE_EXCEEDED` and `RESOURCE_EXHAUSTED`, transport
//!   errors and timeouts are failures; any other status is a success (the server answered).
//!   While open, calls fail at once with `UNAVAILABLE` without touching the network.
//! - **Deadlines**: each attempt sends `grpc-timeout`: the policy's attempt timeout, or the
//!   caller's own deadline (`tonic::Request::set_timeout`) if shorter, so the server stops
//!   working when the client stops waiting.
//! - **Errors** reach the caller as `tonic::Status`: the server's, or `DEADLINE_EXCEEDED`
//!   (attempt timeout, retry deadline), `UNAVAILABLE` (open breaker, transport failure),
//!   `RESOURCE_EXHAUSTED` (bulkhead, rate limit).
//! - **Per attempt**: the current span's W3C trace context and, with
//!   [`service_token`](GrpcClientBuilder::service_token), `authorization: Bearer …`.
//! - **TLS** (feature `tls`): `https://` endpoints through the same
//!   [`ClientTlsConfig`](crate::tls::client::ClientTlsConfig) as the HTTP client (rustls with
//!   the ring provider, HTTP/2 by ALPN).
//!
//! The status of a call that fails after its first response message comes in the trailers,
//! which the policy does not wait for: retry and breaker decide on the response head, where
//! tonic servers put the status of every call that fails before answering.
//!
//! # Example
//! ```no_run
//! use chassis_core::resilience::policy::ResiliencePolicy;
//! use chassis_core::resilience::retry::RetryConfig;
//! use chassis_http::grpc::GrpcClient;
//! use std::time::Duration;
//! use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let channel = GrpcClient::builder("inventory", "http://inventory:8080")
//!     .policy(ResiliencePolicy::new()
//!         .timeout(Duration::from_millis(300))
//!         .retry(RetryConfig::new("inventory").max_attempts(3)))
//!     .idempotent("/grpc.health.v1.Health/")
//!     .build()?;
//! let mut health = HealthClient::new(channel);
//! let status = health.check(HealthCheckRequest { service: String::new() }).await?;
//! println!("{:?}", status.into_inner().status);
//! # Ok(())
//! # }
//! ```

mod channel;
pub mod policy;

pub use channel::{GrpcClient, GrpcClientBuilder, ResponseFuture};
