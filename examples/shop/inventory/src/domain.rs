//! Inventory rules and SQL.
//!
//! **No overselling**: a reservation decrements stock with a conditional update,
//! `UPDATE products SET stock = stock - $1 WHERE sku = $2 AND stock >= $1`, so two concurrent
//! orders for the last unit cannot both succeed: on PostgreSQL the second update waits for the
//! first's row lock and re-checks the condition; on SQLite writers are serialised (`BEGIN
//! IMMEDIATE`). A `CHECK (stock >= 0)` backs it up. An order's lines are reserved all or nothing
//! in one transaction, in SKU order (no lock-order deadlocks between two multi-line orders).
//!
//! **Idempotent and race-free compensation**: the `reservations` row is the decision for an order.
//! `reserve` does nothing when a row exists; `release` of an order never reserved writes a
//! `RELEASED` tombstone, so a reservation arriving after its compensation (a late `order.placed`
//! after the saga timed out) is refused instead of leaking stock.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), chassis_core::BoxError> {
//! use shop_common::db::Db;
//! use shop_common::events::{Item, OrderPlaced, INVENTORY_RESERVED};
//! use shop_inventory::domain::{self, Product};
//!
//! let db = Db::open("sqlite::memory:")?;
//! domain::migrate(&db).await?;
//! domain::seed(&db, &[Product { sku: "tea".into(), name: "Tea".into(), price_cents: 450, stock: 1 }]).await?;
//! let order = OrderPlaced {
//!     order_id: "o-1".into(),
//!     customer_id: "c".into(),
//!     items: vec![Item { sku: "tea".into(), quantity: 1 }],
//!     payment_method: "card_ok".into(),
//! };
//! let mut txn = db.begin().await?;
//! let emitted = domain::reserve(&mut txn.tx(), &order).await?;
//! txn.commit().await?;
//! assert_eq!(emitted[0].kind, INVENTORY_RESERVED);
//! assert_eq!(domain::list_products(&db).await?[0].stock, 0);
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use chassis_core::BoxError;
use serde::{Deserialize, Serialize};
use shop_common::db::{Db, Tx, now_ms};
use shop_common::events::{
    Emit, INVENTORY_REJECTED, INVENTORY_RELEASED, INVENTORY_RESERVED, InventoryRejected,
    InventoryReleased, InventoryReserved, OrderPlaced,
};

/// The inventory schema (portable SQL).
pub const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS products (
    sku TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    price_cents BIGINT NOT NULL,
    stock BIGINT NOT NULL CHECK (stock >= 0)
);
CREATE TABLE IF NOT EXISTS reservations (
    order_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    amount_cents BIGINT NOT NULL,
    reason TEXT,
    updated_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS reservation_items (
    order_id TEXT NOT NULL,
    sku TEXT NOT NULL,
    quantity BIGINT NOT NULL,
    PRIMARY KEY (order_id, sku)
)";

/// Reservation status: stock is held for the order.
pub const RESERVED: &str = "RESERVED";
/// Reservation status: stock was given back (or the order was cancelled before reserving).
pub const RELEASED: &str = "RELEASED";
/// Reservation status: the order could not be reserved.
pub const REJECTED: &str = "REJECTED";

/// A catalogue entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Stock keeping unit (the id).
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Unit price in cents.
    pub price_cents: i64,
    /// Units available.
    pub stock: i64,
}

/// Creates the tables.
pub async fn migrate(db: &Db) -> Result<(), sqlx::Error> {
    db.execute_script(SCHEMA).await
}

/// Parses a catalogue seed: `sku:name:price_cents:stock` entries separated by `,`.
pub fn parse_seed(s: &str) -> Result<Vec<Product>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let parts: Vec<&str> = entry.split(':').collect();
            let [sku, name, price, stock] = parts[..] else {
                return Err(format!(
                    "seed entry `{entry}` is not `sku:name:price_cents:stock`"
                ));
            };
            let num = |v: &str| v.trim().parse::<i64>().ok().filter(|n| *n >= 0);
            Ok(Product {
                sku: sku.trim().to_owned(),
                name: name.trim().to_owned(),
                price_cents: num(price).ok_or_else(|| format!("bad price in `{entry}`"))?,
                stock: num(stock).ok_or_else(|| format!("bad stock in `{entry}`"))?,
            })
        })
        .collect()
}

