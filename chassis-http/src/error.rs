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
//! With the `axum` feature, [`ApiError`] is an axum `IntoResponse`: a handler returns
//! `Result<_, ApiError>`, or [`ApiResult`](crate::response::ApiResult) with the success
//! envelope of [`crate::response`], and answers with `?`. axum's own rejections convert with
//! `From` (`JsonRejection`, `PathRejection`, `QueryRejection`, `FormRejection`); behind the
//! [standard layers](crate::layers::StandardLayers) a rejection the handler does not handle gets
//! the JSON body anyway (see the [guard](crate::layers::guard)).
//!
//! An error answer without a code of its own (a status and a text) maps with
//! [`ApiError::from_status`], whose code comes from [`code_for_status`].
//!
//! Errors of the resilience layers convert too: [`ApiError::from_core`] maps a
//! [`chassis_core::Error`] (`Timeout` -> 504, `CircuitOpen`/`BulkheadFull` -> 503 with
//! `Retry-After`, `RateLimited` -> 429 with `Retry-After`, plus the `RateLimit-Policy` and
//! `RateLimit` fields when a keyed limiter rejected), and [`ApiError::from_box_error`]
//! finds one anywhere in a [`BoxError`]'s source chain.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use chassis_core::resilience::keyed_rate_limit::RateLimitInfo;
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
    /// 405: the route exists, not for this method.
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    /// 409: the request conflicts with the current state.
    pub const CONFLICT: &str = "conflict";
    /// 413: the request body exceeds the configured limit.
    pub const PAYLOAD_TOO_LARGE: &str = "payload_too_large";
    /// 415: the request body's content type is missing or not accepted.
    pub const UNSUPPORTED_MEDIA_TYPE: &str = "unsupported_media_type";
    /// 422: the request body is well-formed but its content is not valid.
    pub const UNPROCESSABLE_ENTITY: &str = "unprocessable_entity";
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

/// The code the chassis uses for an error answer with `status` and no code of its own (an
/// axum rejection, a router's 404 or 405, a plain-text error of a handler).
///
/// A status the chassis produces itself maps to that code (500 `internal_error`, 502
/// `upstream_failed`, 503 `unavailable`, 504 `timeout`, 429 `rate_limited`); any other status
/// maps to its reason phrase in `snake_case` (405 `method_not_allowed`, 415
/// `unsupported_media_type`, 422 `unprocessable_entity`, 408 `request_timeout`); a status
/// without a reason phrase maps to `client_error` or `server_error`.
///
/// ```
/// use chassis_http::error::code_for_status;
/// use http::StatusCode;
///
/// assert_eq!(code_for_status(StatusCode::METHOD_NOT_ALLOWED), "method_not_allowed");
/// assert_eq!(code_for_status(StatusCode::INTERNAL_SERVER_ERROR), "internal_error");
/// ```
pub fn code_for_status(status: StatusCode) -> Cow<'static, str> {
    let code = match status {
        StatusCode::BAD_REQUEST => codes::BAD_REQUEST,
        StatusCode::UNAUTHORIZED => codes::UNAUTHORIZED,
        StatusCode::FORBIDDEN => codes::FORBIDDEN,
        StatusCode::NOT_FOUND => codes::NOT_FOUND,
        StatusCode::METHOD_NOT_ALLOWED => codes::METHOD_NOT_ALLOWED,
        StatusCode::CONFLICT => codes::CONFLICT,
        StatusCode::PAYLOAD_TOO_LARGE => codes::PAYLOAD_TOO_LARGE,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => codes::UNSUPPORTED_MEDIA_TYPE,
        StatusCode::UNPROCESSABLE_ENTITY => codes::UNPROCESSABLE_ENTITY,
        StatusCode::TOO_MANY_REQUESTS => codes::RATE_LIMITED,
        StatusCode::INTERNAL_SERVER_ERROR => codes::INTERNAL,
        StatusCode::BAD_GATEWAY => codes::UPSTREAM_FAILED,
        StatusCode::SERVICE_UNAVAILABLE => codes::UNAVAILABLE,
        StatusCode::GATEWAY_TIMEOUT => codes::TIMEOUT,
        _ => {
            return match status.canonical_reason() {
                Some(reason) => Cow::Owned(snake_case(reason)),
                None if status.is_server_error() => Cow::Borrowed("server_error"),
                None => Cow::Borrowed("client_error"),
            };
        }
    };
    Cow::Borrowed(code)
}

