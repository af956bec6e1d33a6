//! The one JSON error body of the chassis, and [`ApiError`] that produces it.
//!
//! Every error a chassis layer answers with (timeout, body limit, load shedding, panic, auth,
//! health) and every error a handler returns through [`ApiError`] has the same shape and a
//! matching HTTP status:
//!
//! ```json
//! {"success":false,"error":{"code":"timeout","message":"request timed out after 30000ms","details":null},"traceId":"4bf92f3577b34da6a3ce929d0e0e4736"}
//! ```
//!
//! - `code` is a stable, machine-readable `snake_case` string (see [`codes`]);
//! - `message` is for humans and never contains secrets;
//! - `details` is optional structured data (`null` when absent);
//! - `traceId` is the W3C trace id of the request: the current span's OpenTelemetry context if
//!   a `tracing-opentelemetry` layer is installed, otherwise the trace context the request
//!   arrived with (set by the chassis trace layer), otherwise `null`.
//!
//! Errors that say "try again later" (503, 429) carry a `Retry-After` header in seconds.
//!
//! # Example
//! ```
//! use chassis_http::error::ApiError;
//! use http::StatusCode;
//!
//! let err = ApiError::new(StatusCode::NOT_FOUND, "order_not_found", "no order 42")
//!     .with_details(serde_json::json!({ "orderId": 42 }));
//! let response = err.into_response();
//! assert_eq!(response.status(), StatusCode::NOT_FOUND);
//! assert_eq!(response.headers()["content-type"], "application/json");
//! ```
//!
//! In an axum handler, return it through a small wrapper or convert it in place:
//! `let (parts, body) = err.into_response().into_parts();
//! axum::response::Response::from_parts(parts, axum::body::Body::new(body))`.
//!
//! Errors of the resilience layers convert too: [`ApiError::from_core`] maps a
//! [`chassis_core::Error`] (`Timeout` -> 504, `CircuitOpen`/`BulkheadFull` -> 503 with
//! `Retry-After`, `RateLimited` -> 429 with `Retry-After`), and [`ApiError::from_box_error`]
//! finds one anywhere in a [`BoxError`]'s source chain.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use chassis_core::{BoxError, ErrorKind as CoreErrorKind};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

use crate::body::{Body, full};

/// The stable error codes the chassis itself produces.
pub mod codes {
    /// 400: the request is malformed.
    pub const BAD_REQUEST: &str = "bad_request";
    /// 401: no valid credentials.
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// 403: valid credentials, not allowed.
    pub const FORBIDDEN: &str = "forbidden";
    /// 404: nothing here.
    pub const NOT_FOUND: &str = "not_found";
    /// 413: the request body exceeds the configured limit.
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// 429: a rate limiter rejected the call.
    pub const RATE_LIMITED: &str = "rate_limited";
    /// 500: an unexpected failure (including a panic in a handler).
    pub const INTERNAL: &str = "internal_error";
    /// 502: a downstream call failed after every attempt.
    pub const UPSTREAM_FAILED: &str = "upstream_failed";
    /// 503: the server sheds load (concurrency limit reached).
    pub const OVERLOADED: &str = "overloaded";
    /// 503: a circuit breaker is open.
    pub const CIRCUIT_OPEN: &str = "circuit_open";
    /// 503: a bulkhead is full.
    pub const BULKHEAD_FULL: &str = "bulkhead_full";
    /// 503: the service is not ready (health endpoints).
    pub const UNAVAILABLE: &str = "unavailable";
    /// 504: the request (or a downstream call) timed out.
    pub const TIMEOUT: &str = "timeout";
}

/// An error answer: status, stable code, message, optional details, and the headers that go
/// with it (`Retry-After`, `WWW-Authenticate`, ...).
#[derive(Clone)]
pub struct ApiError {
    status: StatusCode,
    code: Cow<'static, str>,
    message: Cow<'static, str>,
    details: Option<serde_json::Value>,
    retry_after: Option<Duration>,
    trace_id: Option<String>,
    headers: HeaderMap,
}

