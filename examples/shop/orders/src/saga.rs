//! The order saga: a persisted state machine (orchestration).
//!
//! ```text
//!            place                inventory.reserved            payment.succeeded
//!  (none) ─────────► PENDING/RESERVING ───────────► PENDING/CHARGING ───────────► CONFIRMED
//!                          │ inventory.rejected          │ payment.failed
//!                          │ or step timeout             │ or step timeout
//!                          ▼                             ▼
//!                   FAILED(reason)          FAILED(reason) + compensations
//! ```
//!
//! Each transition is a conditional `UPDATE … WHERE id = $ AND status = 'PENDING' AND step = $`
//! inside the caller's transaction, so a late reply and the timeout sweeper can race and exactly
//! one of them wins; the loser changes nothing. The commands a transition sends (charge, refund,
//! release) and the events it announces are returned as [`Emit`]s for the caller to put into the
//! outbox *in the same transaction*: after a crash the saga continues from what was committed.
//!
//! Compensations: a failed payment releases the reservation; a timed-out charge refunds (the
//! payments service refunds only if it charged, and refuses a charge arriving after its refund)
//! and releases; a timed-out reservation releases (inventory refuses a reservation arriving after
//! its release). Every compensation is idempotent on the receiving side.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), chassis_core::BoxError> {
//! use shop_common::db::Db;
//! use shop_common::events::{Item, InventoryReserved, PaymentSucceeded};
//! use shop_orders::saga::{self, NewOrder};
//!
//! let db = Db::open("sqlite::memory:")?;
//! saga::migrate(&db).await?;
//! let new = NewOrder {
//!     customer_id: "c-1".into(),
//!     items: vec![Item { sku: "tea".into(), quantity: 1 }],
//!     payment_method: "card_ok".into(),
//! };
//! let mut txn = db.begin().await?;
//! let placed = saga::place(&mut txn.tx(), &new, None, 30_000).await?;
//! txn.commit().await?;
//! let id = placed.order.id.clone();
//!
//! let mut txn = db.begin().await?;
//! saga::on_inventory_reserved(&mut txn.tx(), &InventoryReserved { order_id: id.clone(), amount_cents: 450 }, 30_000).await?;
//! saga::on_payment_succeeded(&mut txn.tx(), &PaymentSucceeded { order_id: id.clone(), charge_id: "ch_1".into(), amount_cents: 450 }).await?;
//! txn.commit().await?;
//! assert_eq!(saga::get(&db, &id).await?.unwrap().status, "CONFIRMED");
//! # Ok(()) }
//! ```

use serde::{Deserialize, Serialize};
use shop_common::db::{Db, Row, Tx, now_ms};
use shop_common::events::{
    CMD_INVENTORY_RELEASE, CMD_PAYMENT_CHARGE, CMD_PAYMENT_REFUND, ChargePayment, Compensate, Emit,
    InventoryRejected, InventoryReserved, Item, ORDER_CONFIRMED, ORDER_FAILED, ORDER_PLACED,
    OrderFinished, OrderPlaced, PaymentFailed, PaymentSucceeded,
};
use shop_common::limits::{self, FieldError};

/// The orders schema (portable SQL).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY,
    customer_id TEXT NOT NULL,
    payment_method TEXT NOT NULL,
    idempotency_key TEXT UNIQUE,
    status TEXT NOT NULL,
    step TEXT NOT NULL,
    reason TEXT,
    amount_cents BIGINT,
    charge_id TEXT,
    compensations BIGINT NOT NULL DEFAULT 0,
    step_deadline_ms BIGINT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    finished_ms BIGINT
);
CREATE INDEX IF NOT EXISTS orders_pending_deadline ON orders (status, step_deadline_ms);
CREATE TABLE IF NOT EXISTS order_items (
    order_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    PRIMARY KEY (order_id, sku)
)";

/// Order status: the saga is running.
pub const PENDING: &str = "PENDING";
/// Order status: paid and reserved.
pub const CONFIRMED: &str = "CONFIRMED";
/// Order status: failed, see `reason`.
pub const FAILED: &str = "FAILED";
/// Saga step: waiting for inventory.
pub const STEP_RESERVING: &str = "RESERVING";
/// Saga step: waiting for payments.
pub const STEP_CHARGING: &str = "CHARGING";
/// Saga step: finished.
pub const STEP_DONE: &str = "DONE";

