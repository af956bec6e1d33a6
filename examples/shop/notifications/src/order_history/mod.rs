//! The order-history read model (CQRS): one row per order with its status and the history of
//! its events, per customer, built only from the events notifications consumes, in tables of
//! its own, separate from the write models that produced the events (orders, inventory,
//! payments) and from notifications' own table.
//!
//! - Live: the queue `notifications.order-history`, bound on `shop.events` to every key of
//!   [`EVENT_KINDS`](projection::EVENT_KINDS), consumed through the chassis inbox (inbox
//!   `notifications.order-history`): [`project`] applies each event in the inbox's
//!   transaction, so a redelivered message is absorbed by the inbox, and an event applied
//!   twice anyway by the event-id key of the history table.
//! - Query: [`projection::for_customer`], served at `GET /api/v1/customers/{customer}/orders`
//!   (`?limit=`, default 20, at most 100), newest first.
//! - Rebuild: the stream queue `notifications.order-history.stream`, bound to the same keys,
//!   keeps the events for a size and age limit; [`stream::replay`] empties the tables and
//!   applies the stream from its first offset through the same [`projection::apply`]. It is
//!   the `rebuild` action of the control component `projection/order-history`
//!   ([`OrderHistory`]), on the admin listener:
//!   `POST /admin/control/projection/order-history/rebuild`.
//! - Lag: [`LAG_SECONDS`], the gauge `shop_order_history_lag_seconds` (now minus the time of
//!   the event the live consumer just applied), and [`APPLIED`], the counter of events that
//!   changed the read model, by `source` (`live`, `replay`).
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), chassis_core::BoxError> {
//! use chassis_messaging::{Envelope, IncomingMessage};
//! use shop_common::db::Db;
//! use shop_common::events::{Item, OrderPlaced, ORDER_PLACED};
//! use shop_notifications::order_history::projection;
//!
//! let db = Db::open("sqlite::memory:")?;
//! db.execute_script(projection::SCHEMA).await?;
//! let placed = OrderPlaced {
//!     order_id: "o-1".into(),
//!     customer_id: "c-1".into(),
//!     items: vec![Item { sku: "tea".into(), quantity: 2 }],
//!     payment_method: "card_ok".into(),
//! };
//! let msg = Envelope::new("/shop/orders", ORDER_PLACED, &placed).to_message("shop.events")?;
//! let event = projection::event_of(&IncomingMessage::from_outgoing(msg)).unwrap().unwrap();
//! let mut txn = db.begin().await?;
//! assert!(projection::apply(&mut txn.tx(), &event).await?);
//! assert!(!projection::apply(&mut txn.tx(), &event).await?, "a second time changes nothing");
//! txn.commit().await?;
//! let orders = projection::for_customer(&db, "c-1", 10).await?;
//! assert_eq!((orders[0].status.as_str(), orders[0].items), ("PLACED", Some(2)));
//! # Ok(()) }
//! ```

pub mod projection;
pub mod stream;

use std::sync::Arc;

use chassis_core::control::{Controllable, action_failed, invalid_action, unknown_action};
use chassis_messaging::{Connection, IncomingMessage, Outcome};
use futures_util::future::BoxFuture;
use serde_json::{Value, json};
use shop_common::db::{Db, Tx, now_ms};
use shop_common::events::{Emit, retry};
use tokio::sync::Mutex;

use self::stream::{Replayed, StreamConfig};

/// Gauge (seconds): now minus the time (the envelope's `time`) of the event the live consumer
/// just applied; how far the read model trails the write side. It keeps its last value while
/// no event comes.
pub const LAG_SECONDS: &str = "shop_order_history_lag_seconds";
/// Counter, label `source` (`live`, `replay`): events that changed the read model.
pub const APPLIED: &str = "shop_order_history_applied_total";

/// Describes the two metrics (their `# HELP` and unit) and registers their series at zero.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        LAG_SECONDS,
        metrics::Unit::Seconds,
        "Now minus the time of the event the order-history projection just applied."
    );
    metrics::describe_counter!(
        APPLIED,
        metrics::Unit::Count,
        "Events that changed the order-history read model, by source (live, replay)."
    );
    metrics::gauge!(LAG_SECONDS).set(0.0);
    for source in ["live", "replay"] {
        metrics::counter!(APPLIED, "source" => source).absolute(0);
    }
}

