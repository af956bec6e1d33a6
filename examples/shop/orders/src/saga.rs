//! The order saga on the chassis saga building block ([`chassis_messaging::saga`]).
//!
//! ```text
//!          place                 inventory.reserved             payment.succeeded
//!  (none) ──────► RESERVING ─────────────────────► CHARGING ─────────────────────► CONFIRMED
//!                    │ inventory.rejected              │ payment.failed
//!                    │ or step timeout                 │ or step timeout
//!                    ▼                                 ▼
//!             FAILED(reason)                  FAILED(reason) + compensations
//! ```
//!
//! [`definition`] is the whole state machine. The building block writes each transition in one
//! transaction (saga row, outbox messages, step timeout, the reply's inbox id), ignores late
//! and duplicate replies, and fires step timeouts from the database, also after a restart.
//! Compensations are registered when the step they undo is asked for (`inventory.reserved`:
//! the release; a charge timing out: the refund) and sent newest first, with the failure's
//! reason, when the order fails; each is idempotent on the receiving side, and inventory and
//! payments refuse a reservation or charge arriving after its release or refund.
//!
//! The `orders` table is the read model the API serves: [`OrderSaga::place`] writes it with the
//! items and the idempotency key (`UNIQUE`: two requests racing with one key make one order)
//! and starts the saga in the same transaction; `project` updates it in every transition's.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), chassis_core::BoxError> {
//! use std::time::Duration;
//! use shop_common::{Shop, db::Db, events::Item};
//! use shop_orders::saga::{self, NewOrder, OrderSaga};
//!
//! let db = Db::open("sqlite::memory:")?;
//! db.execute_script(saga::SCHEMA).await?;
//! let orders = OrderSaga::new(&db, &Shop::from_env("orders"), Duration::from_secs(30), |_| {})?;
//! orders.migrate().await?;
//! let items = vec![Item { sku: "tea".into(), quantity: 1 }];
//! let new = NewOrder { customer_id: "c-1".into(), items, payment_method: "card_ok".into() };
//! let placed = orders.place(&new, Some("key-1")).await?;
//! assert_eq!((placed.created, placed.order.status.as_str()), (true, saga::PENDING));
//! // The same key again: the same order, nothing sent twice.
//! let again = orders.place(&new, Some("key-1")).await?;
//! assert_eq!((again.created, again.order.id), (false, placed.order.id));
//! # Ok(()) }
//! ```

use std::time::Duration;

use chassis_messaging::amqp::consumer::Handler;
use chassis_messaging::error::{Error, ErrorKind};
use chassis_messaging::saga::{
    Saga, SagaConfig, SagaDatabase, SagaDefinition, SagaHandler, SagaInstance, Step, Transition,
};
use chassis_messaging::{Envelope, IncomingMessage, Versioned};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use shop_common::Shop;
use shop_common::db::{Db, Row, Tx, Txn, now_ms};
use shop_common::events::{
    CMD_INVENTORY_RELEASE, CMD_PAYMENT_CHARGE, CMD_PAYMENT_REFUND, ChargePayment, Compensate, Emit,
    INVENTORY_REJECTED, INVENTORY_RESERVED, InventoryRejected, InventoryReserved, Item,
    ORDER_CONFIRMED, ORDER_FAILED, ORDER_PLACED, OrderFinished, OrderPlaced, PAYMENT_FAILED,
    PAYMENT_SUCCEEDED, PaymentFailed, PaymentSucceeded, Validate,
};
use shop_common::limits::{self, FieldError};

/// The read model (portable SQL): an order and its lines as the API serves them.
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
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    finished_ms BIGINT
);
CREATE TABLE IF NOT EXISTS order_items (
    order_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    PRIMARY KEY (order_id, sku)
)";

/// The saga type's name (its rows in `chassis_saga`, its inbox `saga:order`).
pub const SAGA: &str = "order";
/// Order status: the saga is running.
pub const PENDING: &str = "PENDING";
/// Order status: paid and reserved.
pub const CONFIRMED: &str = "CONFIRMED";
/// Order status: failed, see `reason`.
pub const FAILED: &str = "FAILED";
/// Saga state and step: waiting for inventory.
pub const STEP_RESERVING: &str = "RESERVING";
/// Saga state and step: waiting for payments.
pub const STEP_CHARGING: &str = "CHARGING";
/// Saga step: finished.
pub const STEP_DONE: &str = "DONE";
/// The timeout bounding each step.
const STEP_TIMEOUT: &str = "step";

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

/// An order as the API serves it (the read model).
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