/// Creates the tables.
pub async fn migrate(db: &Db) -> Result<(), sqlx::Error> {
    db.execute_script(SCHEMA).await
}

/// What a customer orders.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOrder {
    /// The customer.
    pub customer_id: String,
    /// The lines.
    pub items: Vec<Item>,
    /// The payment method token.
    pub payment_method: String,
}

impl NewOrder {
    /// Checks every field against its limit (`shop_common::limits`: present, at most 128 bytes
    /// for the customer and the payment method, 1..=50 lines, SKUs of at most 64 bytes,
    /// quantities within 1..=1000); the error names the field, never its value.
    pub fn validate(&self) -> Result<(), FieldError> {
        limits::check_order(&self.customer_id, &self.items, &self.payment_method)
    }

    /// Lines with duplicate SKUs merged, in SKU order.
    fn merged_items(&self) -> Vec<Item> {
        let mut map = std::collections::BTreeMap::<&str, i64>::new();
        for i in &self.items {
            *map.entry(i.sku.as_str()).or_default() += i.quantity;
        }
        map.into_iter()
            .map(|(sku, quantity)| Item {
                sku: sku.to_owned(),
                quantity,
            })
            .collect()
    }
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Order id (UUID v7).
    pub id: String,
    /// The customer.
    pub customer_id: String,
    /// `PENDING`, `CONFIRMED` or `FAILED`.
    pub status: String,
    /// Saga step: `RESERVING`, `CHARGING` or `DONE`.
    pub step: String,
    /// Failure reason for `FAILED`.
    pub reason: Option<String>,
    /// Payment method token.
    pub payment_method: String,
    /// Amount in cents, known once reserved.
    pub amount_cents: Option<i64>,
    /// The provider charge, once paid.
    pub charge_id: Option<String>,
    /// Compensating commands sent.
    pub compensations: i64,
    /// Created, ms since epoch.
    pub created_ms: i64,
    /// Reached its final status, ms since epoch.
    pub finished_ms: Option<i64>,
    /// The lines.
    pub items: Vec<Item>,
}

fn order_from(row: &Row, items: Vec<Item>) -> Result<Order, sqlx::Error> {
    Ok(Order {
        id: row.get("id")?,
        customer_id: row.get("customer_id")?,
        status: row.get("status")?,
        step: row.get("step")?,
        reason: row.get("reason")?,
        payment_method: row.get("payment_method")?,
        amount_cents: row.get("amount_cents")?,
        charge_id: row.get("charge_id")?,
        compensations: row.get("compensations")?,
        created_ms: row.get("created_ms")?,
        finished_ms: row.get("finished_ms")?,
        items,
    })
}

fn items_from(rows: &[Row]) -> Result<Vec<Item>, sqlx::Error> {
    rows.iter()
        .map(|r| {
            Ok(Item {
                sku: r.get("sku")?,
                quantity: r.get("quantity")?,
            })
        })
        .collect()
}

/// Reads an order with its items.
pub async fn get(db: &Db, id: &str) -> Result<Option<Order>, sqlx::Error> {
    // `ORDER_COLUMNS` is a constant: the statement is static text.
    let Some(row) = db
        .fetch_optional(
            "SELECT id, customer_id, status, step, reason, payment_method, amount_cents, charge_id, \
             compensations, created_ms, finished_ms FROM orders WHERE id = $1",
            &[id.into()],
        )
        .await?
    else {
        return Ok(None);
    };
    let items = db
        .fetch_all(
            "SELECT sku, quantity FROM order_items WHERE order_id = $1 ORDER BY sku",
            &[id.into()],
        )
        .await?;
    Ok(Some(order_from(&row, items_from(&items)?)?))
}

async fn get_in(tx: &mut Tx<'_>, id: &str) -> Result<Option<Order>, sqlx::Error> {
    let Some(row) = tx
        .fetch_optional(
            "SELECT id, customer_id, status, step, reason, payment_method, amount_cents, charge_id, \
             compensations, created_ms, finished_ms FROM orders WHERE id = $1",
            &[id.into()],
        )
        .await?
    else {
        return Ok(None);
    };
    let items = tx
        .fetch_all(
            "SELECT sku, quantity FROM order_items WHERE order_id = $1 ORDER BY sku",
            &[id.into()],
        )
        .await?;
    Ok(Some(order_from(&row, items_from(&items)?)?))
}

