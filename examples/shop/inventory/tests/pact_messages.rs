//! The inventory's message pact with orders (Pact V4 asynchronous messages, consumer side):
//! `order.placed` (reserve) and the `inventory.release` command (compensation), as the
//! inventory reads them. Each pact example goes through the inventory's own decoding
//! (`shop_common::events::decode`, which dead-letters what it cannot read) and the domain
//! function its queue handler calls, on SQLite; then `examples/shop/pacts/inventory-orders-messages.json`
//! is written.

use shop_common::db::Db;
use shop_common::events::{
    CMD_INVENTORY_RELEASE, COMMANDS_EXCHANGE, Compensate, EVENTS_EXCHANGE, INVENTORY_RELEASED,
    INVENTORY_RESERVED, ORDER_PLACED, OrderPlaced, decode,
};
use shop_contract::messages::{Expected, MessagePact};
use shop_contract::pact_consumer::prelude::*;
use shop_inventory::domain::{self, Product};

const ORDER: &str = "o-pact-1";

#[tokio::test]
async fn reads_what_orders_sends() {
    let mut pact = MessagePact::new("inventory", "orders");
    pact.message(
        "an order was placed",
        Expected {
            exchange: EVENTS_EXCHANGE,
            kind: ORDER_PLACED,
            version: 1,
            source: "/shop/orders",
            subject: ORDER,
        },
        json_pattern!({
            "order_id": like!(ORDER),
            "customer_id": like!("c-pact"),
            "items": each_like!({"sku": like!("tea"), "quantity": like!(2)}),
            "payment_method": like!("card_ok")
        }),
    )
    .message(
        "release the reservation of an order",
        Expected {
            exchange: COMMANDS_EXCHANGE,
            kind: CMD_INVENTORY_RELEASE,
            version: 1,
            source: "/shop/orders",
            subject: ORDER,
        },
        json_pattern!({
            "order_id": like!(ORDER),
            "reason": like!("payment_failed")
        }),
    );

    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&format!("sqlite://{}", dir.path().join("i.db").display())).unwrap();
    domain::migrate(&db).await.unwrap();
    let tea = Product {
        sku: "tea".into(),
        name: "Tea".into(),
        price_cents: 450,
        stock: 5,
    };
    domain::seed(&db, &[tea]).await.unwrap();
    let stock = || async { domain::list_products(&db).await.unwrap()[0].stock };

    // order.placed: two teas are reserved and priced.
    let placed: OrderPlaced = decode(&pact.example("an order was placed")).expect("decodes");
    let mut txn = db.begin().await.unwrap();
    let emits = domain::reserve(&mut txn.tx(), &placed).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(emits.len(), 1);
    assert_eq!(emits[0].kind, INVENTORY_RESERVED);
    assert_eq!(emits[0].payload["order_id"], ORDER);
    assert_eq!(emits[0].payload["amount_cents"], 900);
    assert_eq!(stock().await, 3);

    // inventory.release: the reservation goes back.
    let release: Compensate =
        decode(&pact.example("release the reservation of an order")).expect("decodes");
    let mut txn = db.begin().await.unwrap();
    let emits = domain::release(&mut txn.tx(), &release.order_id, &release.reason)
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(emits.len(), 1);
    assert_eq!(emits[0].kind, INVENTORY_RELEASED);
    assert_eq!(stock().await, 5);

    pact.write();
}
