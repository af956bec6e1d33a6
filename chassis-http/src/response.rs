//! The success envelope of the chassis, `{"success":true,"data":…,"traceId":…}`, and the result
//! type handlers return: [`ApiResult<T>`], `Result<`[`ApiResponse<T>`]`, `[`ApiError`]`>`.
//!
//! A success answers with [`ApiResponse`] (200 by default; [`ApiResponse::created`] for 201,
//! [`with_status`](ApiResponse::with_status) for any other success status), an error with
//! [`ApiError`] and the chassis error body. Both bodies carry the trace id of the request:
//!
//! ```json
//! {"success":true,"data":{"id":42,"item":"book"},"traceId":"4bf92f3577b34da6a3ce929d0e0e4736"}
//! {"success":false,"error":{"code":"not_found","message":"no order 7","details":null},"traceId":"4bf92f3577b34da6a3ce929d0e0e4736"}
//! ```
//!
//! `traceId` is resolved when the response is built, as in the error body (see
//! [`current_trace_id`]); it is `null` outside a traced request.
//!
//! A failure the client cannot act on (the database is down, a row does not decode) becomes a
//! 500 with [`ResultExt::or_internal`]: the cause is logged once, at ERROR with the caller's file
//! and line, and the client sees `internal_error` / `"internal error"`, never the cause.
//!
//! With the `axum` feature, [`ApiResponse`] and [`ApiError`] are axum `IntoResponse`s, so an axum
//! handler returns `ApiResult<T>` as is. Without it, [`ApiResponse::into_response`] builds the
//! `http::Response` for any tower service. [`SuccessBody`] is the envelope's serde type, for
//! clients reading the answers.
//!
//! # Example
//! ```
//! use axum::Router;
//! use axum::extract::Path;
//! use axum::routing::{get, post};
//! use chassis_http::{ApiError, ApiResponse, ApiResult, ResultExt as _};
//! use serde::Serialize;
//!
//! #[derive(Serialize)]
//! struct Order {
//!     id: u64,
//! }
//!
//! async fn create_order() -> ApiResult<Order> {
//!     let id = "42".parse::<u64>().or_internal()?; // a failure here is a logged 500
//!     Ok(ApiResponse::created(Order { id }))
//! }
//!
//! async fn get_order(Path(id): Path<u64>) -> ApiResult<Order> {
//!     if id != 42 {
//!         return Err(ApiError::not_found(format!("no order {id}")));
//!     }
//!     Ok(ApiResponse::ok(Order { id }))
//! }
//!
//! # #[cfg(feature = "axum")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! # use http_body_util::BodyExt;
//! # use tower::ServiceExt;
//! let app: Router = Router::new()
//!     .route("/orders", post(create_order))
//!     .route("/orders/{id}", get(get_order));
//!
//! let req = http::Request::post("/orders").body(axum::body::Body::empty()).unwrap();
//! let res = app.clone().oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 201);
//! let body = res.into_body().collect().await.unwrap().to_bytes();
//! assert_eq!(&body[..], br#"{"success":true,"data":{"id":42},"traceId":null}"#);
//!
//! let req = http::Request::get("/orders/7").body(axum::body::Body::empty()).unwrap();
//! let res = app.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 404);
//! # }
//! # #[cfg(not(feature = "axum"))]
//! # fn main() {}
//! ```

use std::fmt;
use std::panic::Location;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::{Deserialize, Serialize};

use crate::body::{Body, full};
use crate::error::{ApiError, current_trace_id};

/// What a handler returns: the success envelope or the chassis error body.
pub type ApiResult<T> = Result<ApiResponse<T>, ApiError>;

/// A success answer: a status (200 unless set otherwise), `data` sent as
/// `{"success":true,"data":data,"traceId":…}`, and extra headers.
///
/// ```
/// use chassis_http::ApiResponse;
/// use http::{StatusCode, header};
///
/// let created = ApiResponse::created(serde_json::json!({"id": 7}))
///     .with_header(header::LOCATION, http::HeaderValue::from_static("/orders/7"));
/// assert_eq!(created.status(), StatusCode::CREATED);
/// let response = created.into_response();
/// assert_eq!(response.headers()["location"], "/orders/7");
/// assert_eq!(response.headers()["content-type"], "application/json");
/// ```
#[derive(Debug, Clone)]
pub struct ApiResponse<T> {
    status: StatusCode,
    data: T,
    headers: HeaderMap,
}