/// The result of [`place`].
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// The order (the existing one when the idempotency key was seen before).
    pub order: Order,
    /// `false` when the idempotency key matched an existing order.
    pub created: bool,
    /// What to put into the outbox (`order.placed`), empty for a replay.
    pub emits: Vec<Emit>,
}

/// Places an order: `PENDING`/`RESERVING` with a deadline `step_timeout_ms` from now, and
/// `order.placed` (which inventory reserves on). With an `idempotency_key` seen before, returns
/// the existing order and emits nothing — even when two requests race (the key is `UNIQUE`).
pub async fn place(
    tx: &mut Tx<'_>,
    new: &NewOrder,
    idempotency_key: Option<&str>,
    step_timeout_ms: i64,
) -> Result<Placed, sqlx::Error> {
    let id = uuid::Uuid::now_v7().to_string();
    let now = now_ms();
    let inserted = tx
        .execute(
            "INSERT INTO orders (id, customer_id, payment_method, idempotency_key, status, step, compensations, \
             step_deadline_ms, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $8) \
             ON CONFLICT (idempotency_key) DO NOTHING",
            &[
                (&id).into(),
                (&new.customer_id).into(),
                (&new.payment_method).into(),
                idempotency_key.into(),
                PENDING.into(),
                STEP_RESERVING.into(),
                (now + step_timeout_ms).into(),
                now.into(),
            ],
        )
        .await?;
    if inserted == 0 {
        let key = idempotency_key.unwrap_or_default();
        let row = tx
            .fetch_optional(
                "SELECT id FROM orders WHERE idempotency_key = $1",
                &[key.into()],
            )
            .await?;
        let existing_id = row.ok_or(sqlx::Error::RowNotFound)?.get::<String>("id")?;
        let order = get_in(tx, &existing_id)
            .await?
            .ok_or(sqlx::Error::RowNotFound)?;
        return Ok(Placed {
            order,
            created: false,
            emits: Vec::new(),
        });
    }
    let items = new.merged_items();
    for item in &items {
        tx.execute(
            "INSERT INTO order_items (order_id, sku, quantity) VALUES ($1, $2, $3)",
            &[(&id).into(), (&item.sku).into(), item.quantity.into()],
        )
        .await?;
    }
    let event = OrderPlaced {
        order_id: id.clone(),
        customer_id: new.customer_id.clone(),
        items: items.clone(),
        payment_method: new.payment_method.clone(),
    };
    let order = Order {
        id: id.clone(),
        customer_id: new.customer_id.clone(),
        status: PENDING.into(),
        step: STEP_RESERVING.into(),
        reason: None,
        payment_method: new.payment_method.clone(),
        amount_cents: None,
        charge_id: None,
        compensations: 0,
        created_ms: now,
        finished_ms: None,
        items,
    };
    Ok(Placed {
        order,
        created: true,
        emits: vec![Emit::event(ORDER_PLACED, &id, &event)],
    })
}

/// Moves `id` from `PENDING`/`from_step` to a final status; `false` if another transition won.
async fn finish(
    tx: &mut Tx<'_>,
    id: &str,
    from_step: &str,
    status: &str,
    reason: Option<&str>,
    compensations: i64,
    charge_id: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let now = now_ms();
    let n = tx
        .execute(
            "UPDATE orders SET status = $1, step = $2, reason = $3, compensations = compensations + $4, \
             charge_id = COALESCE($5, charge_id), step_deadline_ms = NULL, updated_ms = $6, finished_ms = $6 \
             WHERE id = $7 AND status = $8 AND step = $9",
            &[
                status.into(),
                STEP_DONE.into(),
                reason.into(),
                compensations.into(),
                charge_id.into(),
                now.into(),
                id.into(),
                PENDING.into(),
                from_step.into(),
            ],
        )
        .await?;
    Ok(n == 1)
}

