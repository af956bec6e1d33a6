//! A panic in a handler becomes a 500 JSON error and the server keeps serving.
//!
//! [`CatchPanicService`] catches a panic raised while calling the inner service or polling its
//! future, logs it at ERROR (target `chassis_http::panic`, with the panic message) and answers
//! `500 internal_error` with the chassis error body; the message of the panic is never sent to
//! the client. The connection and every other request are unaffected.
//!
//! In the [standard stack](super::StandardLayers) it sits inside the trace, metrics and
//! access-log layers, so a panicked request is traced, counted and logged as the 500 it became.
//!
//! # Example
//! ```
//! use chassis_http::layers::catch_panic::CatchPanicLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new().layer(CatchPanicLayer::new()).service(service_fn(
//!     |_req: http::Request<()>| async {
//!         if true { panic!("bug") }
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//!     },
//! ));
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 500);
//! # }
//! ```

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{Body, BoxError, boxed};
use crate::error::ApiError;

/// Layer adding [`CatchPanicService`].
#[derive(Debug, Clone, Default)]
pub struct CatchPanicLayer {
    _priv: (),
}

impl CatchPanicLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanicService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CatchPanicService { inner }
    }
}

/// Turns panics into 500 responses; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct CatchPanicService<S> {
    inner: S,
}

impl<S> CatchPanicService<S> {
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for CatchPanicService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
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
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(future) => ResponseFuture {
                state: State::Running { future },
            },
            Err(panic) => ResponseFuture {
                state: State::Panicked { panic: Some(panic) },
            },
        }
    }
}

pin_project! {
    /// Response future of [`CatchPanicService`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] future: F },
        Panicked { panic: Option<Box<dyn Any + Send + 'static>> },
        Done,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pub(crate) fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)");
    tracing::error!(target: "chassis_http::panic", panic = message, "request handler panicked");
    ApiError::internal("internal error").into_response()
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
        let mut state = self.project().state;
        match state.as_mut().project() {
            StateProj::Running { future } => {
                match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(Poll::Pending) => Poll::Pending,
                    Ok(Poll::Ready(result)) => {
                        state.set(State::Done);
                        Poll::Ready(result.map(|res| res.map(boxed)))
                    }
                    Err(panic) => {
                        // The panicked future must not be polled again: drop it now.
                        state.set(State::Done);
                        Poll::Ready(Ok(panic_response(panic)))
                    }
                }
            }
            StateProj::Panicked { panic } => {
                let panic = panic.take().expect("polled after completion");
                state.set(State::Done);
                Poll::Ready(Ok(panic_response(panic)))
            }
            StateProj::Done => panic!("CatchPanic ResponseFuture polled after completion"),
        }
    }
}
