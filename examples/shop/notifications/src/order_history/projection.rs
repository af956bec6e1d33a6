//! The projection itself: its tables, what each event does to them, and the per-customer query.
//!
//! Every event becomes one row of `order_history_events` (keyed by the event id, so an event
//! applied twice changes nothing) and folds into its order's row of `order_history`. The fold
//! does not depend on the order in which events arrive (a retried `order.placed` may come after
//! `inventory.reserved`): the status is that of the event with the highest rank (`PLACED` <
//! `RESERVED` < `REJECTED` < `PAID` / `PAYMENT_FAILED` < `CONFIRMED` / `FAILED`, ties to the
//! later event), the customer, item count and amount come from the one event that carries
//! them, and the first and last times are a minimum and a maximum. Any arrival order, and any
//! repetition, of the same set of events gives the same rows: that is what lets a rebuild from
//! the stream ([`super::stream`]) run while live events keep coming, and end with the rows the
//! live projection has.

use chassis_messaging::{IncomingMessage, Outcome, Versioned};
use serde::{Deserialize, Serialize};
use shop_common::db::{Db, Tx};
use shop_common::events::{
    INVENTORY_REJECTED, INVENTORY_RELEASED, INVENTORY_RESERVED, InventoryRejected,
    InventoryReleased, InventoryReserved, ORDER_CONFIRMED, ORDER_FAILED, ORDER_PLACED,
    OrderFinished, OrderPlaced, PAYMENT_FAILED, PAYMENT_REFUNDED, PAYMENT_SUCCEEDED, PaymentFailed,
    PaymentRefunded, PaymentSucceeded, Validate,
};