impl<T> ApiResponse<T> {
    /// 200 OK with `data`.
    pub fn ok(data: T) -> Self {
        Self {
            status: StatusCode::OK,
            data,
            headers: HeaderMap::new(),
        }
    }

    /// 201 Created with `data` (add a `Location` with [`with_header`](Self::with_header)).
    pub fn created(data: T) -> Self {
        Self::ok(data).with_status(StatusCode::CREATED)
    }

    /// 202 Accepted with `data`: the work was queued, not done.
    pub fn accepted(data: T) -> Self {
        Self::ok(data).with_status(StatusCode::ACCEPTED)
    }

    /// Sends `data` with `status` instead. Defaults to 200 OK.
    ///
    /// Meant for success statuses: errors are [`ApiError`]s, so that `success` and the status
    /// agree. A 204 No Content has no body, so it is no envelope; answer it with the bare
    /// status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// Adds a response header (e.g. `Location`).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The data sent under `data`.
    pub fn data(&self) -> &T {
        &self.data
    }

    /// The extra headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The data, without the envelope.
    pub fn into_data(self) -> T {
        self.data
    }
}

impl<T: Serialize> ApiResponse<T> {
    /// The JSON body, with the trace id resolved now (see [`current_trace_id`]).
    ///
    /// Fails when `T`'s `Serialize` implementation fails (a map with non-string keys, a custom
    /// implementation's error).
    pub fn to_json(&self) -> Result<Bytes, serde_json::Error> {
        let body = SuccessBody {
            success: true,
            data: &self.data,
            trace_id: current_trace_id(),
        };
        serde_json::to_vec(&body).map(Bytes::from)
    }

    /// The HTTP response: the status, `content-type: application/json`, the extra headers and the
    /// JSON body. If `data` does not serialise, the answer is the chassis 500 instead, and the
    /// serialisation error is logged at ERROR.
    pub fn into_response(self) -> http::Response<Body> {
        let json = match self.to_json() {
            Ok(json) => json,
            Err(err) => {
                tracing::error!(error = %err, "response data does not serialise to JSON");
                return ApiError::internal("internal error").into_response();
            }
        };
        let mut response = http::Response::new(full(json));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.extend(self.headers);
        response
    }
}

/// `Ok(data.into())` in a handler is a 200 with `data`.
impl<T> From<T> for ApiResponse<T> {
    fn from(data: T) -> Self {
        Self::ok(data)
    }
}

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
impl<T: Serialize> axum::response::IntoResponse for ApiResponse<T> {
    fn into_response(self) -> axum::response::Response {
        ApiResponse::into_response(self).map(axum::body::Body::new)
    }
}

/// The success envelope `{"success":true,"data":…,"traceId":…}`: what [`ApiResponse`]
/// serialises, and what clients deserialise a success answer into (an error answer is an
/// [`ErrorBody`](crate::error::ErrorBody)).
///
/// ```
/// use chassis_http::response::SuccessBody;
///
/// let body: SuccessBody<u32> =
///     serde_json::from_str(r#"{"success":true,"data":7,"traceId":null}"#).unwrap();
/// assert_eq!(body.data, 7);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuccessBody<T> {
    /// Always `true`.
    pub success: bool,
    /// The answer.
    pub data: T,
    /// The W3C trace id (32 lowercase hex digits), when known.
    #[serde(rename = "traceId")]
    pub trace_id: Option<String>,
}

/// Turns any error into the chassis 500 on the way out of a handler, logging the cause once.
///
/// For failures the client cannot act on. The cause is logged at ERROR with the caller's file
/// and line (`code.file.path`, `code.line.number`), inside the request's span, so the log line
/// carries the trace id the client got in `traceId`; the client sees `internal_error` /
/// `"internal error"` and nothing of the cause. Errors the client can act on (not found,
/// invalid input) are [`ApiError`]s built where the handler knows what happened.
///
/// ```
/// use chassis_http::{ApiError, ResultExt as _};
///
/// fn load(raw: &str) -> Result<u64, ApiError> {
///     let n = raw.parse::<u64>().or_internal_context("stored counter is corrupt")?;
///     Ok(n + 1)
/// }
///
/// let err = load("x").unwrap_err();
/// assert_eq!(err.status(), 500);
/// assert_eq!(err.message(), "internal error");
/// assert!(!err.to_string().contains("invalid digit"));
/// ```
pub trait ResultExt<T> {
    /// `Err(e)` becomes the chassis 500; `e` is logged at ERROR with message
    /// `"internal error"`.
    fn or_internal(self) -> Result<T, ApiError>;

