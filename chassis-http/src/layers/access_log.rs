//! One structured access-log line per request.
//!
//! When a request's response head is ready, [`AccessLogService`] emits an INFO event with
//! target [`ACCESS_LOG_TARGET`] (`chassis_http::access`) and the fields `method`, `path`,
//! `status`, `duration_ms`, `request_id` (when the request id layer ran) and `trace_id` (when
//! known, see [`current_trace_id`]). Inside the chassis stack the event is emitted within the
//! server span, so a JSON formatter also attaches the span's fields. A request whose future is
//! dropped before it completes (the client went away) is logged with `status = 499`.
//!
//! Nothing is captured when the target is disabled, so turning access logs off
//! (`RUST_LOG=chassis_http::access=off`) removes their cost.
//!
//! # Example
//! ```
//! use chassis_http::layers::access_log::AccessLogLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new().layer(AccessLogLayer::new()).service(service_fn(
//!     |_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(())) },
//! ));
//! // logs: INFO chassis_http::access: request completed method=GET path=/ status=200 ...
//! svc.oneshot(http::Request::new(())).await.unwrap();
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{Method, Request, Response, Uri};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::request_id::RequestId;
use crate::error::current_trace_id;

/// Target of the access-log events.
pub const ACCESS_LOG_TARGET: &str = "chassis_http::access";

/// Layer adding [`AccessLogService`].
#[derive(Debug, Clone, Default)]
pub struct AccessLogLayer {
    _priv: (),
}

impl AccessLogLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for AccessLogLayer {
    type Service = AccessLogService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AccessLogService { inner }
    }
}

/// Logs one line per request; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct AccessLogService<S> {
    inner: S,
}

impl<S> AccessLogService<S> {
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for AccessLogService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // Boxed: only allocated when the line will be written, and it keeps the response
        // future (moved through every outer layer) one pointer wide when it will not.
        let entry = tracing::enabled!(target: ACCESS_LOG_TARGET, tracing::Level::INFO).then(|| {
            Box::new(Entry {
                start: Instant::now(),
                method: req.method().clone(),
                uri: req.uri().clone(),
                request_id: req.extensions().get::<RequestId>().cloned(),
            })
        });
        ResponseFuture {
            inner: self.inner.call(req),
            entry,
        }
    }
}

struct Entry {
    start: Instant,
    method: Method,
    uri: Uri,
    request_id: Option<RequestId>,
}

impl Entry {
    fn emit(self, status: u16) {
        let duration_ms = self.start.elapsed().as_secs_f64() * 1000.0;
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            method = self.method.as_str(),
            path = self.uri.path(),
            status,
            duration_ms,
            request_id = self.request_id.as_ref().map(RequestId::as_str),
            trace_id = current_trace_id(),
            "request completed"
        );
    }
}

pin_project! {
    /// Response future of [`AccessLogService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        entry: Option<Box<Entry>>,
    }

    impl<F> PinnedDrop for ResponseFuture<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(entry) = this.project().entry.take() {
                entry.emit(499);
            }
        }
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
{
    type Output = Result<Response<ResB>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(entry) = this.entry.take() {
            entry.emit(match &result {
                Ok(res) => res.status().as_u16(),
                Err(_) => 500,
            });
        }
        Poll::Ready(result)
    }
}