/// The projection's tables (portable SQL), apart from the notifications table: the read
/// model can be dropped and rebuilt without touching what the service itself recorded.
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS order_history (
    order_id TEXT PRIMARY KEY,
    customer_id TEXT,
    status TEXT NOT NULL,
    status_rank BIGINT NOT NULL,
    status_ms BIGINT NOT NULL,
    reason TEXT,
    items BIGINT,
    amount_cents BIGINT,
    first_ms BIGINT NOT NULL,
    last_ms BIGINT NOT NULL,
    events BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS order_history_by_customer ON order_history (customer_id, first_ms);
CREATE TABLE IF NOT EXISTS order_history_events (
    event_id TEXT PRIMARY KEY,
    order_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    event_ms BIGINT NOT NULL,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS order_history_events_by_order ON order_history_events (order_id, event_ms)";

/// The routing keys the projection reads, all on `shop.events`.
pub const EVENT_KINDS: &[&str] = &[
    ORDER_PLACED,
    INVENTORY_RESERVED,
    INVENTORY_REJECTED,
    INVENTORY_RELEASED,
    PAYMENT_SUCCEEDED,
    PAYMENT_FAILED,
    PAYMENT_REFUNDED,
    ORDER_CONFIRMED,
    ORDER_FAILED,
];

/// One event as the projection sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEvent {
    /// The envelope id (the AMQP `message_id`).
    pub id: String,
    /// The type (routing key), e.g. `order.placed`.
    pub kind: String,
    /// The envelope's `time`, ms since the Unix epoch.
    pub time_ms: i64,
    /// The order.
    pub order_id: String,
    /// The customer, on the events that carry it (`order.placed`, `order.confirmed`,
    /// `order.failed`).
    pub customer_id: Option<String>,
    /// The status this event moves the order to, with its rank; `None` for events that only
    /// go into the history (`inventory.released`, `payment.refunded`).
    pub status: Option<(&'static str, i64)>,
    /// A failure reason, SKU or charge id: what the history line shows besides the type.
    pub detail: Option<String>,
    /// Units ordered (`order.placed`).
    pub items: Option<i64>,
    /// The order's price in cents (`inventory.reserved`).
    pub amount_cents: Option<i64>,
}

/// Reads `msg` as a [`HistoryEvent`]: `Ok(None)` for a type the projection does not read (it
/// is acknowledged and skipped); a message that cannot be decoded, of a version its payload
/// type does not read, or with a field outside its limit is `Err(reject)`, as in every shop
/// consumer.
pub fn event_of(msg: &IncomingMessage) -> Result<Option<HistoryEvent>, Outcome> {
    let kind = msg.routing_key();
    let event = match kind {
        ORDER_PLACED => read(msg, |e: OrderPlaced| Fold {
            order_id: e.order_id,
            customer_id: Some(e.customer_id),
            status: Some(("PLACED", 1)),
            items: Some(e.items.iter().map(|i| i.quantity).sum()),
            ..Fold::default()
        }),
        INVENTORY_RESERVED => read(msg, |e: InventoryReserved| Fold {
            order_id: e.order_id,
            status: Some(("RESERVED", 2)),
            amount_cents: Some(e.amount_cents),
            ..Fold::default()
        }),
        INVENTORY_REJECTED => read(msg, |e: InventoryRejected| Fold {
            order_id: e.order_id,
            status: Some(("REJECTED", 3)),
            detail: Some(format!("{} ({})", e.reason, e.sku)),
            ..Fold::default()
        }),
        INVENTORY_RELEASED => read(msg, |e: InventoryReleased| Fold {
            order_id: e.order_id,
            ..Fold::default()
        }),
        PAYMENT_SUCCEEDED => read(msg, |e: PaymentSucceeded| Fold {
            order_id: e.order_id,
            status: Some(("PAID", 4)),
            detail: Some(e.charge_id),
            ..Fold::default()
        }),
        PAYMENT_FAILED => read(msg, |e: PaymentFailed| Fold {
            order_id: e.order_id,
            status: Some(("PAYMENT_FAILED", 4)),
            detail: Some(e.reason),
            ..Fold::default()
        }),
        PAYMENT_REFUNDED => read(msg, |e: PaymentRefunded| Fold {
            order_id: e.order_id,
            detail: Some(e.charge_id),
            ..Fold::default()
        }),
        ORDER_CONFIRMED | ORDER_FAILED => read(msg, |e: OrderFinished| Fold {
            order_id: e.order_id,
            customer_id: Some(e.customer_id),
            status: Some((
                if kind == ORDER_CONFIRMED {
                    "CONFIRMED"
                } else {
                    "FAILED"
                },
                9,
            )),
            detail: e.reason,
            ..Fold::default()
        }),
        _ => return Ok(None),
    }?;
    Ok(Some(event))
}

/// What an event contributes, before the envelope's id and time are added.
#[derive(Default)]
struct Fold {
    order_id: String,
    customer_id: Option<String>,
    status: Option<(&'static str, i64)>,
    detail: Option<String>,
    items: Option<i64>,
    amount_cents: Option<i64>,
}

fn read<T: Versioned + Validate>(
    msg: &IncomingMessage,
    fold: impl FnOnce(T) -> Fold,
) -> Result<HistoryEvent, Outcome> {
    let envelope = msg
        .decode_versioned::<T>()
        .map_err(|e| Outcome::reject(format!("undecodable {}: {e}", msg.routing_key())))?;
    envelope
        .data
        .validate()
        .map_err(|e| Outcome::reject(format!("invalid {}: {e}", msg.routing_key())))?;
    let f = fold(envelope.data);
    Ok(HistoryEvent {
        id: envelope.id.to_string(),
        kind: msg.routing_key().to_owned(),
        time_ms: envelope.time.timestamp_millis(),
        order_id: f.order_id,
        customer_id: f.customer_id,
        status: f.status,
        detail: f.detail,
        items: f.items,
        amount_cents: f.amount_cents,
    })
}

/// The status of an order before any status-setting event was seen (only history-only events,
/// e.g. a `payment.refunded` replayed before the rest).
const UNKNOWN: (&str, i64) = ("UNKNOWN", 0);

/// Records the event (`$1` id, `$2` order, `$3` kind, `$4` time, `$5` detail); nothing when it
/// was recorded before.
macro_rules! insert_event {
    () => {
        "INSERT INTO order_history_events (event_id, order_id, kind, event_ms, detail) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event_id) DO NOTHING"
    };
}

/// Folds an event into its order's row; `$rows` gives the new row's values (`order_id`,
/// `customer_id`, `status`, `status_rank`, `status_ms`, `reason`, `items`, `amount_cents`,
/// `first_ms`, `last_ms`, `events`), as a `VALUES` or a `SELECT`.
macro_rules! upsert_history {
    ($rows:literal) => {
        concat!(
            "INSERT INTO order_history (order_id, customer_id, status, status_rank, status_ms, \
         reason, items, amount_cents, first_ms, last_ms, events) ",
            $rows,
            " ",
            "ON CONFLICT (order_id) DO UPDATE SET \
           customer_id = COALESCE(order_history.customer_id, excluded.customer_id), \
           status = CASE WHEN excluded.status_rank > order_history.status_rank \
             OR (excluded.status_rank = order_history.status_rank \
                 AND excluded.status_ms > order_history.status_ms) \
             THEN excluded.status ELSE order_history.status END, \
           reason = CASE WHEN excluded.status_rank > order_history.status_rank \
             OR (excluded.status_rank = order_history.status_rank \
                 AND excluded.status_ms > order_history.status_ms) \
             THEN excluded.reason ELSE order_history.reason END, \
           status_ms = CASE WHEN excluded.status_rank > order_history.status_rank \
             OR (excluded.status_rank = order_history.status_rank \
                 AND excluded.status_ms > order_history.status_ms) \
             THEN excluded.status_ms ELSE order_history.status_ms END, \
           status_rank = CASE WHEN excluded.status_rank > order_history.status_rank \
             THEN excluded.status_rank ELSE order_history.status_rank END, \
           items = COALESCE(order_history.items, excluded.items), \
           amount_cents = COALESCE(order_history.amount_cents, excluded.amount_cents), \
           first_ms = CASE WHEN excluded.first_ms < order_history.first_ms \
             THEN excluded.first_ms ELSE order_history.first_ms END, \
           last_ms = CASE WHEN excluded.last_ms > order_history.last_ms \
             THEN excluded.last_ms ELSE order_history.last_ms END, \
           events = order_history.events + 1"
        )
    };
}

/// Applies `e` in `tx`; `false` when the event was applied before (nothing changes).
///
/// On SQLite both statements go in one round trip to sqlx's worker thread (two context
/// switches fewer per event): the row is folded only `WHERE changes() = 1`, i.e. when the
/// event's own insert just added it, and the rows both changed tell whether it was new.
/// PostgreSQL runs no parameterised statements together; there they run one after the other.
pub async fn apply(tx: &mut Tx<'_>, e: &HistoryEvent) -> Result<bool, sqlx::Error> {
    let (status, rank) = e.status.unwrap_or(UNKNOWN);
    // The reason travels with the status that carries it (`FAILED`'s, `REJECTED`'s,
    // `PAYMENT_FAILED`'s); a status without one clears it.
    let reason = e.status.and(e.detail.as_deref()).filter(|_| {
        matches!(
            e.kind.as_str(),
            ORDER_FAILED | INVENTORY_REJECTED | PAYMENT_FAILED
        )
    });
    let event = [
        (&e.id).into(),
        (&e.order_id).into(),
        (&e.kind).into(),
        e.time_ms.into(),
        e.detail.as_deref().into(),
    ];
    let row = [
        (&e.order_id).into(),
        e.customer_id.as_deref().into(),
        status.into(),
        rank.into(),
        e.time_ms.into(),
        reason.into(),
        e.items.into(),
        e.amount_cents.into(),
    ];
    if let Tx::Sqlite(_) = tx {
        let both = concat!(
            insert_event!(),
            "; ",
            upsert_history!(
                "SELECT $6, $7, $8, $9, $10, $11, $12, $13, $10, $10, 1 WHERE changes() = 1"
            )
        );
        let changed = tx.execute(both, &[&event[..], &row[..]].concat()).await?;
        return Ok(changed > 0);
    }
    if tx.execute(insert_event!(), &event).await? == 0 {
        return Ok(false);
    }
    tx.execute(
        upsert_history!("VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $5, $5, 1)"),
        &row,
    )
    .await?;
    Ok(true)
}

/// Empties both tables (the first step of a rebuild).
pub async fn truncate(tx: &mut Tx<'_>) -> Result<(), sqlx::Error> {
    tx.execute("DELETE FROM order_history_events", &[]).await?;
    tx.execute("DELETE FROM order_history", &[]).await?;
    Ok(())
}

/// One order in the read model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderHistory {
    /// The order.
    pub order_id: String,
    /// The customer.
    pub customer_id: String,
    /// `PLACED`, `RESERVED`, `REJECTED`, `PAID`, `PAYMENT_FAILED`, `CONFIRMED` or `FAILED`.
    pub status: String,
    /// Why it failed, for `FAILED`, `REJECTED` and `PAYMENT_FAILED`.
    pub reason: Option<String>,
    /// Units ordered.
    pub items: Option<i64>,
    /// The price in cents, once stock was reserved.
    pub amount_cents: Option<i64>,
    /// The time of its first event (placement), ms since the Unix epoch.
    pub first_ms: i64,
    /// The time of its latest event.
    pub last_ms: i64,
    /// Every event, oldest first.
    pub history: Vec<HistoryLine>,
}

/// One event in an order's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryLine {
    /// The event type, e.g. `payment.succeeded`.
    pub kind: String,
    /// When it happened (the event's time), ms since the Unix epoch.
    pub at_ms: i64,
    /// A reason, SKU or charge id, if the event has one.
    pub detail: Option<String>,
}

/// The largest `limit` [`for_customer`] takes.
pub const MAX_LIMIT: i64 = 100;

/// The `limit` (at most [`MAX_LIMIT`]) newest orders of `customer`, newest first, each with
/// its history. Orders whose customer is not known yet (no `order.placed` nor final event
/// applied) are not listed.
pub async fn for_customer(
    db: &Db,
    customer: &str,
    limit: i64,
) -> Result<Vec<OrderHistory>, sqlx::Error> {
    let rows = db
        .fetch_all(
            "SELECT o.order_id, o.customer_id, o.status, o.reason, o.items, o.amount_cents, \
             o.first_ms, o.last_ms, e.kind, e.event_ms, e.detail \
             FROM (SELECT * FROM order_history WHERE customer_id = $1 \
                   ORDER BY first_ms DESC, order_id DESC LIMIT $2) o \
             JOIN order_history_events e ON e.order_id = o.order_id \
             ORDER BY o.first_ms DESC, o.order_id DESC, e.event_ms, e.event_id",
            &[customer.into(), limit.clamp(0, MAX_LIMIT).into()],
        )
        .await?;
    let mut orders: Vec<OrderHistory> = Vec::new();
    for r in &rows {
        let order_id: String = r.get("order_id")?;
        if orders.last().is_none_or(|o| o.order_id != order_id) {
            orders.push(OrderHistory {
                order_id,
                customer_id: r.get("customer_id")?,
                status: r.get("status")?,
                reason: r.get("reason")?,
                items: r.get("items")?,
                amount_cents: r.get("amount_cents")?,
                first_ms: r.get("first_ms")?,
                last_ms: r.get("last_ms")?,
                history: Vec::new(),
            });
        }
        let order = orders.last_mut().expect("pushed above");
        order.history.push(HistoryLine {
            kind: r.get("kind")?,
            at_ms: r.get("event_ms")?,
            detail: r.get("detail")?,
        });
    }
    Ok(orders)
}

/// Every row of both tables in a fixed order, as text: what a rebuild must reproduce (tests
/// and the control snapshot's comparison use it).
pub async fn dump(db: &Db) -> Result<Vec<String>, sqlx::Error> {
    let mut out = Vec::new();
    for r in db
        .fetch_all(
            "SELECT order_id, customer_id, status, status_rank, status_ms, reason, items, \
             amount_cents, first_ms, last_ms, events FROM order_history ORDER BY order_id",
            &[],
        )
        .await?
    {
        out.push(format!(
            "order {} {:?} {} {} {} {:?} {:?} {:?} {} {} {}",
            r.get::<String>("order_id")?,
            r.get::<Option<String>>("customer_id")?,
            r.get::<String>("status")?,
            r.get::<i64>("status_rank")?,
            r.get::<i64>("status_ms")?,
            r.get::<Option<String>>("reason")?,
            r.get::<Option<i64>>("items")?,
            r.get::<Option<i64>>("amount_cents")?,
            r.get::<i64>("first_ms")?,
            r.get::<i64>("last_ms")?,
            r.get::<i64>("events")?,
        ));
    }
    for r in db
        .fetch_all(
            "SELECT event_id, order_id, kind, event_ms, detail FROM order_history_events \
             ORDER BY event_id",
            &[],
        )
        .await?
    {
        out.push(format!(
            "event {} {} {} {} {:?}",
            r.get::<String>("event_id")?,
            r.get::<String>("order_id")?,
            r.get::<String>("kind")?,
            r.get::<i64>("event_ms")?,
            r.get::<Option<String>>("detail")?,
        ));
    }
    Ok(out)
}

/// Counts of orders and events in the read model.
pub async fn counts(db: &Db) -> Result<(i64, i64), sqlx::Error> {
    let row = db
        .fetch_optional(
            "SELECT (SELECT COUNT(*) FROM order_history) AS orders, \
             (SELECT COUNT(*) FROM order_history_events) AS events",
            &[],
        )
        .await?;
    match row {
        Some(r) => Ok((r.get("orders")?, r.get("events")?)),
        None => Ok((0, 0)),
    }
}
