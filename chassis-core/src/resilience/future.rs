//! The response future of the layers that admit or reject a call in `poll_ready`
//! ([`Bulkhead`](super::bulkhead::Bulkhead), [`RateLimiter`](super::rate_limiter::RateLimiter)
//! and [`AdaptiveLimit`](super::adaptive_limit::AdaptiveLimit)): either the inner service's
//! future, holding what admitted the call until it ends, or the layer's rejection.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::bulkhead::Permit;
use crate::{BoxError, Error};

/// What an admitted call holds while it runs (a permit, a slot of a limit), told how it ended.
pub(crate) trait Hold {
    /// How the response future's `Debug` names a rejected call.
    const REJECTED: &'static str = "rejected";

    /// The call ended with `result`, which is returned next.
    fn end<T>(&mut self, result: &Result<T, BoxError>);
}

/// A bulkhead's permit is given back when the future is dropped; a rate limiter's call holds
/// nothing (`None`).
impl Hold for Option<Permit> {
    #[inline]
    fn end<T>(&mut self, _: &Result<T, BoxError>) {}
}

pin_project! {
    /// The state of a gated call: admitted and running, or rejected.
    #[project = GateProj]
    pub(crate) enum Gate<F, H> {
        Called { #[pin] inner: F, held: H },
        Rejected { error: Option<Error> },
    }
}

impl<F, H: Hold> Gate<F, H> {
    /// The state's name, for `Debug`.
    pub(crate) fn state(&self) -> &'static str {
        match self {
            Self::Called { .. } => "called",
            Self::Rejected { .. } => H::REJECTED,
        }
    }

    /// The inner call's result with its error boxed, or the rejection.
    #[inline]
    pub(crate) fn poll_result<T, E>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<T, BoxError>>
    where
        F: Future<Output = Result<T, E>>,
        E: Into<BoxError>,
    {
        match self.project() {
            GateProj::Called { inner, held } => {
                let result = ready!(inner.poll(cx)).map_err(Into::into);
                held.end(&result);
                Poll::Ready(result)
            }
            GateProj::Rejected { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion")
                .into())),
        }
    }
}

/// Defines the public `ResponseFuture<F>` of a gated layer, holding `$held` while the call
/// runs: its constructors `called` and `rejected`, its `Debug` (the state) and its `Future`
/// (the [`Gate`]'s).
macro_rules! gated_response_future {
    ($(#[$doc:meta])* $held:ty) => {
        pin_project_lite::pin_project! {
            $(#[$doc])*
            pub struct ResponseFuture<F> {
                #[pin]
                kind: $crate::resilience::future::Gate<F, $held>,
            }
        }

        impl<F> ResponseFuture<F> {
            /// The inner service's future, holding `held` until it is done.
            pub(crate) fn called(inner: F, held: $held) -> Self {
                Self {
                    kind: $crate::resilience::future::Gate::Called { inner, held },
                }
            }

            /// Fails with `error` without calling the inner service.
            pub(crate) fn rejected(error: $crate::Error) -> Self {
                Self {
                    kind: $crate::resilience::future::Gate::Rejected { error: Some(error) },
                }
            }
        }

        impl<F> ::std::fmt::Debug for ResponseFuture<F> {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct("ResponseFuture")
                    .field("kind", &self.kind.state())
                    .finish()
            }
        }

        impl<F, T, E> ::std::future::Future for ResponseFuture<F>
        where
            F: ::std::future::Future<Output = Result<T, E>>,
            E: Into<$crate::BoxError>,
        {
            type Output = Result<T, $crate::BoxError>;

            #[inline]
            fn poll(
                self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<Self::Output> {
                self.project().kind.poll_result(cx)
            }
        }
    };
}

pub(crate) use gated_response_future;

gated_response_future! {
    /// Response future of [`Bulkhead`](super::bulkhead::Bulkhead) and
    /// [`RateLimiter`](super::rate_limiter::RateLimiter): the inner service's future (a
    /// bulkhead's permit held until it completes or is dropped), or the layer's rejection.
    Option<Permit>
}
