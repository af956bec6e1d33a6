//! [`ResponseFuture`] of the circuit breaker service.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::classifier::{Classify, Outcome};
use super::core::{RawPermit, Shared};
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

/// Holds the permit of a running call; records the cancellation outcome if dropped while
/// still holding it.
#[derive(Debug)]
struct CallGuard<C> {
    running: Option<(Arc<Shared>, RawPermit)>,
    classifier: Option<C>,
    cancelled: Outcome,
}

impl<C> Drop for CallGuard<C> {
    fn drop(&mut self) {
        if let Some((shared, permit)) = self.running.take() {
            shared.record(permit, self.cancelled);
        }
    }
}

impl<F, C> ResponseFuture<F, C> {
    pub(crate) fn new(
        fut: F,
        shared: Arc<Shared>,
        permit: RawPermit,
        classifier: C,
        cancelled: Outcome,
    ) -> Self {
        Self {
            kind: Kind::Called { fut },
            guard: CallGuard {
                running: Some((shared, permit)),
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
                if let Some((shared, permit)) = this.guard.running.take() {
                    let outcome = match &this.guard.classifier {
                        Some(c) => c.classify(result.as_ref()),
                        None => Outcome::Ignored,
                    };
                    shared.record(permit, outcome);
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
