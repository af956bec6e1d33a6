//! [`AdaptiveLimit`]: admits a call while fewer than the current limit are in flight.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use super::future::ResponseFuture;
use super::limiter::{Limiter, Permit};

/// The admission decided in `poll_ready`, waiting for `call`.
enum Admission {
    Undecided,
    Admitted(Permit),
    Shed,
}

/// A service shedding calls beyond an adaptive concurrency limit shared by all its clones.
///
/// `poll_ready` decides at once (there is no waiting: a wait would be the queue the limit is
/// there to prevent); a shed call fails from its response future with
/// [`ErrorKind::ConcurrencyLimited`](crate::ErrorKind::ConcurrencyLimited), so `poll_ready`
/// only fails when the inner service does.
pub struct AdaptiveLimit<S> {
    inner: S,
    limiter: Arc<Limiter>,
    admission: Admission,
}

impl<S> AdaptiveLimit<S> {
    pub(crate) fn new(inner: S, limiter: Arc<Limiter>) -> Self {
        Self {
            inner,
            limiter,
            admission: Admission::Undecided,
        }
    }

    crate::__define_inner_service_accessors!();
}

impl<S: Clone> Clone for AdaptiveLimit<S> {
    fn clone(&self) -> Self {
        // NOTE: an admission belongs to the instance polled ready; the clone decides its own.
        Self::new(self.inner.clone(), self.limiter.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for AdaptiveLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdaptiveLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish()
    }
}

crate::__impl_boxed_service!(AdaptiveLimit => ResponseFuture<S::Future> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Admission::Undecided = self.admission {
            self.admission = match self.limiter.try_acquire() {
                Some(token) => Admission::Admitted(Permit::new(self.limiter.clone(), token)),
                None => Admission::Shed,
            };
        }
        match self.admission {
            // NOTE: `call` sees `Shed` and fails the call without calling the inner service.
            Admission::Shed => Poll::Ready(Ok(())),
            // The permit stays here while the inner service is not ready, so the call keeps
            // its place; dropping the service gives it back.
            _ => self.inner.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, req: Req) -> Self::Future {
        match std::mem::replace(&mut self.admission, Admission::Undecided) {
            Admission::Admitted(permit) => ResponseFuture::called(self.inner.call(req), permit),
            Admission::Shed => {
                self.limiter.rejected.increment(1);
                tracing::debug!(adaptive_limit = %self.limiter.name, "adaptive limit reached: call shed");
                ResponseFuture::rejected(self.limiter.rejection())
            }
            Admission::Undecided => {
                panic!(
                    "AdaptiveLimit::call without a successful poll_ready (tower Service contract)"
                )
            }
        }
    }
});