/// `"I'm a Teapot"` -> `"i_m_a_teapot"`: lowercase ASCII words joined by one underscore.
fn snake_case(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    for word in reason.split(|c: char| !c.is_ascii_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('_');
        }
        out.extend(word.chars().map(|c| c.to_ascii_lowercase()));
    }
    out
}

/// An error answer: status, stable code, message, optional details, and the headers that go
/// with it (`Retry-After`, `WWW-Authenticate`, ...).
#[derive(Clone)]
pub struct ApiError {
    // Boxed so that `Result<T, ApiError>`, which handlers return on every path, is not as large
    // as the error: unboxed, the fields (a header map among them) would make every `Ok` that
    // large too, and trip clippy's `result_large_err` in every handler.
    inner: Box<Inner>,
}

#[derive(Clone)]
struct Inner {
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
            inner: Box::new(Inner {
                status,
                code: code.into(),
                message: message.into(),
                details: None,
                retry_after: None,
                trace_id: None,
                headers: HeaderMap::new(),
            }),
        }
    }

    /// An error with `status`, the code [`code_for_status`] gives it, and `message`: for error
    /// answers that come with a status and a text but no code (a framework's rejection, another
    /// service's plain-text error).
    pub fn from_status(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(status, code_for_status(status), message)
    }

    /// An error for an answer that came as a status and a text written for clients (an axum
    /// rejection, a plain-text error response): the code [`code_for_status`] gives the status,
    /// and the text as the message for a 4xx. The text of a 5xx is logged at ERROR instead and
    /// the message is the status's reason phrase: such texts describe internals (axum's name
    /// Rust types and extensions), which an error body never shows.
    pub fn from_status_text(status: StatusCode, text: &str) -> Self {
        let text = text.trim();
        let reason = status.canonical_reason().unwrap_or("error");
        if status.is_server_error() {
            if !text.is_empty() {
                tracing::error!(
                    target: "chassis_http::server",
                    status = status.as_u16(),
                    error = text,
                    "server error text withheld from the error body"
                );
            }
            return Self::from_status(status, reason);
        }
        if text.is_empty() {
            Self::from_status(status, reason)
        } else {
            Self::from_status(status, text.to_owned())
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
    /// `Timeout`/`DeadlineExceeded` -> 504, `CircuitOpen`/`BulkheadFull`/`ConcurrencyLimited`
    /// -> 503 with `Retry-After`, `RateLimited` -> 429 with `Retry-After`, `RetriesExhausted`/
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
            // Shed by an adaptive limit: the server is at capacity now; a second is long enough
            // for the calls in flight to finish.
            CoreErrorKind::ConcurrencyLimited { .. } => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::OVERLOADED,
                err.to_string(),
            )
            .with_retry_after(Duration::from_secs(1)),
            CoreErrorKind::RateLimited { name, retry_after } => {
                let api = Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    codes::RATE_LIMITED,
                    err.to_string(),
                )
                .with_retry_after(*retry_after);
                match RateLimitInfo::of(err) {
                    Some(info) => api.with_rate_limit_fields(name, info),
                    None => api,
                }
            }
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
        self.inner.details = Some(details);
        self
    }

    /// Adds a `Retry-After` header (whole seconds, rounded up, at least 1).
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.inner.retry_after = Some(retry_after);
        self
    }

    /// Adds the `RateLimit-Policy` (`"name";q=limit;w=window`) and `RateLimit`
    /// (`"name";r=remaining;t=reset`) fields of draft-ietf-httpapi-ratelimit-headers-10, with
    /// the window and the reset in whole seconds rounded up. [`from_core`](Self::from_core)
    /// adds them to a keyed rate limiter's 429, `policy` being the limiter's name. A policy
    /// name that is not printable ASCII is sent as `"default"`.
    pub fn with_rate_limit_fields(self, policy: &str, info: &RateLimitInfo) -> Self {
        let seconds = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
        let name = if policy.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            policy.replace('\\', "\\\\").replace('"', "\\\"")
        } else {
            "default".to_owned()
        };
        let policy = format!(
            "\"{name}\";q={};w={}",
            info.limit,
            seconds(info.window).max(1)
        );
        let state = format!(
            "\"{name}\";r={};t={}",
            info.remaining,
            seconds(info.reset_after)
        );
        match (HeaderValue::try_from(policy), HeaderValue::try_from(state)) {
            (Ok(policy), Ok(state)) => self
                .with_header(HeaderName::from_static("ratelimit-policy"), policy)
                .with_header(HeaderName::from_static("ratelimit"), state),
            _ => self,
        }
    }

    /// Sets the trace id explicitly instead of reading it from the current context.
    pub fn with_trace_id(mut self, trace_id: impl Into<String>) -> Self {
        self.inner.trace_id = Some(trace_id.into());
        self
    }

    /// Adds a response header (e.g. `WWW-Authenticate`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.inner.headers.append(name, value);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.inner.status
    }

    /// The machine-readable code.
    pub fn code(&self) -> &str {
        &self.inner.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The structured details, if any.
    pub fn details(&self) -> Option<&serde_json::Value> {
        self.inner.details.as_ref()
    }

    /// The `Retry-After` hint, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.inner.retry_after
    }

    /// The extra headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.inner.headers
    }

    /// The serialisable body, with the trace id resolved now (explicit, else
    /// [`current_trace_id`]).
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            success: false,
            error: ErrorDetail {
                code: self.inner.code.to_string(),
                message: self.inner.message.to_string(),
                details: self.inner.details.clone(),
            },
            trace_id: self.inner.trace_id.clone().or_else(current_trace_id),
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
        *response.status_mut() = self.inner.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(retry_after) = self.inner.retry_after {
            headers.insert(header::RETRY_AFTER, retry_after_value(retry_after));
        }
        for (name, value) in &self.inner.headers {
            headers.append(name, value.clone());
        }
        response
    }
}