async fn finished_event(
    tx: &mut Tx<'_>,
    id: &str,
    status: &str,
    reason: Option<&str>,
) -> Result<Emit, sqlx::Error> {
    let customer_id = tx
        .fetch_optional("SELECT customer_id FROM orders WHERE id = $1", &[id.into()])
        .await?
        .ok_or(sqlx::Error::RowNotFound)?
        .get::<String>("customer_id")?;
    let e = OrderFinished {
        order_id: id.to_owned(),
        customer_id,
        status: status.to_owned(),
        reason: reason.map(str::to_owned),
    };
    Ok(Emit::event(
        if status == CONFIRMED {
            ORDER_CONFIRMED
        } else {
            ORDER_FAILED
        },
        id,
        &e,
    ))
}

/// `inventory.reserved`: RESERVING -> CHARGING, sends `payment.charge`.
pub async fn on_inventory_reserved(
    tx: &mut Tx<'_>,
    e: &InventoryReserved,
    step_timeout_ms: i64,
) -> Result<Vec<Emit>, sqlx::Error> {
    let now = now_ms();
    let n = tx
        .execute(
            "UPDATE orders SET step = $1, amount_cents = $2, step_deadline_ms = $3, updated_ms = $4 \
             WHERE id = $5 AND status = $6 AND step = $7",
            &[
                STEP_CHARGING.into(),
                e.amount_cents.into(),
                (now + step_timeout_ms).into(),
                now.into(),
                (&e.order_id).into(),
                PENDING.into(),
                STEP_RESERVING.into(),
            ],
        )
        .await?;
    if n == 0 {
        // Late or duplicate: the timeout already released the reservation (inventory refuses or
        // undoes it), nothing to do.
        return Ok(Vec::new());
    }
    let method = tx
        .fetch_optional(
            "SELECT payment_method FROM orders WHERE id = $1",
            &[(&e.order_id).into()],
        )
        .await?
        .ok_or(sqlx::Error::RowNotFound)?
        .get::<String>("payment_method")?;
    let cmd = ChargePayment {
        order_id: e.order_id.clone(),
        amount_cents: e.amount_cents,
        payment_method: method,
    };
    Ok(vec![Emit::command(CMD_PAYMENT_CHARGE, &e.order_id, &cmd)])
}

/// `inventory.rejected`: RESERVING -> FAILED(reason), announces `order.failed`.
pub async fn on_inventory_rejected(
    tx: &mut Tx<'_>,
    e: &InventoryRejected,
) -> Result<Vec<Emit>, sqlx::Error> {
    if !finish(
        tx,
        &e.order_id,
        STEP_RESERVING,
        FAILED,
        Some(&e.reason),
        0,
        None,
    )
    .await?
    {
        return Ok(Vec::new());
    }
    Ok(vec![
        finished_event(tx, &e.order_id, FAILED, Some(&e.reason)).await?,
    ])
}

/// `payment.succeeded`: CHARGING -> CONFIRMED, announces `order.confirmed`.
pub async fn on_payment_succeeded(
    tx: &mut Tx<'_>,
    e: &PaymentSucceeded,
) -> Result<Vec<Emit>, sqlx::Error> {
    if !finish(
        tx,
        &e.order_id,
        STEP_CHARGING,
        CONFIRMED,
        None,
        0,
        Some(&e.charge_id),
    )
    .await?
    {
        // Late: the charge timed out and a refund was already commanded.
        return Ok(Vec::new());
    }
    Ok(vec![
        finished_event(tx, &e.order_id, CONFIRMED, None).await?,
    ])
}

/// `payment.failed`: CHARGING -> FAILED(reason), compensates with `inventory.release`.
pub async fn on_payment_failed(
    tx: &mut Tx<'_>,
    e: &PaymentFailed,
) -> Result<Vec<Emit>, sqlx::Error> {
    if !finish(
        tx,
        &e.order_id,
        STEP_CHARGING,
        FAILED,
        Some(&e.reason),
        1,
        None,
    )
    .await?
    {
        return Ok(Vec::new());
    }
    let release = Compensate {
        order_id: e.order_id.clone(),
        reason: e.reason.clone(),
    };
    Ok(vec![
        Emit::command(CMD_INVENTORY_RELEASE, &e.order_id, &release),
        finished_event(tx, &e.order_id, FAILED, Some(&e.reason)).await?,
    ])
}

