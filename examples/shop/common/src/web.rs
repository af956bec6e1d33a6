//! HTTP helpers for the services' axum handlers: the success envelope
//! `{"success":true,"data":…}` and [`ApiErr`], the chassis [`ApiError`] as an axum response
//! (the one JSON error body, with the trace id).
//!
//! # Example
//! ```
//! use axum::http::StatusCode;
//! use shop_common::web::{ApiErr, ok};
//!
//! async fn handler(found: bool) -> Result<axum::response::Response, ApiErr> {
//!     if !found {
//!         return Err(ApiErr::not_found("no such order"));
//!     }
//!     Ok(ok(StatusCode::OK, serde_json::json!({"id": 1})))
//! }
//! ```

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chassis_http::error::ApiError;
use serde::Serialize;

/// `{"success":true,"data":data}` with `status`.
pub fn ok(status: StatusCode, data: impl Serialize) -> Response {
    (
        status,
        axum::Json(serde_json::json!({"success": true, "data": data})),
    )
        .into_response()
}

/// A chassis [`ApiError`] usable as an axum error.
#[derive(Debug)]
pub struct ApiErr(pub Box<ApiError>);

impl ApiErr {
    /// 400 `bad_request`.
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiErr::from(ApiError::bad_request(msg.into()))
    }
    /// 404 `not_found`.
    pub fn not_found(msg: impl Into<String>) -> Self {
        ApiErr::from(ApiError::not_found(msg.into()))
    }
    /// 500 `internal_error` (the detail is logged, not sent).
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        ApiErr::from(ApiError::internal("internal error"))
    }
}

impl From<ApiError> for ApiErr {
    fn from(e: ApiError) -> Self {
        ApiErr(Box::new(e))
    }
}

impl From<sqlx::Error> for ApiErr {
    fn from(e: sqlx::Error) -> Self {
        ApiErr::internal(e)
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        (*self.0).into_response().map(axum::body::Body::new)
    }
}