/// A `Debug` for `$ty`, a handle on shared state in `self.inner`: the struct named after the
/// type with the listed fields of `self.inner`, then (after `;`) the values the closures
/// compute from `self`, in that order. A list that ends in `..` marks the struct as having
/// more (`finish_non_exhaustive`).
macro_rules! debug_inner {
    ($ty:ident { $($field:ident),+ , .. }) => {
        $crate::error::debug_inner!(@impl $ty, finish_non_exhaustive, { $($field),+ });
    };
    ($ty:ident { $($field:ident),* $(; $($name:ident = |$this:ident| $value:expr),* $(,)?)? }) => {
        $crate::error::debug_inner!(@impl $ty, finish, {
            $($field),* $(; $($name = |$this| $value),*)?
        });
    };
    (@impl $ty:ident, $finish:ident, {
        $($field:ident),* $(; $($name:ident = |$this:ident| $value:expr),*)?
    }) => {
        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let mut d = f.debug_struct(stringify!($ty));
                $( d.field(stringify!($field), &self.inner.$field); )*
                $($(
                    let $this = self;
                    d.field(stringify!($name), &$value);
                )*)?
                d.$finish()
            }
        }
    };
}

pub(crate) use debug_inner;

/// `Retry-After` value for `d`: whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_value(d: Duration) -> HeaderValue {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(secs.max(1))
}

debug_inner!(ApiError {
    status,
    code,
    message,
    details,
    retry_after
});

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.inner.status.as_u16(),
            self.inner.code,
            self.inner.message
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

/// The chassis JSON error response, as an axum response: handlers return `Result<_, ApiError>`
/// (or [`ApiResult`](crate::response::ApiResult)) and need no wrapper type.
///
/// The inherent [`ApiError::into_response`] (an `http::Response` with the chassis
/// [`Body`]) stays what a method call resolves to; axum calls this one.
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        ApiError::into_response(self).map(axum::body::Body::new)
    }
}

