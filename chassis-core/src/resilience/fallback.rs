//! Fallback: on chosen errors, answer with a typed fallback (a value, or another service)
//! instead of failing.
//!
//! A [`FallbackLayer`] wraps a service; when a call fails with an error its [`FallbackOn`]
//! accepts, the error goes to the fallback service, whose answer is the call's: a default
//! value, a cached copy, a degraded computation. Other errors pass through unchanged.
//! [`OnRejection`] falls back when a resilience layer turned the call away (breaker open,
//! bulkhead full, adaptive limit reached, rate limited), [`OnCircuitOpen`] only for an open
//! breaker, [`OnTimeout`] on a timeout or deadline; any `Fn(&BoxError) -> bool` works too.
//!
//! It goes *outermost*, around a [`ResilienceLayer`](super::policy::ResilienceLayer) (see the
//! policy's order): it then sees the stack's final word (retries exhausted, breaker open),
//! and a fallback answer is never retried, counted as the dependency's success by the
//! breaker, nor held against a bulkhead or limit.
//!
//! # Example
//!
//! ```
//! use chassis_core::resilience::fallback::{FallbackLayer, OnCircuitOpen};
//! use chassis_core::{BoxError, Error};
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let layer = FallbackLayer::value(OnCircuitOpen, "recommendations unavailable".to_owned());
//! let open = layer.layer(service_fn(|_: ()| async {
//!     Err::<String, BoxError>(Error::circuit_open("recs".into(), Duration::from_secs(5)).into())
//! }));
//! assert_eq!(open.oneshot(()).await?, "recommendations unavailable");
//! let failing = layer.layer(service_fn(|_: ()| async { Err::<String, BoxError>("bad input".into()) }));
//! assert_eq!(failing.oneshot(()).await.unwrap_err().to_string(), "bad input");
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::{BoxError, Error, ErrorKind};

/// Which errors get the fallback answer. Closures `Fn(&BoxError) -> bool` implement it.
pub trait FallbackOn {
    /// Whether `error` is answered by the fallback.
    fn falls_back(&self, error: &BoxError) -> bool;
}

impl<F> FallbackOn for F
where
    F: Fn(&BoxError) -> bool,
{
    fn falls_back(&self, error: &BoxError) -> bool {
        self(error)
    }
}

/// The kind of the chassis error in `error`'s chain, if any.
fn kind_in(error: &BoxError) -> Option<&ErrorKind> {
    Error::find_in(error.as_ref()).map(Error::kind)
}

/// Falls back when a resilience layer rejected the call without reaching the dependency
/// ([`Error::is_rejection`]: breaker open, bulkhead full, adaptive limit, rate limit).
#[derive(Clone, Copy, Debug, Default)]
pub struct OnRejection;

impl FallbackOn for OnRejection {
    fn falls_back(&self, error: &BoxError) -> bool {
        Error::find_in(error.as_ref()).is_some_and(Error::is_rejection)
    }
}

/// Falls back only when the circuit breaker is open.
#[derive(Clone, Copy, Debug, Default)]
pub struct OnCircuitOpen;

impl FallbackOn for OnCircuitOpen {
    fn falls_back(&self, error: &BoxError) -> bool {
        matches!(kind_in(error), Some(ErrorKind::CircuitOpen { .. }))
    }
}

/// Falls back on a timeout or an overall deadline.
#[derive(Clone, Copy, Debug, Default)]
pub struct OnTimeout;

impl FallbackOn for OnTimeout {
    fn falls_back(&self, error: &BoxError) -> bool {
        Error::find_in(error.as_ref()).is_some_and(Error::is_timeout)
    }
}

/// The fallback service of [`FallbackLayer::value`]: answers every error with a clone of one
/// value.
#[derive(Clone, Debug)]
pub struct FallbackValue<T>(T);

impl<T: Clone> Service<BoxError> for FallbackValue<T> {
    type Response = T;
    type Error = BoxError;
    type Future = Ready<Result<T, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _error: BoxError) -> Self::Future {
        ready(Ok(self.0.clone()))
    }
}

/// Wraps services in [`Fallback`]: errors `On` accepts are answered by the fallback service
/// `F` (a `Service<BoxError>` answering with the wrapped service's response type).
#[derive(Clone, Debug)]
pub struct FallbackLayer<On, F> {
    on: On,
    fallback: F,
}

impl<On, F> FallbackLayer<On, F> {
    /// Errors `on` accepts are passed to the service `fallback`, whose answer is the call's.
    pub fn new(on: On, fallback: F) -> Self {
        Self { on, fallback }
    }
}

