//! Turns the inner service's errors into chassis error responses.
//!
//! A tower service may fail with an error instead of answering (a chassis-core resilience
//! layer rejecting a call, a handler returning `Err`). Hyper would close the connection; this
//! layer answers instead, with [`ApiError::from_box_error`]: a [`chassis_core::Error`] anywhere
//! in the chain maps to 504/503/429/502 (with `Retry-After` where it applies), an [`ApiError`]
//! is sent as is, anything else is a 500 whose message does not leak the cause (the cause is
//! logged at ERROR). Its error type is [`Infallible`].
//!
//! It is the innermost chassis layer of the [standard stack](super::StandardLayers), so the
//! outer layers trace, count and log the status it produced.
//!
//! # Example
//! ```
//! use chassis_http::layers::error_response::ErrorResponseLayer;
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new().layer(ErrorResponseLayer::new()).service(service_fn(
//!     |_req: http::Request<()>| async {
//!         Err::<http::Response<String>, _>(chassis_core::Error::circuit_open(
//!             "payments".into(),
//!             Duration::from_secs(5),
//!         ))
//!     },
//! ));
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 503);
//! assert_eq!(res.headers()["retry-after"], "5");
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{Body, BoxError, boxed};
use crate::error::ApiError;

/// Layer adding [`ErrorResponseService`].
#[derive(Debug, Clone, Default)]
pub struct ErrorResponseLayer {
    _priv: (),
}

impl ErrorResponseLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponseService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponseService {
            inner,
            not_ready: None,
        }
    }
}

/// Answers errors with the chassis error body; see the [module docs](self).
pub struct ErrorResponseService<S> {
    inner: S,
    // The error `poll_ready` returned: `call` answers with it instead of calling `inner`.
    not_ready: Option<BoxError>,
}

impl<S: Clone> Clone for ErrorResponseService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            not_ready: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for ErrorResponseService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ErrorResponseService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> ErrorResponseService<S> {
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

pub(crate) fn error_response(err: BoxError) -> Response<Body> {
    let api = ApiError::from_box_error(&err);
    if api.status().is_server_error() {
        tracing::error!(target: "chassis_http::server", error = %err, status = api.status().as_u16(), "service failed");
    }
    api.into_response()
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ErrorResponseService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match ready!(self.inner.poll_ready(cx)) {
            Ok(()) => Poll::Ready(Ok(())),
            Err(err) => {
                // The service cannot take the request; `call` answers for it.
                self.not_ready = Some(err.into());
                Poll::Ready(Ok(()))
            }
        }
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // NOTE: relies on `poll_ready` having stored its error, if it failed.
        match self.not_ready.take() {
            None => ResponseFuture {
                state: State::Running {
                    inner: self.inner.call(req),
                },
            },
            Some(err) => ResponseFuture {
                state: State::NotReady { err: Some(err) },
            },
        }
    }
}

pin_project! {
    /// Response future of [`ErrorResponseService`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] inner: F },
        NotReady { err: Option<BoxError> },
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
    E: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Ok(match self.project().state.project() {
            StateProj::Running { inner } => match ready!(inner.poll(cx)) {
                Ok(res) => res.map(boxed),
                Err(err) => error_response(err.into()),
            },
            StateProj::NotReady { err } => {
                error_response(err.take().expect("polled after completion"))
            }
        }))
    }
}
