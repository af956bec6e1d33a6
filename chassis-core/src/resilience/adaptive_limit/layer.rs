//! [`AdaptiveLimitLayer`]: holds one limiter and wraps services in it.

use std::sync::Arc;

use tower_layer::Layer;

use super::limiter::{AdaptiveLimitConfig, AdaptiveLimitHandle, LimitSnapshot, Limiter};
use super::service::AdaptiveLimit;
use crate::Error;

/// Builds [`AdaptiveLimit`] services that all share one limiter: one layer stands for one
/// downstream (client side) or one server (server side).
#[derive(Clone, Debug)]
pub struct AdaptiveLimitLayer {
    pub(crate) limiter: Arc<Limiter>,
}

impl AdaptiveLimitLayer {
    /// Validates `config` and creates the shared limiter.
    ///
    /// The metrics (`adaptive_limit_limit`, `adaptive_limit_in_flight`,
    /// `adaptive_limit_rejected_total`, label `name`) are registered here, the limit at its
    /// initial value and the others at 0: install the metrics recorder before building layers.
    pub fn new(config: AdaptiveLimitConfig) -> Result<Self, Error> {
        Ok(Self {
            limiter: Arc::new(Limiter::new(config)?),
        })
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.limiter.name
    }

    /// The current limit and calls in flight.
    pub fn snapshot(&self) -> LimitSnapshot {
        self.limiter.snapshot()
    }

    /// A cloneable view of the limiter, for whoever shows its state.
    pub fn handle(&self) -> AdaptiveLimitHandle {
        AdaptiveLimitHandle {
            limiter: self.limiter.clone(),
        }
    }
}

impl<S> Layer<S> for AdaptiveLimitLayer {
    type Service = AdaptiveLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdaptiveLimit::new(inner, self.limiter.clone())
    }
}
