//! The payment provider client: the chassis resilient [`HttpClient`] (per-attempt timeout, retry
//! with backoff and an overall deadline, circuit breaker, client spans and metrics, trace
//! propagation) with the provider's API on top.
//!
//! A charge is a POST, which the client retries only because it carries an `Idempotency-Key`
//! (`charge-<order id>`): the provider applies a key once and replays its first answer, so a
//! retried charge never charges twice. A refund carries [`AllowRetry`]: the provider documents
//! refunds as idempotent. Retried and counted as breaker failures: transport errors, timeouts and
//! `5xx`; a `503` with `Retry-After` (an outage) waits that long first, up to 2 s. A decline
//! (`402`) and other `4xx` are answers, not failures. A `409` means the first request with the
//! same key is still running at the provider (an earlier attempt timed out here): the charge asks
//! again with the same key until the provider has the answer. An open breaker fails the call at
//! once with [`ClientErrorKind::CircuitOpen`].
//!
//! The breaker's state is exported by the chassis as the `circuit_breaker_state{name="payment-provider"}`
//! gauge at `/metrics` (0 closed, 1 open, 2 half-open), every attempt as a sample of the
//! `http_client_request_duration_seconds` histogram (with `server_address`/`server_port` of the
//! provider and the status or `error_type`).
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

use std::time::{Duration, Instant};

use chassis_core::BoxError;
use chassis_core::resilience::circuit_breaker::CircuitBreakerHandle;
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_http::client::{
    AllowRetry, ClientBody, ClientError, ClientErrorKind, HttpClient, IDEMPOTENCY_KEY,
};
use http::StatusCode;
use serde_json::{Value, json};

/// How long a charge keeps asking while the provider answers `409` (same key still running).
const IN_PROGRESS_PATIENCE: Duration = Duration::from_secs(10);
/// The pause between two such questions.
const IN_PROGRESS_POLL: Duration = Duration::from_millis(100);

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

/// The resilient provider client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ProviderClient {
    http: HttpClient,
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
        let http = shop_common::tls::client_builder("payment-provider")?
            .base_url(base_url.trim_end_matches('/'))
            .policy(policy.clone())
            .max_retry_after(Duration::from_secs(2))
            .connect_timeout(Duration::from_secs(2))
            .build()?;
        Ok(Self { http })
    }

    /// The breaker's handle (state, force open/closed).
    pub fn breaker(&self) -> Option<&CircuitBreakerHandle> {
        self.http.circuit_breaker()
    }

    /// Charges `amount_cents` with `idempotency_key`.
    pub async fn charge(
        &self,
        idempotency_key: &str,
        amount_cents: i64,
        payment_method: &str,
        reference: &str,
    ) -> Result<ProviderReply, ClientError> {
        let body = json!({"amount_cents": amount_cents, "currency": "EUR", "payment_method": payment_method, "reference": reference});
        let started = Instant::now();
        loop {
            let req = request("/v1/charges")
                .header(IDEMPOTENCY_KEY, idempotency_key)
                .body(ClientBody::from(body.to_string()))
                .expect("a valid request");
            match self.http.execute(req).await {
                Err(e)
                    if e.status() == Some(StatusCode::CONFLICT)
                        && started.elapsed() < IN_PROGRESS_PATIENCE =>
                {
                    tracing::debug!(
                        idempotency_key,
                        "charge with this key still running at the provider"
                    );
                    tokio::time::sleep(IN_PROGRESS_POLL).await;
                }
                // Still running after all this time: we do not know the outcome, so it is not a
                // refusal; the caller treats it as the provider being unavailable.
                Err(e) if e.status() == Some(StatusCode::CONFLICT) => return Err(e),
                outcome => return reply(outcome),
            }
        }
    }

    /// Refunds `charge_id` (idempotent at the provider).
    pub async fn refund(&self, charge_id: &str) -> Result<ProviderReply, ClientError> {
        let body = json!({});
        let mut req = request(&format!("/v1/charges/{charge_id}/refund"))
            .body(ClientBody::from(body.to_string()))
            .expect("a valid request");
        req.extensions_mut().insert(AllowRetry);
        reply(self.http.execute(req).await)
    }
}

fn request(path: &str) -> http::request::Builder {
    http::Request::post(path)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
}

/// Reads the provider's answer: 2xx is a charge or refund, 4xx a refusal with the provider's
/// error code; everything else stays an error.
fn reply(
    outcome: Result<http::Response<axum::body::Bytes>, ClientError>,
) -> Result<ProviderReply, ClientError> {
    match outcome {
        Ok(resp) => {
            let body: Value = serde_json::from_slice(resp.body()).unwrap_or(Value::Null);
            Ok(if body["status"] == "refunded" {
                ProviderReply::Refunded
            } else {
                ProviderReply::Charged {
                    charge_id: body["id"].as_str().unwrap_or_default().to_owned(),
                }
            })
        }
        Err(e) => match e.kind() {
            ClientErrorKind::Status4xx { body, .. } => {
                let body: Value = serde_json::from_str(body).unwrap_or(Value::Null);
                Ok(ProviderReply::Declined {
                    reason: body["error"]["code"]
                        .as_str()
                        .unwrap_or("provider_rejected")
                        .to_owned(),
                })
            }
            _ => Err(e),
        },
    }
}
