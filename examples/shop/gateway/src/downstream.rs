//! The gateway's calls to the services: one chassis [`HttpClient`] per downstream (orders,
//! inventory, notifications), each with its own resilience policy (per-attempt timeout, retry
//! with backoff and deadline, circuit breaker) and its own service token, and the mapping of a
//! failed call to the chassis JSON error the end user sees.
//!
//! What the client retries is decided by the request, not by the route: reads (GET) are
//! retried; an order placement (POST) only when the end user sent an `Idempotency-Key`, which
//! the gateway forwards and the orders service applies at most once. A placement without a key
//! is sent exactly once, so a timeout can never create a second order.
//!
//! [`to_api_error`] maps [`ClientError`] kinds:
//!
//! | the call | the end user gets |
//! |---|---|
//! | downstream answered 4xx | the same status, code, message and details (from the first KiB of its body, which the client keeps; a longer or non-chassis body keeps the status with a generic code) |
//! | downstream answered 503 | 503 `unavailable`, with its `Retry-After` if it sent one |
//! | downstream answered another 5xx, the connection broke, the answer was unreadable | 502 `upstream_failed` |
//! | downstream unreachable (connection refused) | 503 `unavailable`, `Retry-After: 1` |
//! | timed out (attempt or deadline) | 504 `timeout` |
//! | circuit open | 503 `circuit_open` with the breaker's `Retry-After` |
//! | local bulkhead / rate limit | 503 `overloaded` with `Retry-After` |
//! | anything else (no token, bad request built here) | 500 `internal_error` |
//!
//! # Example
//! ```
//! use chassis_http::auth::{SigningKey, TokenIssuer};
//! use shop_gateway::downstream;
//!
//! let key = SigningKey::generate_ed25519().unwrap();
//! let issuer = TokenIssuer::builder("gateway").signing_key(key).build().unwrap();
//! let orders = downstream::client("orders", "http://127.0.0.1:8081", &issuer, None).unwrap();
//! assert_eq!(orders.name(), "orders");
//! assert!(orders.circuit_breaker().is_some());
//! ```

use std::time::Duration;

use chassis_core::BoxError;
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_http::auth::{ServiceTokenSource, TokenIssuer};
use chassis_http::client::{ClientError, ClientErrorKind, HttpClient};
use chassis_http::error::{ApiError, codes};
use http::StatusCode;
use serde_json::json;

/// The default policy of a downstream `name`: 5 s per attempt; 3 attempts within 10 s with
/// 20..200 ms full-jitter backoff (only for requests that are safe to repeat); a breaker opening
/// at 50% failures over the last 50 calls (at least 20) for 5 s.
pub fn default_policy(name: &str) -> ResiliencePolicy {
    serde_json::from_value(json!({
        "name": name,
        "timeout": "5s",
        "retry": {"max_attempts": 3, "deadline": "10s", "backoff": {"base": "20ms", "max": "200ms", "jitter": "full"}},
        "circuit_breaker": {"minimum_number_of_calls": 20, "sliding_window_size": 50, "wait_duration_in_open_state": "5s"}
    }))
    .expect("the default policy is valid")
}

/// A client for the service `name` at `base_url`, attaching a service token for the audience
/// `name` (signed by `issuer`, cached and renewed) to every attempt. `policy` defaults to
/// [`default_policy`].
pub fn client(
    name: &str,
    base_url: &str,
    issuer: &TokenIssuer,
    policy: Option<ResiliencePolicy>,
) -> Result<HttpClient, BoxError> {
    let token = ServiceTokenSource::new(issuer.clone(), name, &[])?;
    Ok(HttpClient::builder(name)
        .base_url(base_url.trim_end_matches('/'))
        .policy(policy.unwrap_or_else(|| default_policy(name)))
        .service_token(token)
        .connect_timeout(Duration::from_secs(2))
        .build()?)
}

/// The chassis error answer for a failed call (see the [module docs](self) for the table).
pub fn to_api_error(err: &ClientError) -> ApiError {
    let name = err.downstream();
    match err.kind() {
        ClientErrorKind::Status4xx { status, .. } => match err.api_error() {
            // The downstream's own chassis error: the user gets it as is (our trace id is added
            // when it is rendered).
            Some(body) => {
                let mut e = ApiError::new(*status, body.error.code, body.error.message);
                if let Some(details) = body.error.details {
                    e = e.with_details(details);
                }
                e
            }
            None => {
                let code = match status.as_u16() {
                    401 => codes::UNAUTHORIZED,
                    403 => codes::FORBIDDEN,
                    404 => codes::NOT_FOUND,
                    413 => codes::PAYLOAD_TOO_LARGE,
                    429 => codes::RATE_LIMITED,
                    _ => codes::BAD_REQUEST,
                };
                ApiError::new(*status, code, format!("{name} answered {status}"))
            }
        },
        ClientErrorKind::Status5xx {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after,
        } => ApiError::unavailable(
            format!("{name} is unavailable"),
            retry_after.unwrap_or(Duration::from_secs(1)),
        ),
        ClientErrorKind::Status5xx { .. }
        | ClientErrorKind::Transport
        | ClientErrorKind::InvalidResponse { .. } => ApiError::new(
            StatusCode::BAD_GATEWAY,
            codes::UPSTREAM_FAILED,
            err.to_string(),
        ),
        ClientErrorKind::Unreachable => {
            ApiError::unavailable(format!("{name} is unreachable"), Duration::from_secs(1))
        }
        ClientErrorKind::TimedOut { .. } => {
            ApiError::new(StatusCode::GATEWAY_TIMEOUT, codes::TIMEOUT, err.to_string())
        }
        ClientErrorKind::CircuitOpen { retry_after } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::CIRCUIT_OPEN,
            err.to_string(),
        )
        .with_retry_after(*retry_after),
        ClientErrorKind::Overloaded { retry_after } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::OVERLOADED,
            err.to_string(),
        )
        .with_retry_after(retry_after.unwrap_or(Duration::from_secs(1))),
        _ => {
            tracing::error!(error = %err, "calling {name} failed");
            ApiError::internal("internal error")
        }
    }
}
