//! Provider states for the shop's contract tests: `POST /_pact/state`, routed by [`app`] only
//! when the process runs with `SHOP_PACT_STATES=1` (the shop services' `shop_common::pact`
//! does the same; the stand-in does not depend on the shop's crates).
//!
//! The Pact verifier posts `{"state", "params", "action"}` before replaying an interaction
//! that depends on data. Known states:
//!
//! - `charge exists` (`charge_id`): a succeeded charge with that id, not refunded.
//!
//! An unknown state is a `400`; teardowns, and calls naming no state, do nothing.
//!
//! [`app`]: crate::app

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::{Charge, LedgerRecord, ProviderState};

/// The variable that routes the provider states: `1` or `true`.
const ENV: &str = "SHOP_PACT_STATES";

/// Whether `SHOP_PACT_STATES` asks for the provider-state route.
pub(crate) fn enabled() -> bool {
    std::env::var(ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

#[derive(Debug, Deserialize)]
struct StateChange {
    state: String,
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default)]
    action: Option<String>,
}

/// The route, to merge into the provider's router.
pub(crate) fn routes() -> Router<ProviderState> {
    tracing::warn!(
        "provider states for contract tests are enabled ({ENV}): callers can write data"
    );
    Router::new().route("/_pact/state", post(change_state))
}

async fn change_state(
    State(state): State<ProviderState>,
    Json(change): Json<StateChange>,
) -> Response {
    // The verifier also calls with no state, for interactions that need none.
    if change.action.as_deref() == Some("teardown") || change.state.is_empty() {
        return Json(json!({})).into_response();
    }
    match change.state.as_str() {
        "charge exists" => {
            let Some(id) = change.params.get("charge_id").and_then(Value::as_str) else {
                return refuse("state `charge exists` needs the parameter `charge_id`".into());
            };
            let mut store = state.inner.store.lock().expect("store lock");
            let charge = Charge {
                id: id.to_owned(),
                status: "succeeded".into(),
                amount_cents: 1200,
                currency: "EUR".into(),
                reference: format!("pact-{id}"),
                refund_id: None,
            };
            let record = LedgerRecord::Answer {
                key: format!("pact-state-{id}"),
                fingerprint: String::new(),
                status: StatusCode::CREATED.as_u16(),
                body: serde_json::to_value(&charge).expect("serialisable charge"),
                charge: Some(charge),
            };
            match store.record(record) {
                Ok(()) => Json(json!({"charge_id": id})).into_response(),
                Err(e) => refuse(format!("the ledger could not be written: {e}")),
            }
        }
        other => refuse(format!("unknown provider state `{other}`")),
    }
}

fn refuse(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {"code": "bad_request", "message": message}})),
    )
        .into_response()
}
