//! [`KeyedRateLimitLayer`].

use std::fmt;

use tower_layer::Layer;

use super::KeyedRateLimit;

/// Builds [`KeyedRateLimit`] services that share one backend and take each request's key with
/// `extract` (a closure `Fn(&Req) -> K` or any [`KeyExtractor`](super::KeyExtractor)).
#[derive(Clone)]
pub struct KeyedRateLimitLayer<B, X> {
    backend: B,
    extract: X,
}

impl<B, X> KeyedRateLimitLayer<B, X> {
    /// A layer limiting each key of `extract` with `backend` (a
    /// [`KeyedRateLimiter`](super::KeyedRateLimiter), a `RedisRateLimiter`, or any
    /// [`RateLimitBackend`](super::RateLimitBackend)).
    pub fn new(backend: B, extract: X) -> Self {
        Self { backend, extract }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }
}

impl<B: fmt::Debug, X> fmt::Debug for KeyedRateLimitLayer<B, X> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimitLayer")
            .field("backend", &self.backend)
            .field("extract", &std::any::type_name::<X>())
            .finish()
    }
}

impl<S, B: Clone, X: Clone> Layer<S> for KeyedRateLimitLayer<B, X> {
    type Service = KeyedRateLimit<S, B, X>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimit::new(inner, self.backend.clone(), self.extract.clone())
    }
}
