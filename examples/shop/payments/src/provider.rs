//! The payment provider client: HTTP calls wrapped in the chassis [`ResiliencePolicy`]
//! (per-attempt timeout, retry with backoff and an overall deadline, circuit breaker).
//!
//! The request is a cloneable [`ProviderCall`], so every retry resends the same call with the same
//! `Idempotency-Key` (a POST is safe to retry only because of that key). What counts as failure
//! for retry and breaker: transport errors, timeouts, `5xx`, `409` (the provider is still
//! processing the same key) and `429`. A decline (`402`) and other `4xx` are answers, not
//! failures. An open breaker fails the call at once with `CircuitOpen`.
//!
//! The breaker's state is exported by the chassis as the `circuit_breaker_state{name="payment-provider"}`
//! gauge at `/metrics` (0 closed, 1 open, 2 half-open).
//!
//! # Example
//! ```no_run
//! # async fn run() -> Result<(), chassis_core::BoxError> {
//! use shop_payments::provider::{ProviderClient, ProviderReply};
//!
//! let client = ProviderClient::new("http://127.0.0.1:8090", &ProviderClient::default_policy())?;
//! match client.charge("charge-o-1", 1200, "card_ok", "o-1").await? {
//!     ProviderReply::Charged { charge_id } => println!("charged {charge_id}"),
//!     other => println!("not charged: {other:?}"),
//! }
//! # Ok(()) }
//! ```

use chassis_core::BoxError;
use chassis_core::resilience::circuit_breaker::CircuitBreakerHandle;
use chassis_core::resilience::policy::ResiliencePolicy;
use serde_json::{Value, json};
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt, service_fn};

/// One call to the provider (cloned for each attempt).
#[derive(Debug, Clone)]
pub struct ProviderCall {
    /// Path below the base URL, e.g. `/v1/charges`.
    pub path: String,
    /// JSON body.
    pub body: Value,
    /// The `Idempotency-Key` header, if any.
    pub idempotency_key: Option<String>,
}

/// What the provider answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderReply {
    /// The charge exists (new or replayed).
    Charged {
        /// Provider charge id.
        charge_id: String,
    },
    /// Refunded (or already refunded).
    Refunded,
    /// A final refusal: `card_declined` or another provider error code.
    Declined {
        /// The provider's error code.
        reason: String,
    },
}

/// A retryable provider failure (feeds retry and breaker).
#[derive(Debug, thiserror::Error)]
#[error("payment provider answered {status}")]
pub struct ProviderStatusError {
    /// The HTTP status.
    pub status: u16,
}

/// The resilient provider client. Cheap to clone.
#[derive(Clone)]
pub struct ProviderClient {
    svc: BoxCloneSyncService<ProviderCall, ProviderReply, BoxError>,
    breaker: Option<CircuitBreakerHandle>,
}

impl std::fmt::Debug for ProviderClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderClient")
            .field("breaker", &self.breaker.as_ref().map(|b| b.state()))
            .finish()
    }
}

impl ProviderClient {
    /// The default policy: 2 s per attempt, 3 attempts within 5 s (50 ms..500 ms backoff), a
    /// breaker opening at 50% failures over the last 20 calls (at least 10) for 5 s.
    pub fn default_policy() -> ResiliencePolicy {
        serde_json::from_value(json!({
            "name": "payment-provider",
            "timeout": "2s",
            "retry": {"max_attempts": 3, "deadline": "5s", "backoff": {"base": "50ms", "max": "500ms", "jitter": "full"}},
            "circuit_breaker": {
                "failure_rate_threshold": 50.0,
                "sliding_window_size": 20,
                "minimum_number_of_calls": 10,
                "wait_duration_in_open_state": "5s",
                "permitted_number_of_calls_in_half_open_state": 3
            }
        }))
        .expect("the default policy is valid")
    }

    /// A client for the provider at `base_url` with `policy`.
    pub fn new(base_url: &str, policy: &ResiliencePolicy) -> Result<Self, BoxError> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(32)
            .build()?;
        let base = base_url.trim_end_matches('/').to_owned();
        let inner = service_fn(move |call: ProviderCall| {
            let http = http.clone();
            let url = format!("{base}{}", call.path);
            async move {
                let mut headers = http::HeaderMap::new();
                chassis_observability::propagation::inject_current(
                    &mut chassis_observability::propagation::HeaderInjector(&mut headers),
                );
                let mut req = http.post(url).headers(headers).json(&call.body);
                if let Some(key) = &call.idempotency_key {
                    req = req.header("idempotency-key", key);
                }
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                if status >= 500 || status == 409 || status == 429 {
                    return Err(BoxError::from(ProviderStatusError { status }));
                }
                let body: Value = resp.json().await.unwrap_or(Value::Null);
                Ok::<_, BoxError>(match status {
                    200 | 201 if body["status"] == "refunded" => ProviderReply::Refunded,
                    200 | 201 => ProviderReply::Charged {
                        charge_id: body["id"].as_str().unwrap_or_default().to_owned(),
                    },
                    _ => ProviderReply::Declined {
                        reason: body["error"]["code"]
                            .as_str()
                            .unwrap_or("provider_rejected")
                            .to_owned(),
                    },
                })
            }
        });
        let layer = policy.build()?;
        let breaker = layer.circuit_breaker();
        Ok(Self {
            svc: BoxCloneSyncService::new(layer.layer(inner)),
            breaker,
        })
    }

    /// The breaker's handle (state, force open/closed).
    pub fn breaker(&self) -> Option<&CircuitBreakerHandle> {
        self.breaker.as_ref()
    }

    /// Charges `amount_cents` with `idempotency_key`.
    pub async fn charge(
        &self,
        idempotency_key: &str,
        amount_cents: i64,
        payment_method: &str,
        reference: &str,
    ) -> Result<ProviderReply, BoxError> {
        let call = ProviderCall {
            path: "/v1/charges".into(),
            body: json!({"amount_cents": amount_cents, "currency": "EUR", "payment_method": payment_method, "reference": reference}),
            idempotency_key: Some(idempotency_key.to_owned()),
        };
        self.svc.clone().oneshot(call).await
    }

    /// Refunds `charge_id` (idempotent at the provider).
    pub async fn refund(&self, charge_id: &str) -> Result<ProviderReply, BoxError> {
        let call = ProviderCall {
            path: format!("/v1/charges/{charge_id}/refund"),
            body: json!({}),
            idempotency_key: None,
        };
        self.svc.clone().oneshot(call).await
    }
}