/// Fails every `PENDING` order whose step deadline is before `now_ms` (at most `limit`),
/// compensating what its step may have done. Returns the ids failed and what to emit.
pub async fn expire_overdue(
    tx: &mut Tx<'_>,
    now_ms: i64,
    limit: i64,
) -> Result<(Vec<String>, Vec<Emit>), sqlx::Error> {
    let rows = tx
        .fetch_all(
            "SELECT id, step FROM orders WHERE status = $1 AND step_deadline_ms < $2 ORDER BY step_deadline_ms LIMIT $3",
            &[PENDING.into(), now_ms.into(), limit.into()],
        )
        .await?;
    let mut ids = Vec::new();
    let mut emits = Vec::new();
    for row in rows {
        let (id, step) = (row.get::<String>("id")?, row.get::<String>("step")?);
        let (reason, mut comp) = if step == STEP_CHARGING {
            let refund = Compensate {
                order_id: id.clone(),
                reason: "payment_timeout".into(),
            };
            (
                "payment_timeout",
                vec![Emit::command(CMD_PAYMENT_REFUND, &id, &refund)],
            )
        } else {
            ("inventory_timeout", Vec::new())
        };
        comp.push(Emit::command(
            CMD_INVENTORY_RELEASE,
            &id,
            &Compensate {
                order_id: id.clone(),
                reason: reason.into(),
            },
        ));
        let count = i64::try_from(comp.len()).unwrap_or(i64::MAX);
        if finish(tx, &id, &step, FAILED, Some(reason), count, None).await? {
            emits.extend(comp);
            emits.push(finished_event(tx, &id, FAILED, Some(reason)).await?);
            ids.push(id);
        }
    }
    Ok((ids, emits))
}

