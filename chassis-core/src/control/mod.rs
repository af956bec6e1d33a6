//! The control registry: a service's resilience machinery, listed, read and steered by name.
//!
//! A [`ControlRegistry`] holds named components: circuit breakers, bulkheads, rate limiters,
//! retry budgets, the health checks, and whatever else implements [`Controllable`] (the
//! messaging crate's outbox and consumers do). Each component reports its state as JSON
//! ([`Controllable::snapshot`]) and accepts a few named actions ([`Controllable::act`]: a
//! breaker's `force_open`, `force_closed` and `reset`). Every action is idempotent and answers
//! with the component's new state.
//!
//! The registry knows no protocol: `chassis-http` serves it on the admin listener (with the
//! `admin` scope), the way it serves the [`HealthRegistry`]. It
//! is filled explicitly, when the service builds its parts
//! ([`register_policy`](ControlRegistry::register_policy) takes every part of a
//! [`ResilienceLayer`]), so nothing is added to a
//! call's path: reading a state reads the atomics the components keep anyway.
//!
//! [`ControlRegistry::subscribe`] gives a live feed of the whole registry: one sampler task
//! per registry, started by the first subscriber and stopped when the last one leaves, takes a
//! snapshot every [`sample_interval`](ControlRegistry::sample_interval) (and at once after an
//! action), derives per-second rates from the components' `counters`, serialises the frame
//! once and hands the same bytes to every subscriber. A hundred dashboards cost one snapshot a
//! second, not a hundred.
//!
//! # Example
//! ```
//! use chassis_core::control::ControlRegistry;
//! use chassis_core::resilience::circuit_breaker::CircuitBreakerConfig;
//! use chassis_core::resilience::policy::ResiliencePolicy;
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), chassis_core::BoxError> {
//! let layer = ResiliencePolicy::new()
//!     .circuit_breaker(CircuitBreakerConfig::new("inventory"))
//!     .build()?;
//! let control = ControlRegistry::new("orders");
//! control.register_policy(&layer);
//!
//! let state = control.act("breaker", "inventory", "force_open", &json!({})).await.unwrap()?;
//! assert_eq!(state["state"]["state"], "forced_open");
//! assert_eq!(layer.circuit_breaker().unwrap().state().as_str(), "forced_open");
//! # Ok(())
//! # }
//! ```

mod components;
mod sampler;

use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use crate::Error;
use crate::health::HealthRegistry;
use crate::resilience::bulkhead::BulkheadLayer;
use crate::resilience::circuit_breaker::CircuitBreakerHandle;
use crate::resilience::policy::ResilienceLayer;
use crate::resilience::rate_limiter::RateLimiterLayer;
use crate::resilience::retry::RetryBudget;

pub use self::sampler::Subscription;

/// Something an operator can see and steer through a [`ControlRegistry`].
///
/// The state is a JSON object of the component's own fields. A field `counters`, if present,
/// is an object of monotonic counts (e.g. `{"rejected": 12}`); the live feed turns each into a
/// per-second rate under `rates`.
pub trait Controllable: Send + Sync + 'static {
    /// What the component is, e.g. `"breaker"`, `"outbox"`: with its name it identifies the
    /// component, and the dashboard draws each kind its own way.
    fn kind(&self) -> &'static str;

    /// The actions [`act`](Self::act) accepts. Defaults to none.
    fn actions(&self) -> &'static [&'static str] {
        &[]
    }

    /// The component's state now. Cheap for in-process components; an outbox or a queue asks
    /// its database or broker.
    fn snapshot(&self) -> BoxFuture<'_, Value>;

    /// Carries out `action` with `params` (a JSON object, `{}` when none were given). Must be
    /// idempotent: doing it twice leaves the same state as once. An unknown action or bad
    /// parameters are [`ErrorKind::InvalidAction`](crate::ErrorKind::InvalidAction).
    fn act<'a>(&'a self, action: &'a str, params: &'a Value) -> BoxFuture<'a, Result<(), Error>>;
}