impl ApiError {
    /// An error with `status`, machine-readable `code` and human `message`.
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Self {
            status,
            code: code.into(),
            message: message.into(),
            details: None,
            retry_after: None,
            trace_id: None,
            headers: HeaderMap::new(),
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED, message)
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, codes::FORBIDDEN, message)
    }

    /// 404 `not_found`.
    pub fn not_found(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, codes::NOT_FOUND, message)
    }

    /// 500 `internal_error`. Keep `message` free of internals; log the cause instead.
    pub fn internal(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, codes::INTERNAL, message)
    }

    /// 503 `unavailable` with a `Retry-After` of `retry_after`.
    pub fn unavailable(message: impl Into<Cow<'static, str>>, retry_after: Duration) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, codes::UNAVAILABLE, message)
            .with_retry_after(retry_after)
    }

    /// 504 `timeout` saying the request did not complete within `after`.
    pub fn timeout(after: Duration) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            codes::TIMEOUT,
            format!("request timed out after {}ms", after.as_millis()),
        )
    }

    /// 413 `payload_too_large` for a body over `limit` bytes.
    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            codes::PAYLOAD_TOO_LARGE,
            format!("request body exceeds the limit of {limit} bytes"),
        )
        .with_details(serde_json::json!({ "limitBytes": limit }))
    }

    /// Maps an error of a chassis-core resilience layer:
    /// `Timeout`/`DeadlineExceeded` -> 504, `CircuitOpen`/`BulkheadFull` -> 503 with
    /// `Retry-After`, `RateLimited` -> 429 with `Retry-After`, `RetriesExhausted`/
    /// `RetryBudgetExhausted` -> 502, anything else -> 500.
    pub fn from_core(err: &chassis_core::Error) -> Self {
        match err.kind() {
            CoreErrorKind::Timeout { .. } | CoreErrorKind::DeadlineExceeded { .. } => {
                Self::new(StatusCode::GATEWAY_TIMEOUT, codes::TIMEOUT, err.to_string())
            }
            CoreErrorKind::CircuitOpen { retry_after, .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::CIRCUIT_OPEN,
                err.to_string(),
            )
            .with_retry_after(*retry_after),
            CoreErrorKind::BulkheadFull { max_wait, .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::BULKHEAD_FULL,
                err.to_string(),
            )
            .with_retry_after((*max_wait).max(Duration::from_secs(1))),
            CoreErrorKind::RateLimited { retry_after, .. } => Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                codes::RATE_LIMITED,
                err.to_string(),
            )
            .with_retry_after(*retry_after),
            CoreErrorKind::RetriesExhausted { .. } | CoreErrorKind::RetryBudgetExhausted { .. } => {
                Self::new(
                    StatusCode::BAD_GATEWAY,
                    codes::UPSTREAM_FAILED,
                    err.to_string(),
                )
            }
            _ => Self::internal("internal error"),
        }
    }

    /// Maps a middleware error: a [`chassis_core::Error`] anywhere in the source chain maps as
    /// in [`from_core`](Self::from_core), an [`ApiError`] is returned as is, anything else is a
    /// 500 whose message does not leak the cause.
    pub fn from_box_error(err: &BoxError) -> Self {
        if let Some(api) = err.downcast_ref::<ApiError>() {
            return api.clone();
        }
        match chassis_core::Error::find_in(err.as_ref()) {
            Some(core) => Self::from_core(core),
            None => Self::internal("internal error"),
        }
    }

    /// Adds structured details (serialised as `error.details`).
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Adds a `Retry-After` header (whole seconds, rounded up, at least 1).
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// Sets the trace id explicitly instead of reading it from the current context.
    pub fn with_trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.trace_id = Some(trace_id.into());
        self
    }

    /// Adds a response header (e.g. `WWW-Authenticate`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The structured details, if any.
    pub fn details(&self) -> Option<&serde_json::Value> {
        self.details.as_ref()
    }

    /// The `Retry-After` hint, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The extra headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The serialisable body, with the trace id resolved now (explicit, else
    /// [`current_trace_id`]).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            success: false,
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.to_string(),
                details: self.details.clone(),
            },
            trace_id: self.trace_id.clone().or_else(current_trace_id),
        }
    }

    /// The JSON body as bytes.
    pub fn to_json(&self) -> Bytes {
        // Serialising plain strings and a `serde_json::Value` cannot fail.
        Bytes::from(serde_json::to_vec(&self.body()).unwrap_or_default())
    }

    /// The HTTP response: status, `content-type: application/json`, `Retry-After` and extra
    /// headers, and the JSON body.
    pub fn into_response(self) -> http::Response<Body> {
        let json = self.to_json();
        let mut response = http::Response::new(full(json));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(retry_after) = self.retry_after {
            headers.insert(header::RETRY_AFTER, retry_after_value(retry_after));
        }
        for (name, value) in &self.headers {
            headers.append(name, value.clone());
        }
        response
    }
}

/// `Retry-After` value for `d`: whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_value(d: Duration) -> HeaderValue {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiError")
            .field("status", &self.status)
            .field("code", &self.code)
            .field("message", &self.message)
            .field("details", &self.details)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl From<chassis_core::Error> for ApiError {
    fn from(err: chassis_core::Error) -> Self {
        Self::from_core(&err)
    }
}

impl From<ApiError> for http::Response<Body> {
    fn from(err: ApiError) -> Self {
        err.into_response()
    }
}

/// The JSON error body: `{"success":false,"error":{...},"traceId":...}`. Also what clients
/// deserialise an error answer into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    /// What went wrong.
    pub error: ErrorDetail,
    /// The W3C trace id (32 lowercase hex digits), when known.
    #[serde(rename = "traceId")]
    pub trace_id: Option<String>,
}

/// The `error` object of an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable code.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Structured details, `null` when absent.
    pub details: Option<serde_json::Value>,
}

/// The error of the chassis-http server runner (binding, configuration).
///
/// Request-level failures are not errors of this kind: they are answered with [`ApiError`].
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    source: Option<BoxError>,
}

