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
//! Writes go through [`fn@write`] instead of `HttpClient::execute`: it takes the status first and
//! reads the body afterwards (at most [`MAX_RELAYED_BODY_BYTES`], within
//! [`WRITE_BODY_TIMEOUT`]), so a 2xx whose body is too large or breaks off is still a 2xx
//! ([`WriteAnswer::body`] is `None`): the write happened and the gateway must say so
//! (`execute` would make it an `InvalidResponse` or `Transport` error without the status, and
//! the table above a 502). A non-2xx answer to a write maps as in the table.
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

use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use chassis_core::BoxError;
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_http::auth::{ServiceTokenSource, TokenIssuer};
use chassis_http::client::ClientBody;
use chassis_http::client::policy::parse_retry_after;
use chassis_http::client::{ClientError, ClientErrorKind, HttpClient};
use chassis_http::error::{ApiError, ErrorBody, codes};
use http::{HeaderMap, StatusCode};
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
    // HTTPS with the shop's CA and the gateway's certificate when TLS_CA_FILE is set.
    Ok(shop_common::tls::client_builder(name)?
        .base_url(base_url.trim_end_matches('/'))
        .policy(policy.unwrap_or_else(|| default_policy(name)))
        .service_token(token)
        .connect_timeout(Duration::from_secs(2))
        .build()?)
}

/// Largest body of a downstream's answer the gateway reads to relay it, in bytes (1 MiB): a
/// larger answer to a read is a 502 (the client may read again); to a write, see [`fn@write`].
pub const MAX_RELAYED_BODY_BYTES: usize = 1 << 20;

/// How long [`fn@write`] waits for an answer's body once its status and headers arrived (the
/// policy's timeout covers the wait for the head only).
pub const WRITE_BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// A downstream's 2xx answer to a write, from [`fn@write`].
#[derive(Debug)]
pub struct WriteAnswer {
    /// The downstream's status (2xx).
    pub status: StatusCode,
    /// The downstream's headers (`Location` names what was written).
    pub headers: HeaderMap,
    /// The body, or `None` when it was larger than [`MAX_RELAYED_BODY_BYTES`], broke off, or
    /// did not arrive within [`WRITE_BODY_TIMEOUT`]: the write succeeded all the same.
    pub body: Option<Bytes>,
}

/// Sends a write `req` (a POST; retried only with an `Idempotency-Key`, as every call) and
/// returns the downstream's 2xx answer even when its body cannot be read; a non-2xx answer or a
/// failure to get one is the chassis error of the [module docs](self) table.
pub async fn write(
    client: &HttpClient,
    req: http::Request<ClientBody>,
) -> Result<WriteAnswer, ApiError> {
    let name = client.name();
    let resp = client.send(req).await.map_err(|e| {
        tracing::warn!(error = %e, attempts = e.attempts(), "downstream write failed");
        to_api_error(&e)
    })?;
    let (parts, body) = resp.into_parts();
    let read = tokio::time::timeout(
        WRITE_BODY_TIMEOUT,
        axum::body::to_bytes(axum::body::Body::new(body), MAX_RELAYED_BODY_BYTES),
    )
    .await;
    let body = match read {
        Ok(Ok(bytes)) => Some(bytes),
        Ok(Err(e)) => {
            tracing::warn!(downstream = name, status = parts.status.as_u16(), error = %e, "answer body too large or broken");
            None
        }
        Err(_) => {
            tracing::warn!(
                downstream = name,
                status = parts.status.as_u16(),
                "answer body timed out"
            );
            None
        }
    };
    if parts.status.is_success() {
        return Ok(WriteAnswer {
            status: parts.status,
            headers: parts.headers,
            body,
        });
    }
    let status = parts.status;
    let err = if status.is_client_error() {
        let chassis = body
            .as_deref()
            .and_then(|b| serde_json::from_slice::<ErrorBody>(b).ok());
        client_error(name, status, chassis)
    } else if status == StatusCode::SERVICE_UNAVAILABLE {
        ApiError::unavailable(
            format!("{name} is unavailable"),
            parse_retry_after(&parts.headers, SystemTime::now()).unwrap_or(Duration::from_secs(1)),
        )
    } else {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            codes::UPSTREAM_FAILED,
            format!("{name} answered {status}"),
        )
    };
    tracing::warn!(
        downstream = name,
        status = status.as_u16(),
        "downstream refused the write"
    );
    Err(err)
}

/// A downstream's 4xx: its own chassis error as is (our trace id is added when it is
/// rendered), or the status with a generic code.
fn client_error(name: &str, status: StatusCode, body: Option<ErrorBody>) -> ApiError {
    match body {
        Some(body) => {
            let mut e = ApiError::new(status, body.error.code, body.error.message);
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
            ApiError::new(status, code, format!("{name} answered {status}"))
        }
    }
}

/// The chassis error answer for a failed call (see the [module docs](self) for the table).
pub fn to_api_error(err: &ClientError) -> ApiError {
    let name = err.downstream();
    match err.kind() {
        ClientErrorKind::Status4xx { status, .. } => client_error(name, *status, err.api_error()),
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