/// Turns axum rejections into an [`ApiError`] with the rejection's status, the code
/// [`code_for_status`] gives it and axum's text as the message (as
/// [`from_status_text`](ApiError::from_status_text)), so a handler that takes
/// `Result<Json<T>, JsonRejection>` can answer with `?`.
#[cfg(feature = "axum")]
macro_rules! from_axum_rejections {
    ($($rejection:ident),+ $(,)?) => {$(
        #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
        impl From<axum::extract::rejection::$rejection> for ApiError {
            fn from(rejection: axum::extract::rejection::$rejection) -> Self {
                Self::from_status_text(rejection.status(), &rejection.body_text())
            }
        }
    )+};
}

#[cfg(feature = "axum")]
from_axum_rejections!(JsonRejection, PathRejection, QueryRejection, FormRejection);

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

chassis_core::__define_error! {
    /// The error of the chassis-http server runner (binding, configuration).
    ///
    /// Request-level failures are not errors of this kind: they are answered with [`ApiError`].
    pub struct Error(ErrorKind);
    display = kind_and_source;
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
    /// The admin listener ([`ServerConfig::admin`](crate::server::ServerConfig::admin): probes
    /// and metrics) could not be bound to `addr`.
    AdminBind {
        /// The admin address that was asked for.
        addr: std::net::SocketAddr,
    },
    /// An I/O operation on the listener failed.
    Io,
    /// A configuration value was rejected.
    InvalidConfig {
        /// What is wrong with it.
        reason: String,
    },
    /// A TLS certificate, key or CA bundle could not be read or used.
    Tls {
        /// What could not be loaded or built, and from where.
        reason: String,
    },
}

/// The message of an [`Error`] without its source.
impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bind { addr } => write!(f, "cannot bind {addr}"),
            Self::AdminBind { addr } => write!(
                f,
                "cannot bind the admin listener (probes, metrics) to {addr}"
            ),
            Self::Io => write!(f, "listener I/O error"),
            Self::InvalidConfig { reason } => write!(f, "invalid configuration: {reason}"),
            Self::Tls { reason } => write!(f, "TLS setup failed: {reason}"),
        }
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

    use crate::body::json_of as json;

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
    fn one_pointer_wide() {
        assert_eq!(
            std::mem::size_of::<ApiError>(),
            std::mem::size_of::<usize>()
        );
    }

    #[test]
    fn codes_derived_from_the_status() {
        for (status, code) in [
            (400, "bad_request"),
            (404, "not_found"),
            (405, "method_not_allowed"),
            (408, "request_timeout"),
            (413, "payload_too_large"),
            (415, "unsupported_media_type"),
            (418, "i_m_a_teapot"),
            (422, "unprocessable_entity"),
            (429, "rate_limited"),
            (499, "client_error"),
            (500, "internal_error"),
            (501, "not_implemented"),
            (503, "unavailable"),
            (599, "server_error"),
        ] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(code_for_status(status), code, "{status}");
        }
    }

    #[test]
    fn status_text_is_the_message_of_client_errors_only() {
        let err = ApiError::from_status_text(StatusCode::BAD_REQUEST, " missing field `name`\n");
        assert_eq!(err.code(), "bad_request");
        assert_eq!(err.message(), "missing field `name`");
        let err = ApiError::from_status_text(StatusCode::NOT_FOUND, "");
        assert_eq!(err.message(), "Not Found");
        let err = ApiError::from_status_text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Missing request extension: Extension of type `app::Db` was not found",
        );
        assert_eq!(err.code(), "internal_error");
        assert_eq!(err.message(), "Internal Server Error");
    }

    #[test]
    fn maps_core_errors() {
        let name = chassis_core::ComponentName::new("payments");
        let cases = [
            (
                chassis_core::Error::timeout(Duration::from_millis(5)),
                StatusCode::GATEWAY_TIMEOUT,
                None,
            ),
            (
                chassis_core::Error::circuit_open(name, Duration::from_millis(1500)),
                StatusCode::SERVICE_UNAVAILABLE,
                Some("2"),
            ),
            (
                chassis_core::Error::new(CoreErrorKind::BulkheadFull {
                    name,
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