/// Counts orders by status (for the service's gauges and the launcher's summary).
pub async fn count_by_status(db: &Db) -> Result<Vec<(String, i64)>, sqlx::Error> {
    db.fetch_all(
        "SELECT status, COUNT(*) AS n FROM orders GROUP BY status ORDER BY status",
        &[],
    )
    .await?
    .iter()
    .map(|r| Ok((r.get::<String>("status")?, r.get::<i64>("n")?)))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use shop_common::events::{COMMANDS_EXCHANGE, INVENTORY_RELEASED};

    async fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!(
            "sqlite://{}",
            dir.path().join("orders.db").display()
        ))
        .unwrap();
        migrate(&db).await.unwrap();
        (dir, db)
    }

    fn new_order() -> NewOrder {
        NewOrder {
            customer_id: "c1".into(),
            items: vec![
                Item {
                    sku: "b".into(),
                    quantity: 1,
                },
                Item {
                    sku: "a".into(),
                    quantity: 2,
                },
                Item {
                    sku: "b".into(),
                    quantity: 1,
                },
            ],
            payment_method: "card_ok".into(),
        }
    }

    async fn place_one(db: &Db, key: Option<&str>, timeout: i64) -> Placed {
        let mut txn = db.begin().await.unwrap();
        let p = place(&mut txn.tx(), &new_order(), key, timeout)
            .await
            .unwrap();
        txn.commit().await.unwrap();
        p
    }

    macro_rules! step {
        ($db:expr, |$tx:ident| $call:expr) => {{
            let mut t = $db.begin().await.unwrap();
            let e = {
                let $tx = &mut t.tx();
                $call.await.unwrap()
            };
            t.commit().await.unwrap();
            e
        }};
    }

    #[test]
    fn validation_says_what_is_wrong() {
        assert!(new_order().validate().is_ok());
        let mut o = new_order();
        o.items.clear();
        assert_eq!(o.validate().unwrap_err().field(), "items");
        let mut o = new_order();
        o.items[0].quantity = 0;
        assert_eq!(o.validate().unwrap_err().field(), "items[0].quantity");
        let mut o = new_order();
        o.customer_id = " ".into();
        assert_eq!(o.validate().unwrap_err().field(), "customer_id");
        let mut o = new_order();
        o.customer_id = "c".repeat(limits::MAX_CUSTOMER_ID_LEN + 1);
        assert_eq!(o.validate().unwrap_err().field(), "customer_id");
        let mut o = new_order();
        o.items[1].sku = "s".repeat(limits::MAX_SKU_LEN + 1);
        assert_eq!(o.validate().unwrap_err().field(), "items[1].sku");
    }

    #[tokio::test]
    async fn happy_path_reaches_confirmed_and_ignores_duplicates() {
        let (_d, db) = db().await;
        let p = place_one(&db, None, 30_000).await;
        assert!(p.created);
        assert_eq!(p.emits[0].kind, ORDER_PLACED);
        assert_eq!(
            p.order.items,
            vec![
                Item {
                    sku: "a".into(),
                    quantity: 2
                },
                Item {
                    sku: "b".into(),
                    quantity: 2
                }
            ]
        );
        let id = p.order.id.clone();
        let reserved = InventoryReserved {
            order_id: id.clone(),
            amount_cents: 900,
        };
        let e = step!(db, |tx| on_inventory_reserved(tx, &reserved, 30_000));
        assert_eq!(
            (e[0].exchange, e[0].kind),
            (COMMANDS_EXCHANGE, CMD_PAYMENT_CHARGE)
        );
        assert_eq!(e[0].payload["amount_cents"], 900);
        assert_eq!(e[0].payload["payment_method"], "card_ok");
        // A duplicate reply is a no-op.
        assert!(step!(db, |tx| on_inventory_reserved(tx, &reserved, 30_000)).is_empty());
        let paid = PaymentSucceeded {
            order_id: id.clone(),
            charge_id: "ch_1".into(),
            amount_cents: 900,
        };
        let e = step!(db, |tx| on_payment_succeeded(tx, &paid));
        assert_eq!(e[0].kind, ORDER_CONFIRMED);
        assert_eq!(e[0].payload["customer_id"], "c1");
        let o = get(&db, &id).await.unwrap().unwrap();
        assert_eq!(
            (o.status.as_str(), o.charge_id.as_deref(), o.amount_cents),
            (CONFIRMED, Some("ch_1"), Some(900))
        );
        assert!(o.finished_ms.is_some());
        assert_eq!(
            count_by_status(&db).await.unwrap(),
            vec![(CONFIRMED.to_owned(), 1)]
        );
    }

    #[tokio::test]
    async fn the_saga_runs_on_postgres_too() {
        let db = shop_common::db::postgres_test_db().await.unwrap();
        migrate(&db).await.unwrap();
        let a = place_one(&db, Some("pg-key"), 30_000).await;
        let b = place_one(&db, Some("pg-key"), 30_000).await;
        assert_eq!(a.order.id, b.order.id);
        let id = a.order.id;
        let reserved = InventoryReserved {
            order_id: id.clone(),
            amount_cents: 900,
        };
        assert_eq!(
            step!(db, |tx| on_inventory_reserved(tx, &reserved, 30_000)).len(),
            1
        );
        let failed = PaymentFailed {
            order_id: id.clone(),
            reason: "card_declined".into(),
        };
        assert_eq!(step!(db, |tx| on_payment_failed(tx, &failed)).len(), 2);
        let o = get(&db, &id).await.unwrap().unwrap();
        assert_eq!(
            (o.status.as_str(), o.compensations, o.items.len()),
            (FAILED, 1, 2)
        );
        let mut txn = db.begin().await.unwrap();
        assert!(
            expire_overdue(&mut txn.tx(), now_ms() + 60_000, 10)
                .await
                .unwrap()
                .0
                .is_empty()
        );
        txn.commit().await.unwrap();
    }

    #[tokio::test]
    async fn declined_payment_fails_and_releases_the_reservation() {
        let (_d, db) = db().await;
        let id = place_one(&db, None, 30_000).await.order.id;
        let reserved = InventoryReserved {
            order_id: id.clone(),
            amount_cents: 900,
        };
        step!(db, |tx| on_inventory_reserved(tx, &reserved, 30_000));
        let failed = PaymentFailed {
            order_id: id.clone(),
            reason: "card_declined".into(),
        };
        let e = step!(db, |tx| on_payment_failed(tx, &failed));
        assert_eq!(
            e.iter().map(|e| e.kind).collect::<Vec<_>>(),
            vec![CMD_INVENTORY_RELEASE, ORDER_FAILED]
        );
        let o = get(&db, &id).await.unwrap().unwrap();
        assert_eq!(
            (o.status.as_str(), o.reason.as_deref(), o.compensations),
            (FAILED, Some("card_declined"), 1)
        );
        // A late success after failure changes nothing.
        let paid = PaymentSucceeded {
            order_id: id.clone(),
            charge_id: "ch".into(),
            amount_cents: 900,
        };
        assert!(step!(db, |tx| on_payment_succeeded(tx, &paid)).is_empty());
        assert_eq!(get(&db, &id).await.unwrap().unwrap().status, FAILED);
        assert_ne!(INVENTORY_RELEASED, CMD_INVENTORY_RELEASE);
    }

    #[tokio::test]
    async fn out_of_stock_fails_without_compensation() {
        let (_d, db) = db().await;
        let id = place_one(&db, None, 30_000).await.order.id;
        let rejected = InventoryRejected {
            order_id: id.clone(),
            reason: "out_of_stock".into(),
            sku: "a".into(),
        };
        let e = step!(db, |tx| on_inventory_rejected(tx, &rejected));
        assert_eq!(e[0].kind, ORDER_FAILED);
        assert_eq!(e[0].payload["reason"], "out_of_stock");
        let o = get(&db, &id).await.unwrap().unwrap();
        assert_eq!(
            (o.reason.as_deref(), o.compensations),
            (Some("out_of_stock"), 0)
        );
    }

    #[tokio::test]
    async fn same_idempotency_key_returns_the_same_order() {
        let (_d, db) = db().await;
        let a = place_one(&db, Some("client-1:key-1"), 30_000).await;
        let b = place_one(&db, Some("client-1:key-1"), 30_000).await;
        assert!(a.created && !b.created);
        assert!(b.emits.is_empty());
        assert_eq!(a.order.id, b.order.id);
        let c = place_one(&db, Some("client-1:key-2"), 30_000).await;
        assert_ne!(a.order.id, c.order.id);
        let total: i64 = count_by_status(&db)
            .await
            .unwrap()
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(total, 2);
    }

    #[tokio::test]
    async fn overdue_steps_fail_with_compensation_and_late_replies_are_ignored() {
        let (_d, db) = db().await;
        let reserving = place_one(&db, None, 1_000).await.order.id;
        let charging = place_one(&db, None, 1_000).await.order.id;
        let reserved = InventoryReserved {
            order_id: charging.clone(),
            amount_cents: 100,
        };
        step!(db, |tx| on_inventory_reserved(tx, &reserved, 1_000));
        let fresh = place_one(&db, None, 3_600_000).await.order.id;

        let mut txn = db.begin().await.unwrap();
        let (ids, emits) = expire_overdue(&mut txn.tx(), now_ms() + 2_000, 100)
            .await
            .unwrap();
        txn.commit().await.unwrap();
        assert_eq!(ids.len(), 2);
        assert!(!ids.contains(&fresh));
        let kinds: Vec<(&str, &str)> = emits.iter().map(|e| (e.subject.as_str(), e.kind)).collect();
        assert!(kinds.contains(&(charging.as_str(), CMD_PAYMENT_REFUND)));
        assert!(kinds.contains(&(charging.as_str(), CMD_INVENTORY_RELEASE)));
        assert!(kinds.contains(&(reserving.as_str(), CMD_INVENTORY_RELEASE)));
        assert!(!kinds.contains(&(reserving.as_str(), CMD_PAYMENT_REFUND)));
        let o = get(&db, &charging).await.unwrap().unwrap();
        assert_eq!(
            (o.reason.as_deref(), o.compensations),
            (Some("payment_timeout"), 2)
        );
        assert_eq!(
            get(&db, &reserving)
                .await
                .unwrap()
                .unwrap()
                .reason
                .as_deref(),
            Some("inventory_timeout")
        );
        // The late payment does not resurrect the order.
        let paid = PaymentSucceeded {
            order_id: charging.clone(),
            charge_id: "ch".into(),
            amount_cents: 100,
        };
        assert!(step!(db, |tx| on_payment_succeeded(tx, &paid)).is_empty());
        assert_eq!(get(&db, &fresh).await.unwrap().unwrap().status, PENDING);
        // A second sweep finds nothing.
        let mut txn = db.begin().await.unwrap();
        assert!(
            expire_overdue(&mut txn.tx(), now_ms() + 2_000, 100)
                .await
                .unwrap()
                .0
                .is_empty()
        );
        txn.commit().await.unwrap();
    }
}