/// What the saga keeps of an order: what its transitions need.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderData {
    /// The customer (for `order.confirmed` / `order.failed`).
    pub customer_id: String,
    /// The payment method (for `payment.charge`).
    pub payment_method: String,
    /// Known once reserved.
    pub amount_cents: Option<i64>,
    /// Known once paid.
    pub charge_id: Option<String>,
}

/// Sends `emit` (an event or a command of the shop) from a transition.
fn send(shop: &Shop, step: &mut Step<'_, OrderData>, emit: &Emit) {
    let envelope = emit.envelope(shop.service(), None);
    if let Err(e) = step.send_event(&shop.name(emit.exchange), envelope) {
        // A JSON value always serializes; should it not, nothing of the step is written.
        step.reject(e.to_string());
    }
}

/// Ends the order: `order.confirmed`, or `order.failed` with `reason` (and the compensations).
fn finish(shop: &Shop, step: &mut Step<'_, OrderData>, reason: Option<&str>) {
    let (status, kind) = match reason {
        Some(_) => (FAILED, ORDER_FAILED),
        None => (CONFIRMED, ORDER_CONFIRMED),
    };
    let order_id = step.id().to_owned();
    let finished = OrderFinished {
        order_id: order_id.clone(),
        customer_id: step.data().customer_id.clone(),
        status: status.to_owned(),
        reason: reason.map(str::to_owned),
    };
    send(shop, step, &Emit::event(kind, &order_id, &finished));
    match reason {
        Some(reason) => step.fail(reason),
        None => step.complete(),
    }
}

/// A transition on a reply of type `E`, given its payload once it passes its limits
/// ([`Validate`]); one outside them is refused (dead-lettered with the field named).
fn on<E: Versioned + Validate + 'static>(
    shop: &Shop,
    f: impl Fn(&Shop, &mut Step<'_, OrderData>, E) + Send + Sync + 'static,
) -> impl Fn(&mut Step<'_, OrderData>, Envelope<E>) + Send + Sync + 'static {
    let shop = shop.clone();
    move |step: &mut Step<'_, OrderData>, e: Envelope<E>| match e.data.validate() {
        Ok(()) => f(&shop, step, e.data),
        Err(err) => step.reject(format!("invalid {}: {err}", e.kind)),
    }
}

/// The order saga: each step bounded by `step_timeout`; messages go to `shop`'s exchanges.
pub fn definition(shop: &Shop, step_timeout: Duration) -> SagaDefinition<OrderData> {
    let definition = SagaDefinition::new(SAGA)
        .during(
            STEP_RESERVING,
            INVENTORY_RESERVED,
            on(shop, move |shop, step, e: InventoryReserved| {
                step.data_mut().amount_cents = Some(e.amount_cents);
                step.compensate(CMD_INVENTORY_RELEASE);
                let charge = ChargePayment {
                    order_id: e.order_id.clone(),
                    amount_cents: e.amount_cents,
                    payment_method: step.data().payment_method.clone(),
                };
                send(
                    shop,
                    step,
                    &Emit::command(CMD_PAYMENT_CHARGE, &e.order_id, &charge),
                );
                step.transition_to(STEP_CHARGING);
                // Scheduled again in the new state: the charge has a step's time too.
                step.schedule(STEP_TIMEOUT, step_timeout);
            }),
        )
        .during(
            STEP_RESERVING,
            INVENTORY_REJECTED,
            on(shop, |shop, step, e: InventoryRejected| {
                finish(shop, step, Some(&e.reason))
            }),
        )
        .during(
            STEP_CHARGING,
            PAYMENT_SUCCEEDED,
            on(shop, |shop, step, e: PaymentSucceeded| {
                step.data_mut().charge_id = Some(e.charge_id);
                finish(shop, step, None);
            }),
        )
        .during(
            STEP_CHARGING,
            PAYMENT_FAILED,
            on(shop, |shop, step, e: PaymentFailed| {
                finish(shop, step, Some(&e.reason))
            }),
        );
    // A step timing out fails the order, undoing what the step may have done (registered
    // here); the compensation steps make the release and the refund with the failure's reason.
    let timeouts = [
        (STEP_RESERVING, CMD_INVENTORY_RELEASE, "inventory_timeout"),
        (STEP_CHARGING, CMD_PAYMENT_REFUND, "payment_timeout"),
    ];
    timeouts
        .into_iter()
        .fold(definition, |definition, (state, undo, reason)| {
            let (on_timeout, on_failure) = (shop.clone(), shop.clone());
            definition
            .on_timeout(state, STEP_TIMEOUT, move |step| {
                tracing::warn!(order_id = %step.id(), step = state, reason, "saga step timed out");
                step.compensate(undo);
                finish(&on_timeout, step, Some(reason));
            })
            .compensation(undo, move |step, reason| {
                let (order_id, reason) = (step.id().to_owned(), reason.to_owned());
                let why = Compensate { order_id: order_id.clone(), reason };
                send(&on_failure, step, &Emit::command(undo, &order_id, &why));
            })
        })
}

