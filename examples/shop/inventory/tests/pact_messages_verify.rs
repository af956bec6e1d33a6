//! The inventory honours its message pacts (Pact V4 asynchronous messages, provider side):
//! every event a consumer's pact expects from `inventory` (`*-inventory-messages.json` in
//! `examples/shop/pacts/`) is produced by the inventory's own domain code on SQLite
//! (`domain::reserve` for `inventory.reserved` and `inventory.rejected`, `domain::release` for
//! `inventory.released`), wrapped in the envelope its outbox publishes (`Emit::envelope` with
//! the service `inventory`), and matched against the pact: a missing or renamed field, a
//! wrong type or another attribute fails the test.

use shop_common::db::Db;
use shop_common::events::{Emit, Item, OrderPlaced};
use shop_inventory::domain::{self, Product};

fn order(id: &str, sku: &str, quantity: i64) -> OrderPlaced {
    OrderPlaced {
        order_id: id.into(),
        customer_id: "c-42".into(),
        items: vec![Item {
            sku: sku.into(),
            quantity,
        }],
        payment_method: "card_ok".into(),
    }
}

async fn one(db: &Db, f: impl AsyncFnOnce(&mut shop_common::db::Tx<'_>) -> Vec<Emit>) -> Emit {
    let mut txn = db.begin().await.unwrap();
    let mut emits = f(&mut txn.tx()).await;
    txn.commit().await.unwrap();
    assert_eq!(emits.len(), 1, "{emits:?}");
    emits.remove(0)
}

#[tokio::test]
async fn honours_its_message_pacts() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&format!("sqlite://{}", dir.path().join("i.db").display())).unwrap();
    domain::migrate(&db).await.unwrap();
    let tea = Product {
        sku: "tea".into(),
        name: "Tea".into(),
        price_cents: 450,
        stock: 3,
    };
    domain::seed(&db, &[tea]).await.unwrap();

    let reserved = one(&db, async |tx| {
        domain::reserve(tx, &order("o-1", "tea", 2)).await.unwrap()
    })
    .await;
    let rejected = one(&db, async |tx| {
        domain::reserve(tx, &order("o-2", "tea", 5)).await.unwrap()
    })
    .await;
    let released = one(&db, async |tx| {
        domain::release(tx, "o-1", "payment_failed").await.unwrap()
    })
    .await;
    let emits = [
        ("stock was reserved for an order", reserved),
        ("stock could not be reserved for an order", rejected),
        ("the reservation of an order was released", released),
    ];
    shop_contract::messages::verify_emits(
        "inventory",
        Some("0193a5c0-2222-7000-8000-000000000001"),
        &emits,
    )
    .await;
}
