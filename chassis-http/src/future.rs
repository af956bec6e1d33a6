//! The response futures shared by several layers: [`ResponseFuture`], for the layers that
//! either pass a request on, answer it themselves, or run a boxed sequence of their own around
//! the inner call (the bearer-token layers, the idempotency and response-cache layers); and
//! [`Finishing`], for the layers that do their part once the inner service's future completes
//! (request id, access log, RED metrics, gRPC metrics); and [`Answering`], for the layers that
//! answer some requests themselves with a future of their own, before or after the inner call
//! (the health probes, the gRPC status mapping).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::Response;
use pin_project_lite::pin_project;

use crate::body::{Body, BoxError, boxed};

pin_project! {
    /// Response future of [`RequireServiceToken`](crate::auth::RequireServiceToken),
    /// [`RequireUserToken`](crate::auth::user::RequireUserToken),
    /// [`RequirePermission`](crate::auth::user::RequirePermission),
    /// [`Idempotency`](crate::idempotency::Idempotency) and
    /// [`ResponseCache`](crate::response_cache::ResponseCache): the inner service's future for
    /// a request the layer passes through, an answer the layer gave at once (a rejection, a
    /// malformed idempotency key), or a boxed future for the requests that must wait on
    /// something first (a JWKS refetch, the store's calls around the inner call). Only those
    /// pay for the box, and they wait on I/O anyway.
    pub struct ResponseFuture<F, E> {
        #[pin]
        state: State<F, E>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, E> {
        Inner { #[pin] future: F },
        Boxed { future: BoxFuture<'static, Result<Response<Body>, E>> },
        Answered { response: Option<Response<Body>> },
    }
}

impl<F, E> ResponseFuture<F, E> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            state: State::Inner { future },
        }
    }

    pub(crate) fn boxed(future: BoxFuture<'static, Result<Response<Body>, E>>) -> Self {
        Self {
            state: State::Boxed { future },
        }
    }

    pub(crate) fn answered(response: Response<Body>) -> Self {
        Self {
            state: State::Answered {
                response: Some(response),
            },
        }
    }
}

impl<F, E> fmt::Debug for ResponseFuture<F, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, E, B> Future for ResponseFuture<F, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Inner { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(boxed)))
            }
            StateProj::Boxed { future } => future.as_mut().poll(cx),
            StateProj::Answered { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
        }
    }
}

/// A layer's part in a request once the inner service's future has completed: it sees (and may
/// change) the result. What must happen once is kept in an `Option` the hook takes; what must
/// happen when the future is dropped before completing (the client went away), in the hook's
/// `Drop`.
pub trait Finish<T> {
    /// What the layer's future completes with.
    type Output;

    /// The layer's future's output for the inner future's `result`.
    fn finish(&mut self, result: T) -> Self::Output;
}

pin_project! {
    /// The inner service's future, whose result goes through the layer's hook `H`: the
    /// response future of the layers that add to a request on its way out (a header, a log
    /// line, a metric) without holding it up.
    pub struct Finishing<F, H> {
        #[pin]
        inner: F,
        hook: H,
    }
}

impl<F, H> Finishing<F, H> {
    pub(crate) fn new(inner: F, hook: H) -> Self {
        Self { inner, hook }
    }
}

impl<F, H> fmt::Debug for Finishing<F, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, H> Future for Finishing<F, H>
where
    F: Future,
    H: Finish<F::Output>,
{
    type Output = H::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        Poll::Ready(this.hook.finish(result))
    }
}

/// A layer that only reads how a request ended (a log line, a metric): the status of the
/// response, 500 for an error of the inner service.
pub trait OnStatus: Sized {
    /// The request ended with `status`.
    fn on_status(self, status: u16);

    /// The request's future was dropped before it completed (the client went away).
    fn on_drop(self) {}
}

/// The [`Finish`] hook of an [`OnStatus`] layer: the result passes through unchanged. `None`
/// when the layer has nothing to do for this request.
pub struct Observe<H: OnStatus>(Option<H>);

impl<H: OnStatus> fmt::Debug for Observe<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Observe").finish_non_exhaustive()
    }
}

impl<H: OnStatus> Observe<H> {
    pub(crate) fn new(hook: Option<H>) -> Self {
        Self(hook)
    }
}

impl<H: OnStatus, B, E> Finish<Result<Response<B>, E>> for Observe<H> {
    type Output = Result<Response<B>, E>;

    #[inline]
    fn finish(&mut self, result: Result<Response<B>, E>) -> Self::Output {
        if let Some(hook) = self.0.take() {
            hook.on_status(match &result {
                Ok(response) => response.status().as_u16(),
                Err(_) => 500,
            });
        }
        result
    }
}

impl<H: OnStatus> Drop for Observe<H> {
    fn drop(&mut self) {
        if let Some(hook) = self.0.take() {
            hook.on_drop();
        }
    }
}

/// The future of a layer's own answer: boxed, since only the requests a layer answers itself
/// pay for it.
pub(crate) type AnswerFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send + 'static>>;

/// What a layer does with the inner service's response: pass it on (its body boxed), or
/// answer in its place with a future of its own (which may read the response).
pub trait Divert<B> {
    /// The response to pass on, or the future answering in its place.
    fn divert(&mut self, response: Response<B>) -> Result<Response<Body>, AnswerFuture>;
}

/// The [`Divert`] of a layer that passes every response of the inner service on.
#[derive(Debug)]
pub struct PassOn;

impl<B> Divert<B> for PassOn
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    #[inline]
    fn divert(&mut self, response: Response<B>) -> Result<Response<Body>, AnswerFuture> {
        Ok(response.map(boxed))
    }
}

pin_project! {
    /// The inner service's future, its response passed on or diverted by `H`, or the layer's
    /// own answer.
    pub struct Answering<F, H> {
        #[pin]
        state: AnsweringState<F, H>,
    }
}

pin_project! {
    #[project = AnsweringProj]
    enum AnsweringState<F, H> {
        Inner { #[pin] future: F, divert: H },
        Answer { future: AnswerFuture },
    }
}

impl<F, H> Answering<F, H> {
    pub(crate) fn inner(future: F, divert: H) -> Self {
        Self {
            state: AnsweringState::Inner { future, divert },
        }
    }

    pub(crate) fn answer(future: AnswerFuture) -> Self {
        Self {
            state: AnsweringState::Answer { future },
        }
    }
}

impl<F, H> fmt::Debug for Answering<F, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, H, B, E> Future for Answering<F, H>
where
    F: Future<Output = Result<Response<B>, E>>,
    H: Divert<B>,
{
    type Output = Result<Response<Body>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                AnsweringProj::Inner { future, divert } => {
                    match divert.divert(ready!(future.poll(cx))?) {
                        Ok(response) => return Poll::Ready(Ok(response)),
                        Err(answer) => state.set(AnsweringState::Answer { future: answer }),
                    }
                }
                AnsweringProj::Answer { future } => return future.as_mut().poll(cx).map(Ok),
            }
        }
    }
}
