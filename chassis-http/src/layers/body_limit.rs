//! Request body size limit: bodies over the limit are answered with `413 payload_too_large` and
//! the chassis error body.
//!
//! A request whose `Content-Length` exceeds the limit is rejected before the handler runs. A
//! body without a length (chunked, or HTTP/2 without `content-length`) is wrapped in a
//! [`LimitedBody`] that fails with [`LengthLimitError`] once the limit is crossed; whatever the
//! handler then answers (axum's extractors answer a plain-text 413) is replaced by the JSON 413.
//! Bodies with a declared length within the limit, and bodies whose size hint has an upper
//! bound within the limit (no body at all), pass through unchanged (hyper enforces both).
//!
//! # Example
//! ```
//! use chassis_http::layers::body_limit::RequestBodyLimitLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new()
//!     .layer(RequestBodyLimitLayer::new(4))
//!     .service(service_fn(|_req: http::Request<_>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     }));
//! let req = http::Request::builder()
//!     .header("content-length", "5")
//!     .body(http_body_util::Full::new(bytes::Bytes::from_static(b"12345")))
//!     .unwrap();
//! assert_eq!(svc.oneshot(req).await.unwrap().status(), 413);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use http::{Request, Response, header};
use http_body::{Frame, SizeHint};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{Body, BoxError, boxed};
use crate::error::ApiError;

/// Layer adding [`RequestBodyLimitService`].
#[derive(Debug, Clone, Copy)]
pub struct RequestBodyLimitLayer {
    limit: usize,
}

impl RequestBodyLimitLayer {
    /// Request bodies may be at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> Layer<S> for RequestBodyLimitLayer {
    type Service = RequestBodyLimitService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestBodyLimitService {
            inner,
            limit: self.limit,
        }
    }
}

/// Enforces the body limit; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct RequestBodyLimitService<S> {
    inner: S,
    limit: usize,
}

impl<S> RequestBodyLimitService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

pub(crate) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RequestBodyLimitService<S>
where
    S: Service<Request<LimitedBody<ReqB>>, Response = Response<ResB>>,
    ReqB: http_body::Body,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (parts, body) = req.into_parts();
        let (body, tripped) = match content_length(&parts.headers) {
            Some(len) if len > self.limit as u64 => {
                return ResponseFuture {
                    state: State::Rejected { limit: self.limit },
                };
            }
            Some(_) => (LimitedBody::unlimited(body), None),
            // A body that says it fits (no body at all, most GETs) needs no watching.
            None if body
                .size_hint()
                .upper()
                .is_some_and(|n| n <= self.limit as u64) =>
            {
                (LimitedBody::unlimited(body), None)
            }
            None => {
                let tripped = Arc::new(AtomicBool::new(false));
                (
                    LimitedBody::limited(body, self.limit, tripped.clone()),
                    Some(tripped),
                )
            }
        };
        ResponseFuture {
            state: State::Running {
                future: self.inner.call(Request::from_parts(parts, body)),
                tripped,
                limit: self.limit,
            },
        }
    }
}

pin_project! {
    /// Response future of [`RequestBodyLimitService`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] future: F, tripped: Option<Arc<AtomicBool>>, limit: usize },
        Rejected { limit: usize },
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Running {
                future,
                tripped,
                limit,
            } => {
                let result = ready!(future.poll(cx));
                if tripped.as_ref().is_some_and(|t| t.load(Ordering::Acquire)) {
                    return Poll::Ready(Ok(ApiError::payload_too_large(*limit).into_response()));
                }
                Poll::Ready(result.map(|res| res.map(boxed)))
            }
            StateProj::Rejected { limit } => {
                Poll::Ready(Ok(ApiError::payload_too_large(*limit).into_response()))
            }
        }
    }
}

/// The error a [`LimitedBody`] fails with once the limit is crossed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthLimitError {
    limit: usize,
}

impl LengthLimitError {
    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl fmt::Display for LengthLimitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "request body exceeds the limit of {} bytes", self.limit)
    }
}

impl std::error::Error for LengthLimitError {}

pin_project! {
    /// The request body handed to the inner service: the original body, limited when its length
    /// was not declared.
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        limit: Option<Limit>,
    }
}

struct Limit {
    remaining: usize,
    limit: usize,
    tripped: Arc<AtomicBool>,
}

impl<B> LimitedBody<B> {
    pub(crate) fn unlimited(inner: B) -> Self {
        Self { inner, limit: None }
    }

    pub(crate) fn limited(inner: B, limit: usize, tripped: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            limit: Some(Limit {
                remaining: limit,
                limit,
                tripped,
            }),
        }
    }
}

impl<B> fmt::Debug for LimitedBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LimitedBody")
            .field("remaining", &self.limit.as_ref().map(|l| l.remaining))
            .finish_non_exhaustive()
    }
}

impl<B> http_body::Body for LimitedBody<B>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = match ready!(this.inner.poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        if let (Some(limit), Some(data)) = (this.limit.as_mut(), frame.data_ref()) {
            let len = data.remaining();
            if len > limit.remaining {
                limit.remaining = 0;
                limit.tripped.store(true, Ordering::Release);
                return Poll::Ready(Some(Err(Box::new(LengthLimitError { limit: limit.limit }))));
            }
            limit.remaining -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // The limit does not change what the body announces; crossing it is an error.
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};
    use std::convert::Infallible;
    use tower::ServiceExt;

    type Chunks = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;

    async fn read_all(req: Request<LimitedBody<Chunks>>) -> Result<Response<String>, Infallible> {
        match req.into_body().collect().await {
            Ok(b) => Ok(Response::new(format!("{}", b.to_bytes().len()))),
            // What a framework does when reading fails: a plain 400/413 of its own.
            Err(_) => Ok(Response::builder().status(400).body("bad".into()).unwrap()),
        }
    }

    fn chunked(chunks: &[&'static [u8]]) -> Request<Chunks> {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c))))
            .collect();
        Request::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    #[tokio::test]
    async fn streamed_body_over_limit_becomes_json_413() {
        let svc = RequestBodyLimitLayer::new(5).layer(tower::service_fn(read_all));
        let res = svc
            .clone()
            .oneshot(chunked(&[b"123", b"456"]))
            .await
            .unwrap();
        assert_eq!(res.status(), 413);
        assert_eq!(res.headers()["content-type"], "application/json");
        let res = svc.oneshot(chunked(&[b"12", b"345"])).await.unwrap();
        assert_eq!(res.status(), 200);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"5");
    }
}