/// The default catalogue of the demo.
pub const DEFAULT_SEED: &str = "tea:Green tea:450:100000,mug:Mug:1200:100000,\
kettle:Kettle:3900:100000,scarce:Last edition teapot:9900:5";

/// Inserts products that do not exist yet, in one transaction (existing stock is kept across
/// restarts).
pub async fn seed(db: &Db, products: &[Product]) -> Result<(), BoxError> {
    let mut txn = db.begin().await?;
    for p in products {
        txn.tx()
            .execute(
                "INSERT INTO products (sku, name, price_cents, stock) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (sku) DO NOTHING",
                &[
                    (&p.sku).into(),
                    (&p.name).into(),
                    p.price_cents.into(),
                    p.stock.into(),
                ],
            )
            .await?;
    }
    Ok(txn.commit().await?)
}

/// The catalogue with stock, by SKU.
pub async fn list_products(db: &Db) -> Result<Vec<Product>, sqlx::Error> {
    db.fetch_all(
        "SELECT sku, name, price_cents, stock FROM products ORDER BY sku",
        &[],
    )
    .await?
    .iter()
    .map(|r| {
        Ok(Product {
            sku: r.get("sku")?,
            name: r.get("name")?,
            price_cents: r.get("price_cents")?,
            stock: r.get("stock")?,
        })
    })
    .collect()
}

/// The status of an order's reservation, if any.
pub async fn reservation_status(db: &Db, order_id: &str) -> Result<Option<String>, sqlx::Error> {
    Ok(
        match db
            .fetch_optional(
                "SELECT status FROM reservations WHERE order_id = $1",
                &[order_id.into()],
            )
            .await?
        {
            Some(r) => Some(r.get::<String>("status")?),
            None => None,
        },
    )
}

/// An order's reservation as decided: its status and, for a rejection or a release, why.
pub async fn reservation(
    db: &Db,
    order_id: &str,
) -> Result<Option<(String, Option<String>)>, sqlx::Error> {
    match db
        .fetch_optional(
            "SELECT status, reason FROM reservations WHERE order_id = $1",
            &[order_id.into()],
        )
        .await?
    {
        Some(r) => Ok(Some((r.get("status")?, r.get("reason")?))),
        None => Ok(None),
    }
}

/// Reserves every line of `order` or none, in `tx`. Returns the event to publish
/// (`inventory.reserved` or `inventory.rejected`), or nothing if the order was decided before.
pub async fn reserve(tx: &mut Tx<'_>, order: &OrderPlaced) -> Result<Vec<Emit>, sqlx::Error> {
    let id = order.order_id.as_str();
    if tx
        .fetch_optional(
            "SELECT status FROM reservations WHERE order_id = $1",
            &[id.into()],
        )
        .await?
        .is_some()
    {
        return Ok(Vec::new());
    }
    // Merge duplicate SKUs; BTreeMap also fixes the lock order.
    let mut lines: BTreeMap<&str, i64> = BTreeMap::new();
    for item in &order.items {
        *lines.entry(item.sku.as_str()).or_default() += item.quantity;
    }
    let mut taken: Vec<(&str, i64)> = Vec::new();
    let mut amount = 0_i64;
    let mut rejection: Option<(&str, &str)> = None;
    if lines.is_empty() {
        rejection = Some(("", "empty_order"));
    }
    for (&sku, &qty) in &lines {
        if qty <= 0 {
            rejection = Some((sku, "invalid_quantity"));
            break;
        }
        let row = tx
            .fetch_optional(
                "UPDATE products SET stock = stock - $1 WHERE sku = $2 AND stock >= $1 RETURNING price_cents",
                &[qty.into(), sku.into()],
            )
            .await?;
        match row {
            Some(r) => {
                amount += r.get::<i64>("price_cents")? * qty;
                taken.push((sku, qty));
            }
            None => {
                let exists = tx
                    .fetch_optional("SELECT sku FROM products WHERE sku = $1", &[sku.into()])
                    .await?;
                rejection = Some((
                    sku,
                    if exists.is_some() {
                        "out_of_stock"
                    } else {
                        "unknown_product"
                    },
                ));
                break;
            }
        }
    }
    let now = now_ms();
    if let Some((sku, reason)) = rejection {
        // Give back what this transaction took: all or nothing.
        for (sku, qty) in taken {
            tx.execute(
                "UPDATE products SET stock = stock + $1 WHERE sku = $2",
                &[qty.into(), sku.into()],
            )
            .await?;
        }
        tx.execute(
            "INSERT INTO reservations (order_id, status, amount_cents, reason, updated_ms) VALUES ($1, $2, 0, $3, $4)",
            &[id.into(), REJECTED.into(), reason.into(), now.into()],
        )
        .await?;
        let event = InventoryRejected {
            order_id: id.to_owned(),
            reason: reason.to_owned(),
            sku: sku.to_owned(),
        };
        return Ok(vec![Emit::event(INVENTORY_REJECTED, id, &event)]);
    }
    for (sku, qty) in &taken {
        tx.execute(
            "INSERT INTO reservation_items (order_id, sku, quantity) VALUES ($1, $2, $3)",
            &[id.into(), (*sku).into(), (*qty).into()],
        )
        .await?;
    }
    tx.execute(
        "INSERT INTO reservations (order_id, status, amount_cents, reason, updated_ms) VALUES ($1, $2, $3, NULL, $4)",
        &[id.into(), RESERVED.into(), amount.into(), now.into()],
    )
    .await?;
    let event = InventoryReserved {
        order_id: id.to_owned(),
        amount_cents: amount,
    };
    Ok(vec![Emit::event(INVENTORY_RESERVED, id, &event)])
}