impl<On, T> FallbackLayer<On, FallbackValue<T>> {
    /// Errors `on` accepts are answered with a clone of `value`.
    pub fn value(on: On, value: T) -> Self {
        Self::new(on, FallbackValue(value))
    }
}

impl<S, On: Clone, F: Clone> Layer<S> for FallbackLayer<On, F> {
    type Service = Fallback<S, On, F>;

    fn layer(&self, inner: S) -> Self::Service {
        Fallback {
            inner,
            on: self.on.clone(),
            fallback: self.fallback.clone(),
            refused: None,
        }
    }
}

/// A service answering the errors its [`FallbackOn`] accepts with a fallback service's answer:
/// the errors of its calls, and those of its inner service's `poll_ready` (where an open
/// breaker rejects).
#[derive(Debug)]
pub struct Fallback<S, On, F> {
    inner: S,
    on: On,
    fallback: F,
    /// The accepted error `poll_ready` met, answered by the next call's fallback.
    refused: Option<BoxError>,
}

impl<S: Clone, On: Clone, F: Clone> Clone for Fallback<S, On, F> {
    fn clone(&self) -> Self {
        // NOTE: a refusal belongs to the instance that was polled; the clone polls its own.
        Self {
            inner: self.inner.clone(),
            on: self.on.clone(),
            fallback: self.fallback.clone(),
            refused: None,
        }
    }
}

impl<S, On, F> Fallback<S, On, F> {
    crate::__define_inner_service_accessors!();
}

impl<S, Req, On, F> Service<Req> for Fallback<S, On, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    On: FallbackOn + Clone,
    F: Service<BoxError, Response = S::Response, Error = BoxError> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, On, F>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.refused.is_some() {
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Err(error)) => {
                let error = error.into();
                if !self.on.falls_back(&error) {
                    return Poll::Ready(Err(error));
                }
                // NOTE: `call` finds the refusal and answers with the fallback, without
                // calling the inner service, which is not ready.
                self.refused = Some(error);
                Poll::Ready(Ok(()))
            }
            other => other.map_err(Into::into),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        if let Some(error) = self.refused.take() {
            tracing::debug!(%error, "call refused: answered by its fallback");
            return ResponseFuture {
                state: State::Readying {
                    fallback: self.fallback.clone(),
                    error: Some(error),
                },
            };
        }
        ResponseFuture {
            state: State::Called {
                fut: self.inner.call(req),
                on: Some(self.on.clone()),
                fallback: Some(self.fallback.clone()),
            },
        }
    }
}

pin_project! {
    /// Response future of [`Fallback`].
    pub struct ResponseFuture<Fut, On, F>
    where
        F: Service<BoxError>,
    {
        #[pin]
        state: State<Fut, On, F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<Fut, On, F>
    where
        F: Service<BoxError>,
    {
        Called { #[pin] fut: Fut, on: Option<On>, fallback: Option<F> },
        Readying { fallback: F, error: Option<BoxError> },
        FallingBack { #[pin] fut: F::Future },
    }
}

impl<Fut, On, F: Service<BoxError>> fmt::Debug for ResponseFuture<Fut, On, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            State::Called { .. } => "called",
            State::Readying { .. } => "readying",
            State::FallingBack { .. } => "falling back",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

impl<Fut, T, E, On, F> Future for ResponseFuture<Fut, On, F>
where
    Fut: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    On: FallbackOn,
    F: Service<BoxError, Response = T, Error = BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { fut, on, fallback } => {
                    let error = match std::task::ready!(fut.poll(cx)) {
                        Ok(response) => return Poll::Ready(Ok(response)),
                        Err(error) => error.into(),
                    };
                    let on = on.take().expect("fallback future polled after completion");
                    if !on.falls_back(&error) {
                        return Poll::Ready(Err(error));
                    }
                    tracing::debug!(%error, "call failed: answered by its fallback");
                    let fallback = fallback
                        .take()
                        .expect("fallback future polled after completion");
                    this.state.set(State::Readying {
                        fallback,
                        error: Some(error),
                    });
                }
                StateProj::Readying { fallback, error } => {
                    std::task::ready!(fallback.poll_ready(cx))?;
                    let error = error
                        .take()
                        .expect("fallback future polled after completion");
                    let fut = fallback.call(error);
                    this.state.set(State::FallingBack { fut });
                }
                StateProj::FallingBack { fut } => return fut.poll(cx),
            }
        }
    }
}
