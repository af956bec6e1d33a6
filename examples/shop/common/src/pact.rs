//! Provider states for the shop's contract tests (Pact): `POST /_pact/state`, mounted only
//! when the service runs with `SHOP_PACT_STATES=1`.
//!
//! A consumer's pact says what data an answer depends on ("product `tea` is in stock", "order
//! `o-pact-1` has a payment"). Before replaying such an interaction against the real service,
//! the Pact verifier posts `{"state": "...", "params": {...}, "action": "setup"}` here, and the
//! service puts that data into its own database through its own domain code. The JSON object
//! the setup answers is what the verifier substitutes into the request where the consumer's
//! pact asks for a value from the provider state.
//!
//! Without the variable the route does not exist (404), so a production service never lets a
//! caller write data this way; the route is outside the service-token layer because the
//! verifier carries no token for it. A state the service does not know is a `400`, so a pact
//! naming a state nobody set up fails its verification instead of passing on empty data.
//! Teardowns, and calls naming no state, are answered `200` and do nothing: every setup is
//! an idempotent upsert.
//!
//! # Example
//! ```
//! use serde_json::json;
//! use shop_common::pact::{self, StateChange};
//!
//! let states = pact::routes(|change: StateChange| async move {
//!     match change.state.as_str() {
//!         "the shop is open" => Ok(json!({})),
//!         _ => Err(change.unknown()),
//!     }
//! });
//! // Mounted beside the service's own routes: `router.merge(states)`.
//! let _: axum::Router = states;
//! ```

use std::future::Future;

use axum::Router;
use axum::extract::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chassis_core::BoxError;
use serde::Deserialize;
use serde_json::{Map, Value, json};

/// The variable that mounts the route: `1` or `true`.
pub const ENV: &str = "SHOP_PACT_STATES";

/// The route's path.
pub const PATH: &str = "/_pact/state";

/// Whether `SHOP_PACT_STATES` asks for the route.
pub fn enabled() -> bool {
    std::env::var(ENV).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// A state change the verifier asks for.
#[derive(Debug, Clone, Deserialize)]
pub struct StateChange {
    /// The state's name as the consumer wrote it.
    pub state: String,
    /// Its parameters.
    #[serde(default)]
    pub params: Map<String, Value>,
    /// `setup` or `teardown` (`setup` when absent).
    #[serde(default)]
    pub action: Option<String>,
}

impl StateChange {
    /// The string parameter `name`, or an error naming it.
    pub fn param(&self, name: &str) -> Result<&str, BoxError> {
        self.params
            .get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("state `{}` needs the parameter `{name}`", self.state).into())
    }

    /// The error for a state this service does not know.
    pub fn unknown(&self) -> BoxError {
        format!("unknown provider state `{}`", self.state).into()
    }
}

/// `POST /_pact/state` calling `setup` for each setup, when [`enabled`]; an empty router
/// otherwise. `setup` answers the values the verifier may inject into the request (a JSON
/// object), or an error, answered `400` with its message.
pub fn routes<F, Fut>(setup: F) -> Router
where
    F: Fn(StateChange) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Value, BoxError>> + Send + 'static,
{
    if !enabled() {
        return Router::new();
    }
    tracing::warn!(
        path = PATH,
        "provider states for contract tests are enabled ({ENV}): callers can write data"
    );
    Router::new().route(
        PATH,
        post(move |Json(change): Json<StateChange>| async move {
            // The verifier also calls with no state, for interactions that need none.
            if change.action.as_deref() == Some("teardown") || change.state.is_empty() {
                return Json(json!({})).into_response();
            }
            let state = change.state.clone();
            match setup(change).await {
                Ok(values) => Json(values).into_response(),
                Err(e) => {
                    tracing::warn!(state, error = %e, "provider state not set up");
                    answer_error(&e)
                }
            }
        }),
    )
}

fn answer_error(e: &BoxError) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {"code": "bad_request", "message": e.to_string()}})),
    )
        .into_response()
}
