//! [`StatusMappingLayer`]: the chassis HTTP error answers as gRPC statuses.
//!
//! Every chassis layer that refuses or fails a request (the guard's panic, shed and body
//! limit, the service-token layers' 401/403, a rate limiter's 429) answers with an HTTP status
//! and the JSON error body. A gRPC client sees neither: it reads `grpc-status` from the
//! response's head or trailers. This layer, placed outside those layers, turns every such
//! answer (status 400 or above) into a trailers-only gRPC answer: the code from
//! [`code_for_error`], the JSON body's message as `grpc-message`, and the trace id (the body's
//! `traceId`, or the current request's) under [`TRACE_ID_KEY`](super::code::TRACE_ID_KEY).
//! The answer's other headers (`x-request-id`, `retry-after`) stay.
//!
//! Successful responses, which a gRPC service always sends with HTTP 200, pass through after
//! one comparison; only error answers, already small and complete, are read.
//!
//! # Example
//! ```
//! use chassis_http::grpc::StatusMappingLayer;
//! use chassis_http::{ApiError, grpc::code::grpc_code};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = StatusMappingLayer::new().layer(service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(ApiError::forbidden("no scope").into_response())
//! }));
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(grpc_code(res.headers()), Some(tonic::Code::PermissionDenied));
//! let status = tonic::Status::from_header_map(res.headers()).unwrap();
//! assert_eq!(status.message(), "no scope");
//! # }
//! ```

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt as _;

use super::code::{code_for_error, status_response};
use crate::body::{Body, BoxError, boxed};
use crate::error::current_trace_id;
use crate::future::{AnswerFuture, Answering, Divert};

/// Error bodies longer than this are not read for their message (the chassis's are far
/// shorter); the status alone then decides the code.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Turns chassis HTTP error answers into gRPC statuses; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct StatusMappingLayer {
    _priv: (),
}

impl StatusMappingLayer {
    /// The layer; it has nothing to configure.
    pub fn new() -> Self {
        Self::default()
    }
}

chassis_core::__impl_layer!(StatusMappingLayer => StatusMapping {  });

/// The service of [`StatusMappingLayer`].
#[derive(Debug, Clone)]
pub struct StatusMapping<S> {
    inner: S,
}

crate::middleware::impl_middleware! {
    boxed, StatusMapping => ResponseFuture;

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        Answering::inner(self.inner.call(req), hook::ErrorsToStatus)
    }
}

/// The response future of [`StatusMapping`].
pub type ResponseFuture<F> = Answering<F, hook::ErrorsToStatus>;

mod hook {
    /// Passes successful responses on; answers an error answer with its gRPC status.
    #[derive(Debug)]
    pub struct ErrorsToStatus;
}

impl<ResB> Divert<ResB> for hook::ErrorsToStatus
where
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    #[inline]
    fn divert(&mut self, response: Response<ResB>) -> Result<Response<Body>, AnswerFuture> {
        if response.status().as_u16() < 400 {
            return Ok(response.map(boxed));
        }
        // Error answers only: the (complete, small) JSON body is read for message and trace
        // id. The request's trace id is read here, inside its span; the body's `traceId` is
        // preferred when it has one.
        let trace_id = current_trace_id();
        Err(Box::pin(to_status(response, trace_id)))
    }
}

/// The trailers-only answer for an HTTP error answer.
async fn to_status<B>(response: Response<B>, trace_id: Option<String>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (parts, body) = response.into_parts();
    let json = match http_body_util::Limited::new(body, MAX_ERROR_BODY)
        .collect()
        .await
    {
        Ok(collected) => {
            serde_json::from_slice::<serde_json::Value>(&collected.to_bytes()).unwrap_or_default()
        }
        Err(_) => serde_json::Value::Null,
    };
    let code = json["error"]["code"].as_str();
    let message = json["error"]["message"]
        .as_str()
        .or_else(|| parts.status.canonical_reason())
        .unwrap_or("error");
    let trace_id = json["traceId"].as_str().map(str::to_owned).or(trace_id);
    let mut answer = status_response(
        code_for_error(parts.status, code),
        message,
        trace_id.as_deref(),
    );
    for (name, value) in &parts.headers {
        if name != CONTENT_TYPE && name != CONTENT_LENGTH && !answer.headers().contains_key(name) {
            answer.headers_mut().append(name, value.clone());
        }
    }
    debug_assert_eq!(answer.status(), StatusCode::OK);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ApiError;
    use crate::grpc::code::{TRACE_ID_KEY, grpc_code};
    use std::convert::Infallible;
    use std::time::Duration;
    use tonic::Code;
    use tower::{Layer, ServiceExt, service_fn};

    async fn mapped(answer: Response<Body>) -> Response<Body> {
        let answer = std::sync::Mutex::new(Some(answer));
        let svc = StatusMappingLayer::new().layer(service_fn(move |_req: Request<()>| {
            let answer = answer.lock().unwrap().take().unwrap();
            async move { Ok::<_, Infallible>(answer) }
        }));
        svc.oneshot(Request::new(())).await.unwrap()
    }

    #[tokio::test]
    async fn error_answers_become_statuses_with_message_trace_id_and_headers() {
        let answer = ApiError::unavailable("full", Duration::from_secs(3))
            .with_trace_id("0af7651916cd43dd8448eb211c80319c")
            .into_response();
        let res = mapped(answer).await;
        assert_eq!(res.status(), 200);
        assert_eq!(grpc_code(res.headers()), Some(Code::Unavailable));
        assert_eq!(res.headers()["grpc-message"], "full");
        assert_eq!(res.headers()["retry-after"], "3");
        assert_eq!(
            res.headers()[TRACE_ID_KEY],
            "0af7651916cd43dd8448eb211c80319c"
        );
    }

    #[tokio::test]
    async fn bodies_that_are_not_chassis_json_map_by_status() {
        let answer = Response::builder()
            .status(404)
            .body(crate::body::full("nothing"))
            .unwrap();
        let res = mapped(answer).await;
        assert_eq!(grpc_code(res.headers()), Some(Code::NotFound));
        let status = tonic::Status::from_header_map(res.headers()).unwrap();
        assert_eq!(status.message(), "Not Found");
        let ok = mapped(Response::new(crate::body::full("payload"))).await;
        assert_eq!(grpc_code(ok.headers()), None);
        let bytes = ok.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"payload");
    }
}
