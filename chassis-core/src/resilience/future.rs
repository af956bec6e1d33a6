//! The [`ResponseFuture`] that [`Bulkhead`](super::bulkhead::Bulkhead) and
//! [`RateLimiter`](super::rate_limiter::RateLimiter) share: both decide in `poll_ready` whether a
//! call may go ahead, then either call the inner service or fail with their rejection.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use super::bulkhead::Permit;
use crate::{BoxError, Error};

pin_project! {
    /// Response future of [`Bulkhead`](super::bulkhead::Bulkhead) and
    /// [`RateLimiter`](super::rate_limiter::RateLimiter): the inner service's future (a
    /// bulkhead's permit held until it completes or is dropped), or the layer's rejection.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] inner: F, _permit: Option<Permit> },
        Rejected { error: Option<Error> },
    }
}

impl<F> ResponseFuture<F> {
    /// The inner service's future, holding `permit` (if any) until it is done.
    pub(crate) fn called(inner: F, permit: Option<Permit>) -> Self {
        Self {
            kind: Kind::Called {
                inner,
                _permit: permit,
            },
        }
    }

    /// Fails with `error` without calling the inner service.
    pub(crate) fn rejected(error: Error) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Called { .. } => "called",
            Kind::Rejected { .. } => "rejected",
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
            KindProj::Called { inner, .. } => inner.poll(cx).map_err(Into::into),
            KindProj::Rejected { error } => Poll::Ready(Err(error
                .take()
                .expect("ResponseFuture polled after completion")
                .into())),
        }
    }
}
