//! [`Controllable`] for the core's own parts: breakers, bulkheads, rate limiters, retry
//! budgets and the health checks. Each reads what the part keeps anyway (atomics, the
//! breaker's window, the health registry's cached run).

use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use super::{Controllable, unknown_action};
use crate::Error;
use crate::health::HealthRegistry;
use crate::resilience::bulkhead::BulkheadLayer;
use crate::resilience::circuit_breaker::CircuitBreakerHandle;
use crate::resilience::rate_limiter::RateLimiterLayer;
use crate::resilience::retry::RetryBudget;

/// No action: the component is read-only.
fn read_only<'a>(component: &str, action: &str) -> BoxFuture<'a, Result<(), Error>> {
    let err = unknown_action(component, action, &[]);
    Box::pin(async move { Err(err) })
}

pub(super) struct Breaker(pub(super) CircuitBreakerHandle);

const BREAKER_ACTIONS: &[&str] = &["force_open", "force_closed", "reset"];

impl Controllable for Breaker {
    fn kind(&self) -> &'static str {
        "breaker"
    }

    fn actions(&self) -> &'static [&'static str] {
        BREAKER_ACTIONS
    }

    fn snapshot(&self) -> BoxFuture<'_, Value> {
        let s = self.0.snapshot();
        Box::pin(async move {
            json!({
                "state": s.state.as_str(),
                "failure_rate": s.failure_rate,
                "slow_call_rate": s.slow_call_rate,
                "calls_in_window": s.buffered_calls,
                "failed_calls": s.failed_calls,
                "slow_calls": s.slow_calls,
                "counters": { "not_permitted": s.not_permitted_calls },
            })
        })
    }

    fn act<'a>(&'a self, action: &'a str, _params: &'a Value) -> BoxFuture<'a, Result<(), Error>> {
        // The breaker's own transitions are no-ops when already in the asked state, so each
        // action is idempotent as it stands.
        let result = match action {
            "force_open" => {
                self.0.force_open();
                Ok(())
            }
            "force_closed" => {
                self.0.force_closed();
                Ok(())
            }
            "reset" => {
                self.0.reset();
                Ok(())
            }
            _ => Err(unknown_action(self.0.name(), action, BREAKER_ACTIONS)),
        };
        if result.is_ok() {
            tracing::warn!(
                target: "chassis_core::control",
                breaker = %self.0.name(),
                action,
                "circuit breaker changed by an operator"
            );
        }
        Box::pin(async move { result })
    }
}

pub(super) struct Bulkhead(pub(super) BulkheadLayer);

impl Controllable for Bulkhead {
    fn kind(&self) -> &'static str {
        "bulkhead"
    }

    fn snapshot(&self) -> BoxFuture<'_, Value> {
        let capacity = self.0.max_concurrent();
        let in_use = capacity.saturating_sub(self.0.available_permits());
        let rejected = self.0.rejected_calls();
        Box::pin(async move {
            json!({
                "in_use": in_use,
                "capacity": capacity,
                "counters": { "rejected": rejected },
            })
        })
    }

    fn act<'a>(&'a self, action: &'a str, _params: &'a Value) -> BoxFuture<'a, Result<(), Error>> {
        read_only(self.0.name(), action)
    }
}

pub(super) struct RateLimit(pub(super) RateLimiterLayer);

impl Controllable for RateLimit {
    fn kind(&self) -> &'static str {
        "rate_limiter"
    }

    fn snapshot(&self) -> BoxFuture<'_, Value> {
        let capacity = self.0.burst();
        let available = self.0.available_permits();
        let rejected = self.0.rejected_calls();
        Box::pin(async move {
            json!({
                "in_use": capacity - available,
                "available": available,
                "capacity": capacity,
                "counters": { "rejected": rejected },
            })
        })
    }

    fn act<'a>(&'a self, action: &'a str, _params: &'a Value) -> BoxFuture<'a, Result<(), Error>> {
        read_only(self.0.name(), action)
    }
}

pub(super) struct Budget(pub(super) Arc<RetryBudget>);

impl Controllable for Budget {
    fn kind(&self) -> &'static str {
        "retry_budget"
    }

    fn snapshot(&self) -> BoxFuture<'_, Value> {
        let balance = self.0.available_retries();
        let spent = self.0.spent_retries();
        Box::pin(async move { json!({ "balance": balance, "spent": spent }) })
    }

    fn act<'a>(&'a self, action: &'a str, _params: &'a Value) -> BoxFuture<'a, Result<(), Error>> {
        read_only("retry budget", action)
    }
}

pub(super) struct Health(pub(super) HealthRegistry);

impl Controllable for Health {
    fn kind(&self) -> &'static str {
        "health"
    }

    fn snapshot(&self) -> BoxFuture<'_, Value> {
        Box::pin(async move {
            let report = self.0.readiness().await;
            serde_json::to_value(&report).unwrap_or(Value::Null)
        })
    }

    fn act<'a>(&'a self, action: &'a str, _params: &'a Value) -> BoxFuture<'a, Result<(), Error>> {
        read_only("health", action)
    }
}
