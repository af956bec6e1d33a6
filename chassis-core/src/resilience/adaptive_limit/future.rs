//! [`ResponseFuture`] of [`AdaptiveLimit`](super::AdaptiveLimit).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::limiter::{Ending, Permit};
use crate::{BoxError, Error};

pin_project! {
    /// Response future of [`AdaptiveLimit`](super::AdaptiveLimit): the inner call, whose end
    /// (its latency, or its timeout) is the limiter's sample, or the shed call's rejection.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] inner: F, permit: Permit },
        Shed { error: Option<Error> },
    }
}

impl<F> ResponseFuture<F> {
    pub(crate) fn called(inner: F, permit: Permit) -> Self {
        Self {
            kind: Kind::Called { inner, permit },
        }
    }

    pub(crate) fn shed(error: Error) -> Self {
        Self {
            kind: Kind::Shed { error: Some(error) },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Called { .. } => "called",
            Kind::Shed { .. } => "shed",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { inner, permit } => {
                let result = ready!(inner.poll(cx)).map_err(Into::into);
                permit.finish(Ending::of(&result));
                Poll::Ready(result)
            }
            KindProj::Shed { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion")
                .into())),
        }
    }
}