/// Writes what a transition did into the read model, in its transaction.
fn project<'c>(
    mut tx: Tx<'c>,
    t: &'c Transition,
    saga: &'c SagaInstance<OrderData>,
) -> BoxFuture<'c, Result<(), Error>> {
    Box::pin(async move {
        let (status, step) = match (saga.finished, saga.failure.is_some()) {
            (false, _) => (PENDING, saga.state.as_str()),
            (true, false) => (CONFIRMED, STEP_DONE),
            (true, true) => (FAILED, STEP_DONE),
        };
        let now = now_ms();
        tx.execute(
            "UPDATE orders SET status = $1, step = $2, reason = $3, amount_cents = $4, charge_id = $5, \
             compensations = compensations + $6, updated_ms = $7, finished_ms = $8 WHERE id = $9",
            &[
                status.into(),
                step.into(),
                saga.failure.as_deref().into(),
                saga.data.amount_cents.into(),
                saga.data.charge_id.as_deref().into(),
                i64::try_from(t.compensated).unwrap_or(i64::MAX).into(),
                now.into(),
                saga.finished.then_some(now).into(),
                saga.id.as_str().into(),
            ],
        )
        .await
        .map_err(|e| Error::with_source(ErrorKind::Database, e))?;
        Ok(())
    })
}

/// The result of [`OrderSaga::place`].
#[derive(Debug, Clone, PartialEq)]
pub struct Placed {
    /// The order (the existing one when the idempotency key was seen before).
    pub order: Order,
    /// `false` when the idempotency key matched an existing order.
    pub created: bool,
}

/// The order saga on the service's database (SQLite or PostgreSQL, as [`Db`]), with the read
/// model. Cheap to clone.
#[derive(Debug, Clone)]
pub struct OrderSaga {
    db: Db,
    shop: Shop,
    step_timeout: Duration,
    engine: Engine,
}

#[derive(Debug, Clone)]
enum Engine {
    Sqlite(Saga<sqlx::Sqlite, OrderData>),
    Postgres(Saga<sqlx::Postgres, OrderData>),
}

/// The saga's consumer handler on either database.
enum EngineHandler {
    Sqlite(SagaHandler<sqlx::Sqlite, OrderData>),
    Postgres(SagaHandler<sqlx::Postgres, OrderData>),
}

/// The same code for either database.
macro_rules! either {
    ($engine:expr, |$s:ident| $body:expr) => {
        match $engine {
            Engine::Sqlite($s) => $body,
            Engine::Postgres($s) => $body,
        }
    };
}

fn build<DB: SagaDatabase>(
    outbox: &chassis_messaging::Outbox<DB>,
    definition: SagaDefinition<OrderData>,
    finished: impl Fn(&str) + Send + Sync + 'static,
) -> Result<Saga<DB, OrderData>, Error>
where
    for<'c> Tx<'c>: From<&'c mut DB::Connection>,
{
    Ok(
        Saga::new(definition, outbox.clone(), SagaConfig::default())?
            .project(|conn, t, saga| project(Tx::from(conn), t, saga))
            .on_committed(move |t| {
                if t.finished {
                    finished(&t.saga_id);
                }
            }),
    )
}

impl OrderSaga {
    /// The saga of [`definition`] on `db`; `finished` is called with an order's id once a
    /// transition that ended it (by a reply or a timeout) committed.
    pub fn new(
        db: &Db,
        shop: &Shop,
        step_timeout: Duration,
        finished: impl Fn(&str) + Send + Sync + 'static,
    ) -> Result<Self, Error> {
        let definition = definition(shop, step_timeout);
        let engine = match db {
            Db::Sqlite(o) => Engine::Sqlite(build(o, definition, finished)?),
            Db::Postgres(o) => Engine::Postgres(build(o, definition, finished)?),
        };
        Ok(Self {
            db: db.clone(),
            shop: shop.clone(),
            step_timeout,
            engine,
        })
    }

    /// Creates the saga tables (and the outbox's); the [`component`](Self::component) does
    /// at start.
    pub async fn migrate(&self) -> Result<(), Error> {
        either!(&self.engine, |s| s.migrate().await)
    }