/// The live consumer's handler: applies the event in the inbox transaction `tx` and records
/// [`LAG_SECONDS`]. A type the projection does not read is acknowledged; an undecodable one
/// dead-lettered; a database error retried.
pub async fn project(msg: IncomingMessage, mut tx: Tx<'_>) -> Result<Vec<Emit>, Outcome> {
    let Some(event) = projection::event_of(&msg)? else {
        return Ok(Vec::new());
    };
    if projection::apply(&mut tx, &event).await.map_err(retry)? {
        metrics::counter!(APPLIED, "source" => "live").increment(1);
    }
    let lag_ms = (now_ms() - event.time_ms).max(0);
    metrics::gauge!(LAG_SECONDS).set(lag_ms as f64 / 1000.0);
    Ok(Vec::new())
}

/// The read model as a control component (kind `projection`): its state (orders, events, the
/// latest event's time, the last rebuild) and the action `rebuild` ([`stream::replay`]). One
/// rebuild runs at a time; a second one asked meanwhile is refused.
#[derive(Debug, Clone)]
pub struct OrderHistory {
    db: Db,
    conn: Connection,
    stream: StreamConfig,
    last: Arc<Mutex<Option<Replayed>>>,
}

impl OrderHistory {
    /// The read model in `db`, rebuilt from `stream` on `conn`.
    pub fn new(db: Db, conn: Connection, stream: StreamConfig) -> Self {
        Self {
            db,
            conn,
            stream,
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// Rebuilds the read model from the stream ([`stream::replay`]).
    ///
    /// # Errors
    /// Another rebuild is running, or the replay failed.
    pub async fn rebuild(&self) -> Result<Replayed, chassis_core::BoxError> {
        let mut last = self
            .last
            .try_lock()
            .map_err(|_| "a rebuild of the order history is already running")?;
        tracing::info!(stream = %self.stream.name, "rebuilding the order history");
        let done = stream::replay(&self.db, &self.conn, &self.stream).await?;
        tracing::info!(
            read = done.read,
            applied = done.applied,
            duplicates = done.duplicates,
            skipped = done.skipped,
            took_ms = done.took_ms,
            "order history rebuilt"
        );
        *last = Some(done.clone());
        Ok(done)
    }
}

impl Controllable for OrderHistory {
    fn kind(&self) -> &'static str {
        "projection"
    }

    fn actions(&self) -> &'static [&'static str] {
        &["rebuild"]
    }

    fn snapshot(&self) -> BoxFuture<'_, Value> {
        Box::pin(async move {
            let (orders, events) = projection::counts(&self.db).await.unwrap_or((-1, -1));
            let last = match self.last.try_lock() {
                Ok(last) => json!({"rebuilding": false, "last_rebuild": *last}),
                Err(_) => json!({"rebuilding": true}),
            };
            json!({
                "stream": self.stream.name,
                "orders": orders,
                "events": events,
                "rebuilding": last["rebuilding"],
                "last_rebuild": last.get("last_rebuild").cloned().unwrap_or(Value::Null),
            })
        })
    }

    fn act<'a>(
        &'a self,
        action: &'a str,
        _params: &'a Value,
    ) -> BoxFuture<'a, Result<(), chassis_core::Error>> {
        Box::pin(async move {
            if action != "rebuild" {
                return Err(unknown_action("order-history", action, self.actions()));
            }
            if self.last.try_lock().is_err() {
                return Err(invalid_action(
                    "order-history",
                    "a rebuild is already running",
                ));
            }
            self.rebuild()
                .await
                .map(|_| ())
                .map_err(|e| action_failed("order-history", e))
        })
    }
}