/// Releases the reservation of `order_id` (compensation), in `tx`. Returns `inventory.released`
/// when stock went back; nothing when there was nothing to release. An order never reserved gets
/// a tombstone so a late reservation is refused.
pub async fn release(
    tx: &mut Tx<'_>,
    order_id: &str,
    reason: &str,
) -> Result<Vec<Emit>, sqlx::Error> {
    let now = now_ms();
    let status = match tx
        .fetch_optional(
            "SELECT status FROM reservations WHERE order_id = $1",
            &[order_id.into()],
        )
        .await?
    {
        Some(r) => r.get::<String>("status")?,
        None => {
            tx.execute(
                "INSERT INTO reservations (order_id, status, amount_cents, reason, updated_ms) VALUES ($1, $2, 0, $3, $4)",
                &[order_id.into(), RELEASED.into(), reason.into(), now.into()],
            )
            .await?;
            return Ok(Vec::new());
        }
    };
    if status != RESERVED {
        return Ok(Vec::new());
    }
    // Only the transaction that flips RESERVED -> RELEASED gives stock back.
    let flipped = tx
        .execute(
            "UPDATE reservations SET status = $1, reason = $2, updated_ms = $3 WHERE order_id = $4 AND status = $5",
            &[RELEASED.into(), reason.into(), now.into(), order_id.into(), RESERVED.into()],
        )
        .await?;
    if flipped == 0 {
        return Ok(Vec::new());
    }
    let items = tx
        .fetch_all(
            "SELECT sku, quantity FROM reservation_items WHERE order_id = $1",
            &[order_id.into()],
        )
        .await?;
    for item in items {
        tx.execute(
            "UPDATE products SET stock = stock + $1 WHERE sku = $2",
            &[
                item.get::<i64>("quantity")?.into(),
                item.get::<String>("sku")?.into(),
            ],
        )
        .await?;
    }
    Ok(vec![Emit::event(
        INVENTORY_RELEASED,
        order_id,
        &InventoryReleased {
            order_id: order_id.to_owned(),
        },
    )])
}

#[cfg(test)]
mod tests {
    use super::*;
    use shop_common::events::Item;

    fn order(id: &str, items: &[(&str, i64)]) -> OrderPlaced {
        OrderPlaced {
            order_id: id.into(),
            customer_id: "c".into(),
            items: items
                .iter()
                .map(|(s, q)| Item {
                    sku: (*s).into(),
                    quantity: *q,
                })
                .collect(),
            payment_method: "card_ok".into(),
        }
    }