    /// The lifecycle component: creates the saga tables at start, fires step timeouts until
    /// stop.
    pub fn component(&self) -> Box<dyn chassis_core::lifecycle::Component> {
        either!(&self.engine, |s| Box::new(s.component()))
    }

    /// The consumer handler of the replies (inventory, payments): each applied once; the
    /// replies handled at the same time share one transaction (`INBOX_GROUP_COMMIT`, see
    /// [`inbox_group_config`](shop_common::service::inbox_group_config)).
    ///
    /// # Errors
    /// An invalid `INBOX_GROUP_COMMIT`.
    pub fn handler(&self) -> Result<impl Handler + use<>, chassis_core::BoxError> {
        let config = shop_common::service::inbox_group_config()?;
        let handler = match &self.engine {
            Engine::Sqlite(s) => EngineHandler::Sqlite(s.handler().group_commit(config)?),
            Engine::Postgres(s) => EngineHandler::Postgres(s.handler().group_commit(config)?),
        };
        Ok(move |msg: IncomingMessage| {
            shop_common::db::record_wait("orders.saga", &msg);
            match &handler {
                EngineHandler::Sqlite(h) => h.handle(msg),
                EngineHandler::Postgres(h) => h.handle(msg),
            }
        })
    }

    /// Fires the step timeouts due now (the [`component`](Self::component) does it
    /// continuously); returns how many fired.
    pub async fn fire_due(&self) -> Result<usize, Error> {
        either!(&self.engine, |s| Ok(s.fire_due().await?.len()))
    }

    /// Places an order: the read model row (`PENDING`/`RESERVING`) and its lines, and the
    /// saga started in the same transaction: `order.placed` (which inventory reserves on)
    /// sent, the step timeout scheduled. With an `idempotency_key` seen before, returns the
    /// existing order and sends nothing, even when two requests race (the key is `UNIQUE`).
    pub async fn place(&self, new: &NewOrder, key: Option<&str>) -> Result<Placed, Error> {
        let db = |e| Error::with_source(ErrorKind::Database, e);
        let mut txn = self.db.begin().await?;
        let id = uuid::Uuid::now_v7().to_string();
        // The key's order, new or not (the no-op update makes `RETURNING` name the existing one).
        let insert = "INSERT INTO orders (id, customer_id, payment_method, idempotency_key, status, \
            step, created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) ON CONFLICT \
            (idempotency_key) DO UPDATE SET idempotency_key = excluded.idempotency_key RETURNING id";
        let (customer, method) = (&new.customer_id, &new.payment_method);
        let args = [(&id).into(), customer.into(), method.into(), key.into()];
        let args = [
            &args[..],
            &[PENDING.into(), STEP_RESERVING.into(), now_ms().into()],
        ]
        .concat();
        let row = txn.tx().fetch_optional(insert, &args).await.map_err(db)?;
        let order_id: String = row
            .ok_or(sqlx::Error::RowNotFound)
            .and_then(|r| r.get("id"))
            .map_err(db)?;
        let created = order_id == id;
        if created {
            let items = new.merged_items();
            for item in &items {
                let line = [(&id).into(), (&item.sku).into(), item.quantity.into()];
                let sql = "INSERT INTO order_items (order_id, sku, quantity) VALUES ($1, $2, $3)";
                txn.tx().execute(sql, &line).await.map_err(db)?;
            }
            let (shop, timeout) = (&self.shop, self.step_timeout);
            let placed = OrderPlaced {
                order_id: id.clone(),
                customer_id: customer.clone(),
                items,
                payment_method: method.clone(),
            };
            let data = OrderData {
                customer_id: customer.clone(),
                payment_method: method.clone(),
                ..OrderData::default()
            };
            let start = |step: &mut Step<'_, OrderData>| {
                send(shop, step, &Emit::event(ORDER_PLACED, &id, &placed));
                step.schedule(STEP_TIMEOUT, timeout);
                step.transition_to(STEP_RESERVING);
            };
            match (&self.engine, &mut txn) {
                (Engine::Sqlite(s), Txn::Sqlite(tx, _)) => s.start(tx, &id, data, start).await?,
                (Engine::Postgres(s), Txn::Postgres(tx, _)) => {
                    s.start(tx, &id, data, start).await?
                }
                _ => {
                    return Err(Error::invalid_config(
                        "saga and transaction on different databases",
                    ));
                }
            };
        }
        let order = read(txn.tx(), &order_id).await.map_err(db)?;
        let order = order.ok_or_else(|| db(sqlx::Error::RowNotFound))?;
        txn.commit().await?;
        Ok(Placed { order, created })
    }
}

