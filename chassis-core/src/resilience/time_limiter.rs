//! Bounds a call (or, inside a retry, one attempt) in time.
//!
//! [`TimeLimiterLayer`] wraps a service so that a call not finished within the configured duration
//! fails with a [`chassis_core::Error`](crate::Error) of kind
//! [`ErrorKind::Timeout { after }`](crate::ErrorKind::Timeout), boxed as [`BoxError`]. Dropping
//! the inner future on timeout cancels the call (so a circuit breaker around it records the
//! cancellation as its classifier says).
//!
//! The limit can be switched off ([`TimeLimiterLayer::optional`] with `None`): calls then pass
//! through unchanged, so a stack that may or may not bound its calls keeps one concrete type.
//!
//! # When the clock starts
//!
//! The timer is created the first time the call is polled and is not finished: a call that
//! completes on its first poll (a cache hit, an error returned at once, a rejection by an inner
//! layer) reads no clock and arms no timer, and the future carries the timer boxed (8 bytes). The
//! duration therefore counts from the call's first poll that had to wait; only a future created
//! and then left unpolled for a while sees the difference.
//!
//! # Example
//!
//! ```
//! use chassis_core::resilience::time_limiter::TimeLimiterLayer;
//! use chassis_core::{BoxError, Error, ErrorKind};
//! use std::time::Duration;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let slow = service_fn(|_: ()| async {
//!     tokio::time::sleep(Duration::from_secs(10)).await;
//!     Ok::<_, BoxError>("done")
//! });
//! let svc = ServiceBuilder::new()
//!     .layer(TimeLimiterLayer::new(Duration::from_millis(100)))
//!     .service(slow);
//! let err = svc.oneshot(()).await.unwrap_err();
//! let err = Error::from_boxed(err).unwrap();
//! assert_eq!(err.kind(), &ErrorKind::Timeout { after: Duration::from_millis(100) });
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower_layer::Layer;

use crate::{BoxError, Error};

/// Applies a [`TimeLimiter`] to every call of the wrapped service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeLimiterLayer {
    after: Option<Duration>,
}

impl TimeLimiterLayer {
    /// A layer failing calls that take longer than `after` with [`crate::ErrorKind::Timeout`].
    pub const fn new(after: Duration) -> Self {
        Self { after: Some(after) }
    }

    /// A layer that times out after `after` if given, and otherwise passes calls through
    /// unchanged (no timer is created), only boxing the inner error.
    pub const fn optional(after: Option<Duration>) -> Self {
        Self { after }
    }

    /// The configured timeout, if any.
    pub const fn after(&self) -> Option<Duration> {
        self.after
    }
}

impl<S> Layer<S> for TimeLimiterLayer {
    type Service = TimeLimiter<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeLimiter {
            inner,
            after: self.after,
        }
    }
}

/// A service whose calls fail with [`crate::ErrorKind::Timeout`] when they take too long.
#[derive(Clone, Debug)]
pub struct TimeLimiter<S> {
    inner: S,
    after: Option<Duration>,
}

impl<S> TimeLimiter<S> {
    /// Wraps `inner` with a timeout of `after`.
    pub const fn new(inner: S, after: Duration) -> Self {
        Self {
            inner,
            after: Some(after),
        }
    }

    crate::__define_inner_service_accessors!();
}

crate::__impl_boxed_service!(TimeLimiter => ResponseFuture<S::Future> {
    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The timeout bounds the call only: waiting for readiness is bounded by whatever
        // sits outside (a bulkhead's max wait, an overall deadline).
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        ResponseFuture {
            inner: self.inner.call(req),
            timer: None,
            after: self.after,
        }
    }
});

pin_project! {
    /// Response future of [`TimeLimiter`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // Created on the first poll that finds the call unfinished.
        timer: Option<Pin<Box<Sleep>>>,
        after: Option<Duration>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("after", &self.after)
            .field("armed", &self.timer.is_some())
            .finish_non_exhaustive()
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
        let this = self.project();
        // The call first: a response that is ready wins over a timer that fired meanwhile.
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map_err(Into::into));
        }
        let Some(after) = *this.after else {
            return Poll::Pending;
        };
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Error::timeout(after).into())),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use tower::{Service, ServiceExt, service_fn};

    fn sleeper(d: Duration) -> impl Service<(), Response = &'static str, Error = BoxError> + Clone {
        service_fn(move |()| async move {
            tokio::time::sleep(d).await;
            Ok::<_, BoxError>("ok")
        })
    }

    #[tokio::test(start_paused = true)]
    async fn fast_call_passes() {
        let svc = TimeLimiterLayer::new(Duration::from_secs(1))
            .layer(sleeper(Duration::from_millis(999)));
        assert_eq!(svc.oneshot(()).await.unwrap(), "ok");
    }

    #[tokio::test(start_paused = true)]
    async fn slow_call_times_out_at_the_configured_time() {
        let start = tokio::time::Instant::now();
        let svc =
            TimeLimiterLayer::new(Duration::from_secs(1)).layer(sleeper(Duration::from_secs(5)));
        let err = Error::from_boxed(svc.oneshot(()).await.unwrap_err()).unwrap();
        assert_eq!(
            err.kind(),
            &ErrorKind::Timeout {
                after: Duration::from_secs(1)
            }
        );
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_duration_counts_from_the_first_poll_that_waits() {
        let mut svc = TimeLimiterLayer::new(Duration::from_secs(1))
            .layer(sleeper(Duration::from_millis(900)));
        let call = svc.ready().await.unwrap().call(());
        // Created, then left unpolled for longer than the timeout: the clock has not started.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(call.await.unwrap(), "ok");
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_timeout_waits_for_the_call() {
        let svc = TimeLimiterLayer::optional(None).layer(sleeper(Duration::from_secs(3600)));
        assert_eq!(svc.oneshot(()).await.unwrap(), "ok");
    }

    #[tokio::test]
    async fn inner_errors_pass_through() {
        let svc = TimeLimiterLayer::new(Duration::from_secs(1)).layer(service_fn(|()| async {
            Err::<(), _>(std::io::Error::other("boom"))
        }));
        let err = svc.oneshot(()).await.unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert!(Error::find_in(err.as_ref()).is_none());
    }
}
