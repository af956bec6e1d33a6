//! A resilient HTTP client for calling other services.
//!
//! One [`HttpClient`] per downstream service, built on hyper-util's pooled client and
//! chassis-core's [`ResiliencePolicy`](chassis_core::resilience::policy::ResiliencePolicy):
//!
//! ```text
//! rate limit → bulkhead → retry (deadline, budget, backoff / Retry-After) → circuit breaker
//!   → attempt timeout → attempt (client span, traceparent, service token, metrics) → hyper
//! ```
//!
//! - **`http://` and `https://`**: with the `tls` feature (on by default) the connector speaks
//!   TLS (rustls) to `https://` URLs and negotiates HTTP/2 or HTTP/1.1 by ALPN; the server's
//!   certificate must chain to a webpki root unless [`HttpClientBuilder::tls`] says otherwise
//!   (the platform's roots, a private CA, a client certificate for mTLS: see
//!   [`ClientTlsConfig`](crate::tls::client::ClientTlsConfig)).
//! - **Retries only what is safe to repeat**: GET, HEAD, PUT, DELETE, OPTIONS (and TRACE); POST
//!   and PATCH only with an `Idempotency-Key` header, the [`AllowRetry`] request extension or
//!   [`HttpClientBuilder::retry_non_idempotent`]. Retried outcomes: transport errors, attempt
//!   timeouts, 408, 429 and 5xx (but not 501/505); never a failed TLS handshake.
//! - **Honours `Retry-After`** (seconds or HTTP-date) on 429 and 503 instead of the backoff, up
//!   to [`max_retry_after`](HttpClientBuilder::max_retry_after) (a longer wait ends the call).
//! - **Breaker**: 5xx, transport errors (TLS failures included) and timeouts are failures,
//!   429 is ignored; while open, calls fail at once with [`ClientErrorKind::CircuitOpen`]
//!   without touching the network.
//! - **Per attempt** (each a real request on the wire): a client span following the
//!   OpenTelemetry HTTP client conventions (`http.request.method`, `server.address`,
//!   `server.port`, `url.full`, `http.response.status_code`, `error.type` (`tls_error` for a
//!   failed handshake),
//!   `http.request.resend_count`), the W3C `traceparent`/`tracestate` of that span injected, the
//!   service token attached (see [`ServiceTokenSource`](crate::auth::ServiceTokenSource)), and
//!   one `http_client_request_duration_seconds` histogram sample (seconds).
//! - **Typed errors** ([`ClientError`], [`ClientErrorKind`]): `Status4xx { status, body }`,
//!   `Status5xx { status, retry_after }`, `Unreachable` (never sent), `Transport` (maybe sent),
//!   `TimedOut`, `CircuitOpen { retry_after }`, `Overloaded`, `InvalidRequest`,
//!   `InvalidResponse`, `Auth`, `Tls(`[`TlsFailure`]`)` (untrusted issuer, wrong host name,
//!   expired, client certificate required or rejected...); [`ClientError::attempts`] and
//!   [`ClientError::retries_exhausted`] say what the retries did.
//!
//! # Example
//! ```
//! use chassis_http::client::{ClientErrorKind, HttpClient};
//! use chassis_core::resilience::policy::ResiliencePolicy;
//! use chassis_core::resilience::retry::{Backoff, RetryConfig};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let addr = listener.local_addr()?;
//! # let app = axum::Router::new()
//! #     .route("/items/7", axum::routing::get(|| async { axum::Json(serde_json::json!({"id": 7})) }));
//! # tokio::spawn(async move { axum::serve(listener, app).await });
//! let inventory = HttpClient::builder("inventory")
//!     .base_url(format!("http://{addr}"))
//!     .policy(
//!         ResiliencePolicy::new()
//!             .timeout(Duration::from_millis(500))
//!             .retry(RetryConfig::new("inventory").max_attempts(3).backoff(
//!                 Backoff::exponential(Duration::from_millis(50)).max(Duration::from_secs(1)),
//!             )),
//!     )
//!     .build()?;
//!
//! let item: serde_json::Value = inventory.get_json("/items/7").await?;
//! assert_eq!(item["id"], 7);
//!
//! let err = inventory.get_json::<serde_json::Value>("/items/8").await.unwrap_err();
//! assert!(matches!(err.kind(), ClientErrorKind::Status4xx { status, .. } if status.as_u16() == 404));
//! # Ok(())
//! # }
//! ```

mod error;
mod http_client;
mod instrument;
pub mod policy;

pub use error::{ClientError, ClientErrorKind, TlsFailure};
pub use http_client::{ClientBody, DEFAULT_MAX_RESPONSE_BYTES, HttpClient, HttpClientBuilder};
pub use policy::{AllowRetry, IDEMPOTENCY_KEY};
