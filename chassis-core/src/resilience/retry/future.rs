//! The response future of [`Retry`](super::Retry).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::util::MapErr;
use tower_service::Service;

use super::Shared;
use super::classify::{CloneRequest, RetryAfter, RetryClassifier};
use super::policy::{AttemptPolicy, Outcome};
use crate::{BoxError, Error, ErrorKind};

type TowerFuture<S, Req, C, H, K> = tower::retry::future::ResponseFuture<
    AttemptPolicy<Req, C, H, K>,
    MapErr<S, fn(<S as Service<Req>>::Error) -> BoxError>,
    Req,
>;

pin_project! {
    /// Response future of [`Retry`](super::Retry): tower's retry loop, raced against the
    /// overall deadline.
    pub struct ResponseFuture<S, Req, C, H, K>
    where
        S: Service<Req>,
        C: RetryClassifier<S::Response>,
        H: RetryAfter<S::Response>,
        K: CloneRequest<Req>,
    {
        #[pin]
        kind: Kind<S, Req, C, H, K>,
        #[pin]
        deadline: Option<Sleep>,
        after: Duration,
        attempts_seen: Option<Arc<AtomicU32>>,
        shared: Arc<Shared<C, H, K>>,
    }
}

pin_project! {
    #[project = KindProj]
    pub(crate) enum Kind<S, Req, C, H, K>
    where
        S: Service<Req>,
        C: RetryClassifier<S::Response>,
        H: RetryAfter<S::Response>,
        K: CloneRequest<Req>,
    {
        // The request could be copied: tower's `Retry` runs the attempts.
        Retrying { #[pin] inner: TowerFuture<S, Req, C, H, K> },
        // A single attempt: retries are off, or the request could not be copied.
        Once {
            #[pin]
            inner: S::Future,
            not_cloneable: bool,
        },
    }
}

impl<S, Req, C, H, K> ResponseFuture<S, Req, C, H, K>
where
    S: Service<Req>,
    C: RetryClassifier<S::Response>,
    H: RetryAfter<S::Response>,
    K: CloneRequest<Req>,
{
    pub(crate) fn new(
        kind: Kind<S, Req, C, H, K>,
        deadline: Option<Instant>,
        after: Duration,
        attempts_seen: Option<Arc<AtomicU32>>,
        shared: Arc<Shared<C, H, K>>,
    ) -> Self {
        Self {
            kind,
            deadline: deadline.map(tokio::time::sleep_until),
            after,
            attempts_seen,
            shared,
        }
    }
}

impl<S, Req, C, H, K> fmt::Debug for ResponseFuture<S, Req, C, H, K>
where
    S: Service<Req>,
    C: RetryClassifier<S::Response>,
    H: RetryAfter<S::Response>,
    K: CloneRequest<Req>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Retrying { .. } => "retrying",
            Kind::Once { .. } => "once",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .field("deadline", &self.deadline.as_ref().map(|_| self.after))
            .finish_non_exhaustive()
    }
}

impl<S, Req, C, H, K> Future for ResponseFuture<S, Req, C, H, K>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    C: RetryClassifier<S::Response>,
    H: RetryAfter<S::Response>,
    K: CloneRequest<Req>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let shared = &**this.shared;
        let polled = match this.kind.project() {
            KindProj::Retrying { inner } => inner.poll(cx),
            KindProj::Once {
                inner,
                not_cloneable,
            } => match inner.poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(result) => {
                    let result = result.map_err(Into::into);
                    let retry_wanted =
                        *not_cloneable && shared.classifier.should_retry(result.as_ref());
                    Poll::Ready(match result {
                        Err(err) if retry_wanted => {
                            shared.record(Outcome::NotCloneable);
                            tracing::warn!(
                                retry = %shared.name, error = %err,
                                "call failed and cannot be retried: the request is not cloneable"
                            );
                            Err(Error::with_source(ErrorKind::RequestNotCloneable, err).into())
                        }
                        Ok(response) if retry_wanted => {
                            shared.record(Outcome::NotCloneable);
                            tracing::warn!(
                                retry = %shared.name,
                                "retryable response returned as is: the request is not cloneable"
                            );
                            Ok(response)
                        }
                        Ok(response) => {
                            shared.record(Outcome::Success);
                            Ok(response)
                        }
                        Err(err) => {
                            shared.record(Outcome::NotRetryable);
                            Err(err)
                        }
                    })
                }
            },
        };
        if polled.is_ready() {
            return polled;
        }
        if let Some(deadline) = this.deadline.as_pin_mut()
            && deadline.poll(cx).is_ready()
        {
            let attempts = this
                .attempts_seen
                .as_ref()
                .map_or(1, |a| a.load(Ordering::Relaxed));
            shared.record(Outcome::Deadline);
            tracing::warn!(retry = %shared.name, after = ?this.after, attempts, "retry deadline exceeded");
            return Poll::Ready(Err(Error::new(ErrorKind::DeadlineExceeded {
                after: *this.after,
                attempts,
            })
            .into()));
        }
        Poll::Pending
    }
}