/// The error for an action the component does not know.
pub fn unknown_action(component: &str, action: &str, known: &[&str]) -> Error {
    invalid_action(
        component,
        format!("unknown action '{action}' (known: {})", known.join(", ")),
    )
}

/// The error for an action refused because of what was asked (nothing changed).
pub fn invalid_action(component: &str, reason: impl Into<String>) -> Error {
    Error::new(crate::ErrorKind::InvalidAction {
        component: component.to_owned(),
        reason: reason.into(),
    })
}

/// The error for a valid action that failed on the way (database, broker); `cause` is the
/// source.
pub fn action_failed(component: &str, cause: impl Into<crate::BoxError>) -> Error {
    Error::with_source(
        crate::ErrorKind::ActionFailed {
            component: component.to_owned(),
        },
        cause.into(),
    )
}

struct Entry {
    name: Arc<str>,
    component: Arc<dyn Controllable>,
}

struct Inner {
    service: String,
    entries: RwLock<Vec<Entry>>,
    interval: Mutex<Duration>,
    sampler: sampler::Shared,
}

/// The named components of one service; cheap to clone (shared). See the
/// [module docs](self).
#[derive(Clone)]
pub struct ControlRegistry {
    inner: Arc<Inner>,
}

impl fmt::Debug for ControlRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let entries = self.inner.entries.read().expect("control registry lock");
        f.debug_struct("ControlRegistry")
            .field("service", &self.inner.service)
            .field(
                "components",
                &entries
                    .iter()
                    .map(|e| format!("{}/{}", e.component.kind(), e.name))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ControlRegistry {
    /// An empty registry for the service `service` (the name the dashboard shows).
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                service: service.into(),
                entries: RwLock::new(Vec::new()),
                interval: Mutex::new(Duration::from_secs(1)),
                sampler: sampler::Shared::new(),
            }),
        }
    }

    /// How often the live feed samples the components. Defaults to 1 s; takes effect at the
    /// sampler's next start.
    pub fn sample_interval(self, interval: Duration) -> Self {
        *self.inner.interval.lock().expect("control registry lock") =
            interval.max(Duration::from_millis(10));
        self
    }

    /// The service's name.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// Registers `component` as `name`, replacing one of the same kind and name.
    pub fn register(&self, name: impl Into<String>, component: impl Controllable) -> &Self {
        self.register_arc(name, Arc::new(component))
    }

    /// [`register`](Self::register) for a component already shared.
    pub fn register_arc(&self, name: impl Into<String>, component: Arc<dyn Controllable>) -> &Self {
        let name: Arc<str> = name.into().into();
        let mut entries = self.inner.entries.write().expect("control registry lock");
        let kind = component.kind();
        entries.retain(|e| !(e.component.kind() == kind && e.name == name));
        entries.push(Entry { name, component });
        self
    }

    /// Registers a circuit breaker under its own name.
    pub fn register_breaker(&self, breaker: CircuitBreakerHandle) -> &Self {
        let name = breaker.name().to_owned();
        self.register(name, components::Breaker(breaker))
    }

    /// Registers a bulkhead under its own name.
    pub fn register_bulkhead(&self, bulkhead: BulkheadLayer) -> &Self {
        let name = bulkhead.name().to_owned();
        self.register(name, components::Bulkhead(bulkhead))
    }

    /// Registers a rate limiter under its own name.
    pub fn register_rate_limiter(&self, limiter: RateLimiterLayer) -> &Self {
        let name = limiter.name().to_owned();
        self.register(name, components::RateLimit(limiter))
    }

    /// Registers a retry budget as `name` (a budget has no name of its own: use the retry
    /// layer's).
    pub fn register_retry_budget(
        &self,
        name: impl Into<String>,
        budget: Arc<RetryBudget>,
    ) -> &Self {
        self.register(name, components::Budget(budget))
    }

    /// Registers every part of `layer` that has a state: its breaker, bulkhead, rate limiter
    /// and retry budget, each under its configured name.
    pub fn register_policy<RC, H, K, BC>(&self, layer: &ResilienceLayer<RC, H, K, BC>) -> &Self {
        if let Some(breaker) = layer.circuit_breaker() {
            self.register_breaker(breaker);
        }
        if let Some(bulkhead) = layer.bulkhead() {
            self.register_bulkhead(bulkhead.clone());
        }
        if let Some(limiter) = layer.rate_limit() {
            self.register_rate_limiter(limiter.clone());
        }
        if let Some(retry) = layer.retry()
            && let Some(budget) = retry.budget_handle()
        {
            self.register_retry_budget(retry.name().to_owned(), budget);
        }
        self
    }

    /// Registers the service's health checks, as `health`: readiness with each check's last
    /// result and latency (the registry's cached run, so the feed adds no check runs of its
    /// own beyond one per cache period).
    pub fn register_health(&self, health: HealthRegistry) -> &Self {
        self.register("health", components::Health(health))
    }

    fn entries(&self) -> Vec<(Arc<str>, Arc<dyn Controllable>)> {
        self.inner
            .entries
            .read()
            .expect("control registry lock")
            .iter()
            .map(|e| (e.name.clone(), e.component.clone()))
            .collect()
    }

    fn find(&self, kind: &str, name: &str) -> Option<(Arc<str>, Arc<dyn Controllable>)> {
        self.inner
            .entries
            .read()
            .expect("control registry lock")
            .iter()
            .find(|e| e.component.kind() == kind && &*e.name == name)
            .map(|e| (e.name.clone(), e.component.clone()))
    }

    async fn describe(name: &str, component: &dyn Controllable) -> Value {
        json!({
            "kind": component.kind(),
            "name": name,
            "actions": component.actions(),
            "state": component.snapshot().await,
        })
    }

    /// Every component's state: `{"service": .., "components": [{"kind", "name", "actions",
    /// "state"}, ..]}`, in registration order.
    pub async fn snapshot(&self) -> Value {
        let mut components = Vec::new();
        for (name, component) in self.entries() {
            components.push(Self::describe(&name, &*component).await);
        }
        json!({ "service": self.inner.service, "components": components })
    }

    /// One component's state (`{"kind", "name", "actions", "state"}`), or `None` when there is
    /// no such component.
    pub async fn component(&self, kind: &str, name: &str) -> Option<Value> {
        let (name, component) = self.find(kind, name)?;
        Some(Self::describe(&name, &*component).await)
    }

    /// Carries out `action` on the component `kind`/`name` and answers with its new state (as
    /// [`component`](Self::component)); `None` when there is no such component. Wakes the live
    /// feed, so subscribers see the change without waiting for the next sample.
    pub async fn act(
        &self,
        kind: &str,
        name: &str,
        action: &str,
        params: &Value,
    ) -> Option<Result<Value, Error>> {
        let (name, component) = self.find(kind, name)?;
        if let Err(e) = component.act(action, params).await {
            return Some(Err(e));
        }
        self.inner.sampler.wake();
        Some(Ok(Self::describe(&name, &*component).await))
    }

    /// The live feed: the latest frame at once (if the sampler is running), then one frame per
    /// sample. Each frame is the [`snapshot`](Self::snapshot) JSON with `"at"` (Unix
    /// milliseconds) and, for components with `counters`, per-second `rates`. Starts the
    /// sampler if it is not running; must be called within a tokio runtime.
    pub fn subscribe(&self) -> Subscription {
        sampler::subscribe(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::bulkhead::BulkheadConfig;
    use crate::resilience::circuit_breaker::{CircuitBreakerConfig, State};
    use crate::resilience::policy::ResiliencePolicy;
    use crate::resilience::rate_limiter::RateLimiterConfig;
    use crate::resilience::retry::RetryConfig;

    fn policy_layer() -> ResilienceLayer {
        ResiliencePolicy::new()
            .circuit_breaker(CircuitBreakerConfig::new("inventory"))
            .bulkhead(BulkheadConfig::new("inventory").max_concurrent(3))
            .rate_limit(RateLimiterConfig::new("inventory").rate(10))
            .retry(RetryConfig::new("inventory"))
            .build()
            .unwrap()
    }

    /// The state the registry shows of its `kind` component called "inventory".
    async fn inventory_state(control: &ControlRegistry, kind: &str) -> Value {
        control.component(kind, "inventory").await.unwrap()["state"].take()
    }

    #[tokio::test]
    async fn a_policy_registers_each_part_with_its_state() {
        let layer = policy_layer();
        let control = ControlRegistry::new("orders");
        control.register_policy(&layer);
        let all = control.snapshot().await;
        let kinds: Vec<&str> = all["components"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["breaker", "bulkhead", "rate_limiter", "retry_budget"]
        );
        let bulkhead = inventory_state(&control, "bulkhead").await;
        assert_eq!(bulkhead["capacity"], 3);
        assert_eq!(bulkhead["in_use"], 0);
        let limiter = inventory_state(&control, "rate_limiter").await;
        assert_eq!(limiter["capacity"], 10);
        assert_eq!(limiter["available"], 10);
        assert!(control.component("breaker", "payments").await.is_none());

        layer.rate_limit().unwrap().try_acquire().unwrap();
        layer.rate_limit().unwrap().try_acquire().unwrap();
        let limiter = inventory_state(&control, "rate_limiter").await;
        assert_eq!(limiter["available"], 8);
        assert_eq!(limiter["in_use"], 2);

        let budget = layer.retry().unwrap().budget_handle().unwrap();
        let before = inventory_state(&control, "retry_budget").await;
        assert!(tower::retry::budget::Budget::withdraw(&*budget));
        let after = inventory_state(&control, "retry_budget").await;
        assert_eq!(after["spent"], 1);
        assert_eq!(
            after["balance"].as_u64().unwrap() + 1,
            before["balance"].as_u64().unwrap()
        );
    }

    /// Asks the registry's breaker called "inventory" to do `action`.
    async fn act_on_breaker(control: &ControlRegistry, action: &str) -> Result<Value, Error> {
        control
            .act("breaker", "inventory", action, &json!({}))
            .await
            .expect("the breaker is registered")
    }

    #[tokio::test]
    async fn breaker_actions_are_idempotent_and_answer_the_new_state() {
        let layer = policy_layer();
        let breaker = layer.circuit_breaker().unwrap();
        let control = ControlRegistry::new("orders");
        control.register_policy(&layer);
        for _ in 0..2 {
            let state = act_on_breaker(&control, "force_open").await.unwrap();
            assert_eq!(state["state"]["state"], "forced_open");
            assert_eq!(breaker.state(), State::ForcedOpen);
        }
        let state = act_on_breaker(&control, "reset").await.unwrap();
        assert_eq!(state["state"]["state"], "closed");
        let err = act_on_breaker(&control, "explode").await.unwrap_err();
        assert!(matches!(err.kind(), crate::ErrorKind::InvalidAction { .. }));
        assert_eq!(breaker.state(), State::Closed);
    }

    #[test]
    fn registering_a_name_twice_replaces_the_first() {
        let control = ControlRegistry::new("orders");
        let first = CircuitBreakerHandle::new(CircuitBreakerConfig::new("a")).unwrap();
        let second = CircuitBreakerHandle::new(CircuitBreakerConfig::new("a")).unwrap();
        control.register_breaker(first).register_breaker(second);
        assert_eq!(control.entries().len(), 1);
    }
}
