//! The outbox as a [`Controllable`] of the control registry: its backlog (pending rows, the
//! oldest one's age, parked rows with their errors) and the `requeue` action.
//!
//! `requeue` with `{"id": <row id>}` puts that parked row back to pending; without an id, every
//! parked row. Both are idempotent: a row already requeued is not parked any more, so a second
//! call finds nothing to do and answers the same state. Each requeue is logged at WARN on
//! target `chassis_messaging::control`.
//!
//! ```no_run
//! # #[cfg(feature = "sqlite")]
//! # async fn example(outbox: chassis_messaging::sql::outbox::SqliteOutbox) {
//! use chassis_core::control::ControlRegistry;
//!
//! let control = ControlRegistry::new("orders");
//! control.register("orders", outbox);
//! # }
//! ```

use chassis_core::Error;
use chassis_core::control::{Controllable, action_failed, invalid_action, unknown_action};
use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use super::database::{Outbox, OutboxDatabase};
use super::store::OutboxStore;
use crate::sql::schema::now_ms;

/// Parked rows listed in the state (the oldest first): enough to act on, bounded for the feed.
const PARKED_LISTED: i64 = 20;

const ACTIONS: &[&str] = &["requeue"];

impl<DB: OutboxDatabase> Controllable for Outbox<DB> {
    fn kind(&self) -> &'static str {
        "outbox"
    }

    fn actions(&self) -> &'static [&'static str] {
        ACTIONS
    }

    fn snapshot(&self) -> BoxFuture<'_, Value> {
        Box::pin(async move {
            let stats = match OutboxStore::stats(self).await {
                Ok(stats) => stats,
                Err(e) => return json!({ "error": e.to_string() }),
            };
            let parked_rows = match self.parked(PARKED_LISTED).await {
                Ok(rows) => rows
                    .into_iter()
                    .map(|row| {
                        json!({
                            "id": row.id,
                            "message_id": row.message_id,
                            "subject": row.subject,
                            "attempts": row.attempts,
                            "last_error": row.last_error,
                        })
                    })
                    .collect(),
                Err(_) => Vec::new(),
            };
            let oldest_age_secs = stats
                .oldest_pending_ms
                .map(|at| (now_ms() - at).max(0) as f64 / 1000.0);
            json!({
                "pending": stats.pending,
                "oldest_age_secs": oldest_age_secs,
                "parked": stats.parked,
                "parked_rows": parked_rows,
            })
        })
    }

    fn act<'a>(&'a self, action: &'a str, params: &'a Value) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if action != "requeue" {
                return Err(unknown_action("outbox", action, ACTIONS));
            }
            match params.get("id") {
                None | Some(Value::Null) => {
                    let n = self
                        .requeue_parked()
                        .await
                        .map_err(|e| action_failed("outbox", e))?;
                    tracing::warn!(target: "chassis_messaging::control", requeued = n, "parked outbox rows requeued");
                }
                Some(id) => {
                    let id = id
                        .as_i64()
                        .or_else(|| id.as_str().and_then(|s| s.parse().ok()))
                        .ok_or_else(|| invalid_action("outbox", "id must be a row id (integer)"))?;
                    let requeued = self
                        .requeue_parked_row(id)
                        .await
                        .map_err(|e| action_failed("outbox", e))?;
                    tracing::warn!(target: "chassis_messaging::control", id, requeued, "parked outbox row requeued");
                }
            }
            Ok(())
        })
    }
}
