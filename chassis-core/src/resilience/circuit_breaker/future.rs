//! [`ResponseFuture`] of the circuit breaker service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::classifier::{Classify, Outcome};
use super::core::{RawPermit, Shared};
use super::service::BreakerRef;
use crate::{BoxError, Error};

pin_project! {
    /// Response future of [`CircuitBreaker`](super::CircuitBreaker): records the outcome when
    /// the inner future completes, or — if it is dropped first (an outer timeout, a caller
    /// that went away) — records what the classifier's `classify_cancelled` says (a failure by
    /// default), so a half-open probe permit can never leak.
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        guard: CallGuard<C>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F> {
        Called { #[pin] fut: F },
        Rejected { error: Option<Error> },
    }
}

/// A running call's reference to its breaker: the shared one, or its service clone's own
/// (see [`CircuitBreaker`](super::CircuitBreaker), "One reference count per clone").
#[derive(Debug)]
pub(crate) enum CallRef {
    Shared(Arc<Shared>),
    Own(Arc<BreakerRef>),
}

impl CallRef {
    #[inline]
    fn get(&self) -> &Shared {
        match self {
            Self::Shared(shared) => shared,
            Self::Own(own) => &own.0,
        }
    }
}

/// Holds the permit of a running call; records the cancellation outcome if dropped while
/// still holding it.
#[derive(Debug)]
struct CallGuard<C> {
    running: Option<(CallRef, RawPermit)>,
    classifier: Option<C>,
    cancelled: Outcome,
}

impl<C> Drop for CallGuard<C> {
    fn drop(&mut self) {
        if let Some((breaker, permit)) = self.running.take() {
            breaker.get().record(permit, self.cancelled);
        }
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(
        fut: F,
        breaker: CallRef,
        permit: RawPermit,
        classifier: C,
        cancelled: Outcome,
    ) -> Self {
        Self {
            kind: Kind::Called { fut },
            guard: CallGuard {
                running: Some((breaker, permit)),
                classifier: Some(classifier),
                cancelled,
            },
        }
    }

    pub(crate) fn rejected(error: Error) -> Self {
        Self {
            kind: Kind::Rejected { error: Some(error) },
            guard: CallGuard {
                running: None,
                classifier: None,
                cancelled: Outcome::Ignored,
            },
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Called { fut } => {
                let result = ready!(fut.poll(cx));
                if let Some((breaker, permit)) = this.guard.running.take() {
                    let outcome = match &this.guard.classifier {
                        Some(c) => c.classify(result.as_ref()),
                        None => Outcome::Ignored,
                    };
                    breaker.get().record(permit, outcome);
                }
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { error } => Poll::Ready(Err(error
                .take()
                .map(BoxError::from)
                .unwrap_or_else(|| "circuit breaker future polled after completion".into()))),
        }
    }
}
