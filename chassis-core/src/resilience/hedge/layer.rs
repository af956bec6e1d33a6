//! [`HedgeLayer`]: the hedging configuration, the predicate and the retry budget it draws on.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use super::config::{HedgeConfig, Latencies};
use super::service::Hedge;
use crate::Error;
use crate::resilience::retry::{CloneWithClone, RetryBudget};

/// What every service of one layer shares.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    delay: Duration,
    pub(crate) latencies: Option<Latencies>,
    pub(crate) budget: Option<Arc<RetryBudget>>,
    pub(crate) sent: AtomicU64,
}

impl Shared {
    /// How long the first attempt runs alone.
    pub(crate) fn delay(&self) -> Duration {
        self.latencies.as_ref().map_or(self.delay, Latencies::delay)
    }
}

/// Builds [`Hedge`] services: a second attempt of an idempotent request when the first is
/// slow, the first answer wins and the other attempt is cancelled.
///
/// `P` says which requests may be hedged ([`HedgePredicate`](super::HedgePredicate)), `K`
/// copies them ([`CloneRequest`](crate::resilience::retry::CloneRequest), `Clone` by default).
#[derive(Clone)]
pub struct HedgeLayer<P, K = CloneWithClone> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) predicate: P,
    pub(crate) cloner: K,
}

impl<P, K> fmt::Debug for HedgeLayer<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HedgeLayer")
            .field("name", &self.shared.name)
            .field("delay", &self.shared.delay())
            .field("budget", &self.shared.budget.is_some())
            .finish_non_exhaustive()
    }
}

impl<P> HedgeLayer<P> {
    /// Validates `config`; only requests `predicate` accepts are ever hedged.
    pub fn new(config: HedgeConfig, predicate: P) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            shared: Arc::new(Shared {
                name: config.name.into(),
                delay: config.delay,
                latencies: config.percentile.map(|p| Latencies::new(p, config.delay)),
                budget: None,
                sent: AtomicU64::new(0),
            }),
            predicate,
            cloner: CloneWithClone,
        })
    }
}

impl<P, K> HedgeLayer<P, K> {
    /// Counts every hedge against `budget` (a retry layer's, from
    /// [`BackoffRetryLayer::budget_handle`](crate::resilience::retry::BackoffRetryLayer::budget_handle)):
    /// a hedge is a retry sent early, so hedges and retries together stay within one budget,
    /// and no hedge is sent when it is spent. The retry layer, outside, deposits for each call.
    /// Defaults to none (hedges bounded only by one per call).
    pub fn with_retry_budget(self, budget: Arc<RetryBudget>) -> Self {
        let shared = Shared {
            name: self.shared.name.clone(),
            delay: self.shared.delay,
            latencies: self
                .shared
                .latencies
                .as_ref()
                .map(|l| Latencies::new(l.percentile(), self.shared.delay)),
            budget: Some(budget),
            sent: AtomicU64::new(0),
        };
        Self {
            shared: Arc::new(shared),
            ..self
        }
    }

    /// Replaces how requests are copied for the hedge.
    pub fn with_cloner<K2>(self, cloner: K2) -> HedgeLayer<P, K2> {
        HedgeLayer {
            shared: self.shared,
            predicate: self.predicate,
            cloner,
        }
    }

    /// Hedges sent so far by every service of this layer.
    pub fn hedges_sent(&self) -> u64 {
        self.shared.sent.load(Relaxed)
    }

    /// The delay the next call's hedge would wait.
    pub fn current_delay(&self) -> Duration {
        self.shared.delay()
    }
}

crate::__impl_layer!(<P: Clone, K: Clone> HedgeLayer<P, K> => Hedge<S, P, K> {
    shared,
    predicate,
    cloner,
});
