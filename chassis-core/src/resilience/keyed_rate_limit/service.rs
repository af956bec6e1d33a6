//! [`KeyedRateLimit`].

use std::fmt;
use std::task::{Context, Poll};

use tower_service::Service;

use super::{KeyExtractor, RateLimitBackend, ResponseFuture};
use crate::BoxError;

/// A service that asks its backend for a permit for each request's key before calling the
/// inner service; a rejected request never reaches it and fails with the backend's
/// [`ErrorKind::RateLimited`](crate::ErrorKind::RateLimited) error.
///
/// The decision may need a round trip (Redis), so it is taken in the response future, after
/// `poll_ready`: the inner service readied by `poll_ready` moves into the future and a clone
/// takes its place, as `axum::middleware::from_fn` does. `poll_ready` only fails when the
/// inner service does.
pub struct KeyedRateLimit<S, B, X> {
    inner: S,
    backend: B,
    extract: X,
}

impl<S, B, X> KeyedRateLimit<S, B, X> {
    /// Wraps `inner`.
    pub fn new(inner: S, backend: B, extract: X) -> Self {
        Self {
            inner,
            backend,
            extract,
        }
    }

    crate::__define_inner_service_accessors!();
}

impl<S: Clone, B: Clone, X: Clone> Clone for KeyedRateLimit<S, B, X> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            backend: self.backend.clone(),
            extract: self.extract.clone(),
        }
    }
}

impl<S: fmt::Debug, B: fmt::Debug, X> fmt::Debug for KeyedRateLimit<S, B, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimit")
            .field("inner", &self.inner)
            .field("backend", &self.backend)
            .finish()
    }
}

impl<S, B, X, Req> Service<Req> for KeyedRateLimit<S, B, X>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
    X: KeyExtractor<Req>,
    B: RateLimitBackend<X::Key>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<B::Future, S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let check = self.backend.check(self.extract.extract(&req));
        // NOTE: the readied service goes into the future (it is the one `poll_ready` prepared);
        // the clone left here is readied by the next `poll_ready`.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::new(check, ready, req)
    }
}