/// An order and its lines in one statement (one row per line; a line-less order, which the
/// API never creates, would come as one row without a line): one round trip instead of two,
/// which on SQLite is two context switches to sqlx's worker thread fewer per read.
const ORDER_WITH_ITEMS: &str = "SELECT o.id, o.customer_id, o.status, o.step, o.reason, \
     o.payment_method, o.amount_cents, o.charge_id, o.compensations, o.created_ms, \
     o.finished_ms, i.sku, i.quantity FROM orders o \
     LEFT JOIN order_items i ON i.order_id = o.id WHERE o.id = $1 ORDER BY i.sku";

/// Reads an order with its lines (in a transaction, or on a connection of the pool).
async fn read(mut tx: Tx<'_>, id: &str) -> Result<Option<Order>, sqlx::Error> {
    let rows = tx.fetch_all(ORDER_WITH_ITEMS, &[id.into()]).await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    order_from(row, &rows).map(Some)
}

/// The order of `row` with the lines of `rows` (each a row of [`ORDER_WITH_ITEMS`]).
fn order_from(row: &Row, rows: &[Row]) -> Result<Order, sqlx::Error> {
    let mut items = Vec::with_capacity(rows.len());
    for r in rows {
        if let (Some(sku), Some(quantity)) = (r.get("sku")?, r.get("quantity")?) {
            items.push(Item { sku, quantity });
        }
    }
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

/// Reads an order with its lines.
pub async fn get(db: &Db, id: &str) -> Result<Option<Order>, sqlx::Error> {
    match db {
        Db::Sqlite(o) => read(Tx::from(&mut *o.pool().acquire().await?), id).await,
        Db::Postgres(o) => read(Tx::from(&mut *o.pool().acquire().await?), id).await,
    }
}

/// Counts orders by status (for the service's stats and the launcher's summary).
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
    use std::sync::{Arc, Mutex};

    use chassis_messaging::amqp::consumer::Outcome;
    use chassis_messaging::amqp::topology::{ExchangeConfig, QueueConfig, TopologyConfig};
    use chassis_messaging::memory::MemoryBroker;
    use chassis_messaging::sql::outbox::OutboxDatabase;
    use chassis_messaging::{Outbox, Relay, RelayConfig};
    use serde_json::{Value, json};
    use shop_common::events::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE};

    use super::*;

    async fn sqlite() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("orders.db").display());
        (dir, Db::open(&url).unwrap())
    }

    type Finished = Arc<Mutex<Vec<String>>>;

    /// The saga on `db` (tables created), and the ids it announced as finished.
    async fn saga_on(db: &Db, step_timeout: Duration) -> (OrderSaga, Finished) {
        db.execute_script(SCHEMA).await.unwrap();
        let finished = Finished::default();
        let seen = finished.clone();
        let shop = Shop::from_env("orders");
        let saga = OrderSaga::new(db, &shop, step_timeout, move |id| {
            seen.lock().unwrap().push(id.to_owned())
        })
        .unwrap();
        saga.migrate().await.unwrap();
        (saga, finished)
    }

    fn new_order() -> NewOrder {
        let item = |sku: &str, quantity| Item {
            sku: sku.into(),
            quantity,
        };
        NewOrder {
            customer_id: "c1".into(),
            items: vec![item("b", 1), item("a", 2), item("b", 1)],
            payment_method: "card_ok".into(),
        }
    }

    async fn place(saga: &OrderSaga, key: Option<&str>) -> String {
        saga.place(&new_order(), key).await.unwrap().order.id
    }

    /// A reply as inventory or payments send it.
    fn reply<P: Versioned + Serialize>(
        kind: &'static str,
        id: &str,
        payload: &P,
    ) -> IncomingMessage {
        let emit = Emit::event(kind, id, payload);
        let exchange = Shop::from_env("orders").name(EVENTS_EXCHANGE);
        IncomingMessage::from_outgoing(emit.envelope("others", None).to_message(&exchange).unwrap())
    }

    async fn handle(saga: &OrderSaga, msg: IncomingMessage) -> Outcome {
        saga.handler().unwrap().handle(msg).await
    }

    fn reserved(id: &str, amount_cents: i64) -> IncomingMessage {
        let e = InventoryReserved {
            order_id: id.into(),
            amount_cents,
        };
        reply(INVENTORY_RESERVED, id, &e)
    }

    fn paid(id: &str) -> IncomingMessage {
        let e = PaymentSucceeded {
            order_id: id.into(),
            charge_id: "ch_1".into(),
            amount_cents: 900,
        };
        reply(PAYMENT_SUCCEEDED, id, &e)
    }

    fn declined(id: &str, reason: &str) -> IncomingMessage {
        let e = PaymentFailed {
            order_id: id.into(),
            reason: reason.into(),
        };
        reply(PAYMENT_FAILED, id, &e)
    }

    async fn order(db: &Db, id: &str) -> Order {
        get(db, id).await.unwrap().unwrap()
    }

    /// Relays what the outbox holds; returns (order, type, payload) in publishing order.
    async fn sent(db: &Db) -> Vec<(String, String, Value)> {
        async fn relay<DB: OutboxDatabase>(outbox: &Outbox<DB>) -> Vec<(String, String, Value)> {
            let shop = Shop::from_env("orders");
            let mut topology = TopologyConfig::new();
            for (i, exchange) in [EVENTS_EXCHANGE, COMMANDS_EXCHANGE].iter().enumerate() {
                let exchange = shop.name(exchange);
                topology = topology
                    .exchange(ExchangeConfig::topic(&exchange))
                    .queue(QueueConfig::new(format!("all-{i}")).bind(exchange, "#"));
            }
            let broker = Arc::new(MemoryBroker::new());
            broker.declare(&topology).unwrap();
            let relay = Relay::new(outbox.clone(), broker.clone(), RelayConfig::default());
            relay.unwrap().run_until_idle().await.unwrap();
            let subject = |m: &chassis_messaging::OutgoingMessage| match m
                .headers
                .get(chassis_messaging::envelope::SUBJECT)
            {
                Some(chassis_messaging::message::HeaderValue::String(s)) => s.clone(),
                other => panic!("no subject: {other:?}"),
            };
            broker
                .published()
                .iter()
                .map(|m| {
                    (
                        subject(m),
                        m.routing_key.clone(),
                        serde_json::from_slice(&m.body).unwrap(),
                    )
                })
                .collect()
        }
        match db {
            Db::Sqlite(o) => relay(o).await,
            Db::Postgres(o) => relay(o).await,
        }
    }

    fn kinds<'a>(sent: &'a [(String, String, Value)], id: &str) -> Vec<&'a str> {
        sent.iter()
            .filter(|(order, ..)| order == id)
            .map(|(_, kind, _)| kind.as_str())
            .collect()
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
        let (_dir, db) = sqlite().await;
        let (saga, finished) = saga_on(&db, Duration::from_secs(30)).await;
        let placed = saga.place(&new_order(), None).await.unwrap();
        assert!(placed.created);
        let merged = vec![
            Item {
                sku: "a".into(),
                quantity: 2,
            },
            Item {
                sku: "b".into(),
                quantity: 2,
            },
        ];
        assert_eq!(placed.order.items, merged);
        let id = placed.order.id.clone();
        assert_eq!(order(&db, &id).await, placed.order, "the read model");
        let reserved = reserved(&id, 900);
        assert_eq!(handle(&saga, reserved.clone()).await, Outcome::Ack);
        // Redelivered, and sent again under a new id: neither moves the order twice.
        assert_eq!(handle(&saga, reserved).await, Outcome::Ack);
        assert_eq!(handle(&saga, self::reserved(&id, 1)).await, Outcome::Ack);
        let o = order(&db, &id).await;
        assert_eq!(
            (o.status.as_str(), o.step.as_str(), o.amount_cents),
            (PENDING, STEP_CHARGING, Some(900))
        );
        assert!(finished.lock().unwrap().is_empty());
        assert_eq!(handle(&saga, paid(&id)).await, Outcome::Ack);
        let o = order(&db, &id).await;
        assert_eq!(
            (
                o.status.as_str(),
                o.step.as_str(),
                o.charge_id.as_deref(),
                o.amount_cents
            ),
            (CONFIRMED, STEP_DONE, Some("ch_1"), Some(900))
        );
        assert!(o.finished_ms.is_some());
        assert_eq!(
            *finished.lock().unwrap(),
            [id.as_str()],
            "announced once committed"
        );
        assert_eq!(
            count_by_status(&db).await.unwrap(),
            vec![(CONFIRMED.to_owned(), 1)]
        );

        let sent = sent(&db).await;
        assert_eq!(
            kinds(&sent, &id),
            [ORDER_PLACED, CMD_PAYMENT_CHARGE, ORDER_CONFIRMED]
        );
        assert_eq!(
            sent[0].2["items"],
            json!([{"sku": "a", "quantity": 2}, {"sku": "b", "quantity": 2}])
        );
        assert_eq!(
            sent[1].2,
            json!({"order_id": id, "amount_cents": 900, "payment_method": "card_ok"})
        );
        assert_eq!(
            sent[2].2,
            json!({"order_id": id, "customer_id": "c1", "status": CONFIRMED, "reason": null})
        );
    }

    #[tokio::test]
    async fn inventory_reserved_version_1_is_upcast_and_bad_replies_are_refused() {
        let (_dir, db) = sqlite().await;
        let (saga, _) = saga_on(&db, Duration::from_secs(30)).await;
        let id = place(&saga, None).await;
        // A payment reason over its limit: refused (dead-lettered), the order untouched.
        let bad = reply(
            PAYMENT_FAILED,
            &id,
            &PaymentFailed {
                order_id: id.clone(),
                reason: "r".repeat(limits::MAX_REASON_LEN + 1),
            },
        );
        let reserved_v1 = {
            let v1 = shop_common::events::InventoryReservedV1 {
                order_id: id.clone(),
                amount: 4.35,
            };
            let exchange = Shop::from_env("orders").name(EVENTS_EXCHANGE);
            let envelope = Envelope::new("/shop/inventory", INVENTORY_RESERVED, v1)
                .version(1)
                .subject(id.clone());
            IncomingMessage::from_outgoing(envelope.to_message(&exchange).unwrap())
        };
        assert_eq!(handle(&saga, reserved_v1).await, Outcome::Ack);
        assert_eq!(order(&db, &id).await.amount_cents, Some(435));
        assert!(
            matches!(handle(&saga, bad).await, Outcome::Reject { reason } if reason.contains("reason"))
        );
        assert_eq!(order(&db, &id).await.status, PENDING);
        let future = {
            let exchange = Shop::from_env("orders").name(EVENTS_EXCHANGE);
            let envelope = Envelope::new("/shop/payments", PAYMENT_SUCCEEDED, json!({}))
                .version(2)
                .subject(id.clone());
            IncomingMessage::from_outgoing(envelope.to_message(&exchange).unwrap())
        };
        assert!(
            matches!(handle(&saga, future).await, Outcome::Reject { reason } if reason.contains("version 2"))
        );
        assert_eq!(order(&db, &id).await.step, STEP_CHARGING);
    }

    #[tokio::test]
    async fn declined_payment_fails_and_releases_the_reservation() {
        let (_dir, db) = sqlite().await;
        let (saga, finished) = saga_on(&db, Duration::from_secs(30)).await;
        let id = place(&saga, None).await;
        assert_eq!(handle(&saga, reserved(&id, 900)).await, Outcome::Ack);
        assert_eq!(
            handle(&saga, declined(&id, "card_declined")).await,
            Outcome::Ack
        );
        let o = order(&db, &id).await;
        assert_eq!(
            (o.status.as_str(), o.reason.as_deref(), o.compensations),
            (FAILED, Some("card_declined"), 1)
        );
        // A late success after the failure changes nothing.
        assert_eq!(handle(&saga, paid(&id)).await, Outcome::Ack);
        assert_eq!(order(&db, &id).await.status, FAILED);
        assert_eq!(*finished.lock().unwrap(), [id.as_str()]);
        let sent = sent(&db).await;
        assert_eq!(
            kinds(&sent, &id),
            [
                ORDER_PLACED,
                CMD_PAYMENT_CHARGE,
                ORDER_FAILED,
                CMD_INVENTORY_RELEASE
            ]
        );
        assert_eq!(
            sent[3].2,
            json!({"order_id": id, "reason": "card_declined"})
        );
    }

    #[tokio::test]
    async fn out_of_stock_fails_without_compensation() {
        let (_dir, db) = sqlite().await;
        let (saga, _) = saga_on(&db, Duration::from_secs(30)).await;
        let id = place(&saga, None).await;
        let rejected = InventoryRejected {
            order_id: id.clone(),
            reason: "out_of_stock".into(),
            sku: "a".into(),
        };
        assert_eq!(
            handle(&saga, reply(INVENTORY_REJECTED, &id, &rejected)).await,
            Outcome::Ack
        );
        let o = order(&db, &id).await;
        assert_eq!(
            (o.reason.as_deref(), o.compensations),
            (Some("out_of_stock"), 0)
        );
        let sent = sent(&db).await;
        assert_eq!(kinds(&sent, &id), [ORDER_PLACED, ORDER_FAILED]);
        assert_eq!(sent[1].2["reason"], "out_of_stock");
    }

    #[tokio::test]
    async fn same_idempotency_key_returns_the_same_order() {
        let (_dir, db) = sqlite().await;
        let (saga, _) = saga_on(&db, Duration::from_secs(30)).await;
        let a = saga
            .place(&new_order(), Some("client-1:key-1"))
            .await
            .unwrap();
        let b = saga
            .place(&new_order(), Some("client-1:key-1"))
            .await
            .unwrap();
        assert!(a.created && !b.created);
        assert_eq!(a.order, b.order);
        let c = place(&saga, Some("client-1:key-2")).await;
        assert_ne!(a.order.id, c);
        let total: i64 = count_by_status(&db)
            .await
            .unwrap()
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(total, 2);
        // One `order.placed` per order, none for the replay.
        let sent = sent(&db).await;
        assert_eq!(
            (kinds(&sent, &a.order.id), kinds(&sent, &c)),
            (vec![ORDER_PLACED], vec![ORDER_PLACED])
        );
    }

    #[tokio::test]
    async fn overdue_steps_fail_with_compensation_and_late_replies_are_ignored() {
        let (_dir, db) = sqlite().await;
        let (saga, finished) = saga_on(&db, Duration::ZERO).await;
        let reserving = place(&saga, None).await;
        let charging = place(&saga, None).await;
        assert_eq!(handle(&saga, reserved(&charging, 100)).await, Outcome::Ack);
        let (patient, _) = saga_on(&db, Duration::from_secs(3600)).await;
        let fresh = place(&patient, None).await;

        assert_eq!(saga.fire_due().await.unwrap(), 2);
        let o = order(&db, &charging).await;
        assert_eq!(
            (o.reason.as_deref(), o.compensations),
            (Some("payment_timeout"), 2)
        );
        let o = order(&db, &reserving).await;
        assert_eq!(
            (o.reason.as_deref(), o.compensations),
            (Some("inventory_timeout"), 1)
        );
        let mut ended = finished.lock().unwrap().clone();
        ended.sort();
        let mut expected = vec![reserving.clone(), charging.clone()];
        expected.sort();
        assert_eq!(ended, expected);
        // The late payment does not resurrect the order; the fresh one waits.
        assert_eq!(handle(&saga, paid(&charging)).await, Outcome::Ack);
        assert_eq!(order(&db, &charging).await.status, FAILED);
        assert_eq!(order(&db, &fresh).await.status, PENDING);
        assert_eq!(saga.fire_due().await.unwrap(), 0, "each timeout fires once");

        let sent = sent(&db).await;
        assert_eq!(
            kinds(&sent, &charging),
            [
                ORDER_PLACED,
                CMD_PAYMENT_CHARGE,
                ORDER_FAILED,
                CMD_PAYMENT_REFUND,
                CMD_INVENTORY_RELEASE
            ],
            "refund, then release: newest first"
        );
        assert_eq!(
            kinds(&sent, &reserving),
            [ORDER_PLACED, ORDER_FAILED, CMD_INVENTORY_RELEASE]
        );
        let reasons: Vec<&Value> = sent
            .iter()
            .filter(|(o, k, _)| {
                o == &charging && k.as_str() != ORDER_PLACED && k.as_str() != CMD_PAYMENT_CHARGE
            })
            .map(|(_, _, p)| &p["reason"])
            .collect();
        assert_eq!(reasons, [&json!("payment_timeout"); 3]);
    }

    #[tokio::test]
    async fn the_saga_runs_on_postgres_too() {
        let db = shop_common::db::postgres_test_db().await.unwrap();
        let (saga, _) = saga_on(&db, Duration::from_secs(30)).await;
        let a = saga.place(&new_order(), Some("pg-key")).await.unwrap();
        let b = saga.place(&new_order(), Some("pg-key")).await.unwrap();
        assert_eq!(a.order.id, b.order.id);
        let id = a.order.id;
        assert_eq!(handle(&saga, reserved(&id, 900)).await, Outcome::Ack);
        assert_eq!(
            handle(&saga, declined(&id, "card_declined")).await,
            Outcome::Ack
        );
        let o = order(&db, &id).await;
        assert_eq!(
            (o.status.as_str(), o.compensations, o.items.len()),
            (FAILED, 1, 2)
        );
        assert_eq!(
            saga.fire_due().await.unwrap(),
            0,
            "no timeout outlives its saga"
        );
        assert_eq!(
            kinds(&sent(&db).await, &id),
            [
                ORDER_PLACED,
                CMD_PAYMENT_CHARGE,
                ORDER_FAILED,
                CMD_INVENTORY_RELEASE
            ]
        );
    }
}