    /// As [`or_internal`](Self::or_internal), with `context` as the log message (what was being
    /// done: `"saving the order"`).
    fn or_internal_context<C: fmt::Display>(self, context: C) -> Result<T, ApiError>;
}

impl<T, E: fmt::Display> ResultExt<T> for Result<T, E> {
    #[track_caller]
    fn or_internal(self) -> Result<T, ApiError> {
        self.or_internal_context("internal error")
    }

    #[track_caller]
    fn or_internal_context<C: fmt::Display>(self, context: C) -> Result<T, ApiError> {
        match self {
            Ok(value) => Ok(value),
            Err(err) => Err(internal(&err, &context, Location::caller())),
        }
    }
}

// Out of line, so the `Ok` path of the generic methods stays a match and a move.
#[cold]
fn internal(err: &dyn fmt::Display, context: &dyn fmt::Display, at: &Location<'_>) -> ApiError {
    tracing::error!(
        error = %err,
        code.file.path = at.file(),
        code.line.number = at.line(),
        "{context}"
    );
    ApiError::internal("internal error")
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    use crate::body::json_of as json;

    #[tokio::test]
    async fn envelope_status_headers_and_trace_id() {
        let response = ApiResponse::ok(serde_json::json!({"id": 1})).into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(
            json(response).await,
            serde_json::json!({"success": true, "data": {"id": 1}, "traceId": null})
        );

        let id =
            opentelemetry::trace::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let response = crate::error::REQUEST_TRACE_ID
            .scope(Some(id), async {
                ApiResponse::created("made")
                    .with_header(header::LOCATION, HeaderValue::from_static("/x/1"))
                    .into_response()
            })
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["location"], "/x/1");
        let body: SuccessBody<String> = serde_json::from_value(json(response).await).unwrap();
        assert_eq!(
            body,
            SuccessBody {
                success: true,
                data: "made".to_owned(),
                trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()),
            }
        );
        assert_eq!(
            ApiResponse::accepted(()).status(),
            StatusCode::ACCEPTED,
            "202"
        );
        assert_eq!(ApiResponse::from(3).into_data(), 3);
    }

    #[tokio::test]
    async fn data_that_does_not_serialise_is_the_chassis_500() {
        // JSON object keys must be strings.
        let data = std::collections::HashMap::from([((1, 2), "pair key")]);
        let response = ApiResponse::ok(data).into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = json(response).await;
        assert_eq!(body["success"], false);
        assert_eq!(body["error"]["code"], "internal_error");
    }

    /// Collects the formatted events of a scoped subscriber.
    #[derive(Clone, Default)]
    struct Events(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Events {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn or_internal_hides_the_cause_and_logs_it_once_with_the_caller() {
        let events = Events::default();
        let writer = events.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let line = line!() + 3;
        let (plain, with_context, ok) = tracing::subscriber::with_default(subscriber, || {
            (
                Err::<(), _>("db password hunter2 rejected").or_internal(),
                Err::<(), _>(std::io::Error::other("disk full"))
                    .or_internal_context(format_args!("saving order {}", 7)),
                Ok::<_, std::io::Error>(5).or_internal(),
            )
        });
        assert_eq!(ok.unwrap(), 5);
        for err in [plain.unwrap_err(), with_context.unwrap_err()] {
            assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(err.code(), "internal_error");
            assert_eq!(err.message(), "internal error");
        }
        let text = String::from_utf8(events.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["level"], "ERROR");
        assert_eq!(lines[0]["fields"]["message"], "internal error");
        assert_eq!(lines[0]["fields"]["error"], "db password hunter2 rejected");
        assert_eq!(lines[0]["fields"]["code.file.path"], file!());
        assert_eq!(lines[0]["fields"]["code.line.number"], line);
        assert_eq!(lines[1]["fields"]["message"], "saving order 7");
        assert_eq!(lines[1]["fields"]["error"], "disk full");
    }
}
