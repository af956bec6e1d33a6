//! [`CircuitBreakerLayer`].

use tower_layer::Layer;

use super::classifier::DefaultClassifier;
use super::config::CircuitBreakerConfig;
use super::core::CircuitBreakerHandle;
use super::service::CircuitBreaker;
use crate::Error;
use crate::resilience::clock::Clock;

/// Wraps services in one shared circuit breaker.
///
/// Every service the layer produces (and every clone of those) shares the same breaker, so a
/// layer stands for one downstream dependency.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C = DefaultClassifier> {
    handle: CircuitBreakerHandle,
    classifier: C,
}

impl CircuitBreakerLayer {
    /// Builds the breaker from `config` with the [`DefaultClassifier`] (every `Err` is a
    /// failure) and the default [`CoarseClock`](super::CoarseClock). Fails with
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) if `config` is invalid.
    pub fn new(config: CircuitBreakerConfig) -> Result<Self, Error> {
        Ok(Self::from_handle(CircuitBreakerHandle::new(config)?))
    }

    /// Wraps an existing breaker (e.g. to share one breaker between several clients).
    pub fn from_handle(handle: CircuitBreakerHandle) -> Self {
        Self {
            handle,
            classifier: DefaultClassifier,
        }
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// Uses `classifier` to decide what counts as a failure.
    pub fn with_classifier<C2>(self, classifier: C2) -> CircuitBreakerLayer<C2> {
        CircuitBreakerLayer {
            handle: self.handle,
            classifier,
        }
    }

    /// Rebuilds the breaker with `clock` (same configuration, fresh state: call it before
    /// taking [`handle`](Self::handle)s).
    pub fn with_clock(self, clock: impl Clock) -> Self {
        let config = self.handle.config().clone();
        let handle = CircuitBreakerHandle::with_clock(config, clock)
            .expect("configuration was validated when the layer was built");
        Self {
            handle,
            classifier: self.classifier,
        }
    }

    /// The breaker shared by every service this layer wraps.
    pub fn handle(&self) -> CircuitBreakerHandle {
        self.handle.clone()
    }

    /// The classifier (for stacks that run the breaker's accounting themselves).
    pub(crate) fn classifier(&self) -> &C {
        &self.classifier
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, self.handle.clone(), self.classifier.clone())
    }
}