/// What went wrong in the server runner.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The listener could not be bound to `addr`.
    Bind {
        /// The address that was asked for.
        addr: std::net::SocketAddr,
    },
    /// An I/O operation on the listener failed.
    Io,
    /// A configuration value was rejected.
    InvalidConfig {
        /// What is wrong with it.
        reason: String,
    },
}

impl Error {
    /// An error of `kind` caused by `source`.
    pub fn with_source(kind: ErrorKind, source: impl Into<BoxError>) -> Self {
        Self {
            kind,
            source: Some(source.into()),
        }
    }

    /// An error of `kind` without a source.
    pub fn new(kind: ErrorKind) -> Self {
        Self { kind, source: None }
    }

    /// What happened.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Bind { addr } => write!(f, "cannot bind {addr}")?,
            ErrorKind::Io => write!(f, "listener I/O error")?,
            ErrorKind::InvalidConfig { reason } => write!(f, "invalid configuration: {reason}")?,
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

tokio::task_local! {
    /// The trace id of the request being served, set by the chassis trace layer so that
    /// errors can carry it even without an OpenTelemetry tracing layer installed.
    pub(crate) static REQUEST_TRACE_ID: Option<opentelemetry::trace::TraceId>;
}

/// The trace id of the current request as 32 hex digits: the current tracing span's
/// OpenTelemetry context if valid, else the trace context extracted by the chassis trace layer
/// for the request this task serves, else `None`.
pub fn current_trace_id() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let cx = tracing::Span::current().context();
    let span = cx.span();
    let span_context = span.span_context();
    if span_context.is_valid() {
        return Some(span_context.trace_id().to_string());
    }
    REQUEST_TRACE_ID
        .try_with(|id| id.map(|id| id.to_string()))
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::sync::Arc;

    async fn json(response: http::Response<Body>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn body_shape_and_headers() {
        let response = ApiError::new(StatusCode::CONFLICT, "duplicate", "already exists")
            .with_details(serde_json::json!({"id": 1}))
            .with_trace_id("0af7651916cd43dd8448eb211c80319c")
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
            .into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        assert_eq!(
            json(response).await,
            serde_json::json!({
                "success": false,
                "error": {"code": "duplicate", "message": "already exists", "details": {"id": 1}},
                "traceId": "0af7651916cd43dd8448eb211c80319c"
            })
        );
    }

    #[tokio::test]
    async fn trace_id_from_task_local_and_null_without_context() {
        let body = json(ApiError::internal("x").into_response()).await;
        assert_eq!(body["traceId"], serde_json::Value::Null);
        assert_eq!(body["error"]["details"], serde_json::Value::Null);
        let id =
            opentelemetry::trace::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let body = REQUEST_TRACE_ID
            .scope(Some(id), async {
                json(ApiError::internal("x").into_response()).await
            })
            .await;
        assert_eq!(body["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn maps_core_errors() {
        let name: Arc<str> = "payments".into();
        let cases = [
            (
                chassis_core::Error::timeout(Duration::from_millis(5)),
                StatusCode::GATEWAY_TIMEOUT,
                None,
            ),
            (
                chassis_core::Error::circuit_open(name.clone(), Duration::from_millis(1500)),
                StatusCode::SERVICE_UNAVAILABLE,
                Some("2"),
            ),
            (
                chassis_core::Error::new(CoreErrorKind::BulkheadFull {
                    name: name.clone(),
                    max_concurrent: 4,
                    max_wait: Duration::ZERO,
                }),
                StatusCode::SERVICE_UNAVAILABLE,
                Some("1"),
            ),
            (
                chassis_core::Error::new(CoreErrorKind::RateLimited {
                    name,
                    retry_after: Duration::from_secs(3),
                }),
                StatusCode::TOO_MANY_REQUESTS,
                Some("3"),
            ),
            (
                chassis_core::Error::new(CoreErrorKind::RetriesExhausted { attempts: 3 }),
                StatusCode::BAD_GATEWAY,
                None,
            ),
            (
                chassis_core::Error::invalid_config("nope"),
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
            ),
        ];
        for (err, status, retry_after) in cases {
            let response = ApiError::from(err).into_response();
            assert_eq!(response.status(), status);
            assert_eq!(
                response
                    .headers()
                    .get(header::RETRY_AFTER)
                    .map(|v| v.to_str().unwrap()),
                retry_after
            );
        }
    }

    #[test]
    fn maps_boxed_errors_without_leaking() {
        let wrapped: BoxError = Box::new(chassis_core::Error::with_source(
            CoreErrorKind::RetriesExhausted { attempts: 2 },
            chassis_core::Error::timeout(Duration::from_secs(1)),
        ));
        assert_eq!(
            ApiError::from_box_error(&wrapped).status(),
            StatusCode::BAD_GATEWAY
        );
        let other: BoxError = "database password is hunter2".into();
        let api = ApiError::from_box_error(&other);
        assert_eq!(api.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!api.message().contains("hunter2"));
        let api: BoxError = Box::new(ApiError::forbidden("no"));
        assert_eq!(
            ApiError::from_box_error(&api).status(),
            StatusCode::FORBIDDEN
        );
    }
}