    async fn db_with(products: &str) -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(&format!("sqlite://{}", dir.path().join("inv.db").display())).unwrap();
        migrate(&db).await.unwrap();
        seed(&db, &parse_seed(products).unwrap()).await.unwrap();
        (dir, db)
    }

    async fn reserve_committed(db: &Db, o: &OrderPlaced) -> Vec<Emit> {
        let mut txn = db.begin().await.unwrap();
        let e = reserve(&mut txn.tx(), o).await.unwrap();
        txn.commit().await.unwrap();
        e
    }

    async fn stock(db: &Db, sku: &str) -> i64 {
        list_products(db)
            .await
            .unwrap()
            .into_iter()
            .find(|p| p.sku == sku)
            .unwrap()
            .stock
    }

    #[test]
    fn seed_parsing() {
        let p = parse_seed(DEFAULT_SEED).unwrap();
        assert_eq!(p.len(), 4);
        assert_eq!(
            p[3],
            Product {
                sku: "scarce".into(),
                name: "Last edition teapot".into(),
                price_cents: 9900,
                stock: 5
            }
        );
        assert!(parse_seed("a:b:c").is_err());
        assert!(parse_seed("a:b:-1:3").is_err());
    }

    #[tokio::test]
    async fn reserves_all_lines_or_none() {
        let (_d, db) = db_with("a:A:100:5,b:B:250:1").await;
        let e = reserve_committed(&db, &order("o1", &[("a", 2), ("b", 1), ("a", 1)])).await;
        assert_eq!(e[0].kind, INVENTORY_RESERVED);
        assert_eq!(e[0].payload["amount_cents"], 3 * 100 + 250);
        assert_eq!((stock(&db, "a").await, stock(&db, "b").await), (2, 0));
        // b is gone: nothing of o2 is taken, a stays at 2.
        let e = reserve_committed(&db, &order("o2", &[("a", 1), ("b", 1)])).await;
        assert_eq!(e[0].kind, INVENTORY_REJECTED);
        assert_eq!(e[0].payload["reason"], "out_of_stock");
        assert_eq!(e[0].payload["sku"], "b");
        assert_eq!(stock(&db, "a").await, 2);
        let e = reserve_committed(&db, &order("o3", &[("zzz", 1)])).await;
        assert_eq!(e[0].payload["reason"], "unknown_product");
        let e = reserve_committed(&db, &order("o4", &[("a", 0)])).await;
        assert_eq!(e[0].payload["reason"], "invalid_quantity");
        // Redelivery of a decided order: no effect, no event.
        assert!(
            reserve_committed(&db, &order("o1", &[("a", 2)]))
                .await
                .is_empty()
        );
        assert_eq!(stock(&db, "a").await, 2);
        assert_eq!(
            reservation_status(&db, "o2").await.unwrap().as_deref(),
            Some(REJECTED)
        );
    }

    #[tokio::test]
    async fn release_gives_stock_back_once_and_tombstones_unreserved_orders() {
        let (_d, db) = db_with("a:A:100:5").await;
        reserve_committed(&db, &order("o1", &[("a", 3)])).await;
        for expected in [1, 0] {
            let mut txn = db.begin().await.unwrap();
            let e = release(&mut txn.tx(), "o1", "card_declined").await.unwrap();
            txn.commit().await.unwrap();
            assert_eq!(e.len(), expected);
        }
        assert_eq!(stock(&db, "a").await, 5);
        // Compensation before the reservation: the late reservation is refused.
        let mut txn = db.begin().await.unwrap();
        assert!(
            release(&mut txn.tx(), "o2", "inventory_timeout")
                .await
                .unwrap()
                .is_empty()
        );
        txn.commit().await.unwrap();
        assert!(
            reserve_committed(&db, &order("o2", &[("a", 1)]))
                .await
                .is_empty()
        );
        assert_eq!(stock(&db, "a").await, 5);
    }

    #[tokio::test]
    async fn concurrent_orders_for_the_last_units_never_oversell() {
        let (_d, db) = db_with("last:Last:100:7").await;
        assert_no_oversell(db).await;
    }

    #[tokio::test]
    async fn concurrent_orders_never_oversell_on_postgres() {
        let db = shop_common::db::postgres_test_db().await.unwrap();
        migrate(&db).await.unwrap();
        seed(&db, &parse_seed("last:Last:100:7").unwrap())
            .await
            .unwrap();
        assert_no_oversell(db).await;
    }

    async fn assert_no_oversell(db: Db) {
        let mut tasks = Vec::new();
        for i in 0..40 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut txn = db.begin().await.unwrap();
                let e = reserve(&mut txn.tx(), &order(&format!("o{i}"), &[("last", 1)]))
                    .await
                    .unwrap();
                txn.commit().await.unwrap();
                e[0].kind
            }));
        }
        let mut reserved = 0;
        for t in tasks {
            if t.await.unwrap() == INVENTORY_RESERVED {
                reserved += 1;
            }
        }
        assert_eq!(reserved, 7);
        assert_eq!(stock(&db, "last").await, 0);
    }
}
