//! Notifications' message pacts (Pact V4 asynchronous messages, consumer side) with each
//! service whose events it reads: orders (`order.placed`, `order.confirmed`, `order.failed`),
//! inventory (`inventory.reserved`, `.rejected`, `.released`) and payments
//! (`payment.succeeded`, `.failed`, `.refunded`). Every pact example goes through the
//! order-history consumer's handler (`order_history::project`, decoding included) on SQLite;
//! the finished orders also through the notification consumer's decoding
//! (`shop_common::events::decode`) and `domain::record`. Then
//! `examples/shop/pacts/notifications-<producer>-messages.json` is written.

use shop_common::db::Db;
use shop_common::events::{
    EVENTS_EXCHANGE, INVENTORY_REJECTED, INVENTORY_RELEASED, INVENTORY_RESERVED, ORDER_CONFIRMED,
    ORDER_FAILED, ORDER_PLACED, OrderFinished, PAYMENT_FAILED, PAYMENT_REFUNDED, PAYMENT_SUCCEEDED,
    decode,
};
use shop_contract::messages::{Expected, MessagePact};
use shop_contract::pact_consumer::prelude::*;
use shop_notifications::domain;
use shop_notifications::order_history::{self, projection};

const ORDER: &str = "o-pact-1";

fn event(kind: &'static str, producer: &'static str, version: u32) -> Expected<'static> {
    Expected {
        exchange: EVENTS_EXCHANGE,
        kind,
        version,
        source: producer,
        subject: ORDER,
    }
}

async fn fresh_db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&format!("sqlite://{}", dir.path().join("n.db").display())).unwrap();
    domain::migrate(&db).await.unwrap();
    db.execute_script(projection::SCHEMA).await.unwrap();
    (dir, db)
}

/// Runs the order-history handler on the pact's example `description`.
async fn project(db: &Db, pact: &MessagePact, description: &str) {
    let mut txn = db.begin().await.unwrap();
    let emits = order_history::project(pact.example(description), txn.tx())
        .await
        .unwrap_or_else(|e| panic!("{description}: {e:?}"));
    txn.commit().await.unwrap();
    assert!(emits.is_empty());
}

/// The order's history row: status, reason, items, amount, number of events.
async fn row(db: &Db) -> (String, Option<String>, Option<i64>, Option<i64>, i64) {
    let r = db
        .fetch_optional(
            "SELECT status, reason, items, amount_cents, events FROM order_history WHERE order_id = $1",
            &[ORDER.into()],
        )
        .await
        .unwrap()
        .expect("the order's history row");
    (
        r.get("status").unwrap(),
        r.get("reason").unwrap(),
        r.get("items").unwrap(),
        r.get("amount_cents").unwrap(),
        r.get("events").unwrap(),
    )
}

/// The history lines' details, oldest first.
async fn details(db: &Db) -> Vec<Option<String>> {
    db.fetch_all(
        "SELECT detail FROM order_history_events WHERE order_id = $1 ORDER BY event_id",
        &[ORDER.into()],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get("detail").unwrap())
    .collect()
}

#[tokio::test]
async fn reads_what_orders_sends() {
    let mut pact = MessagePact::new("notifications", "orders");
    let finished = |status: &str| {
        json_pattern!({
            "order_id": like!(ORDER),
            "customer_id": like!("c-pact"),
            "status": term!("^(CONFIRMED|FAILED)$", status)
        })
    };
    pact.message(
        "an order was placed",
        event(ORDER_PLACED, "/shop/orders", 1),
        json_pattern!({
            "order_id": like!(ORDER),
            "customer_id": like!("c-pact"),
            "items": each_like!({"sku": like!("tea"), "quantity": like!(2)}),
            "payment_method": like!("card_ok")
        }),
    )
    .message(
        "an order was confirmed",
        event(ORDER_CONFIRMED, "/shop/orders", 1),
        finished("CONFIRMED"),
    )
    .message(
        "an order failed",
        event(ORDER_FAILED, "/shop/orders", 1),
        json_pattern!({
            "order_id": like!(ORDER),
            "customer_id": like!("c-pact"),
            "status": term!("^(CONFIRMED|FAILED)$", "FAILED"),
            "reason": like!("card_declined")
        }),
    );

    // The order history: placed, then confirmed.
    let (_dir, db) = fresh_db().await;
    project(&db, &pact, "an order was placed").await;
    assert_eq!(row(&db).await, ("PLACED".into(), None, Some(2), None, 1));
    project(&db, &pact, "an order was confirmed").await;
    let orders = projection::for_customer(&db, "c-pact", 10).await.unwrap();
    assert_eq!(orders.len(), 1);
    assert_eq!(
        (orders[0].status.as_str(), orders[0].items),
        ("CONFIRMED", Some(2))
    );

    // The notification of each finished order, one per order.
    for (description, kind, text) in [
        ("an order was confirmed", "order_confirmed", "is confirmed"),
        ("an order failed", "order_failed", "(card_declined)"),
    ] {
        let (_dir, db) = fresh_db().await;
        let e: OrderFinished = decode(&pact.example(description)).expect("decodes");
        let mut txn = db.begin().await.unwrap();
        assert!(domain::record(&mut txn.tx(), &e).await.unwrap());
        txn.commit().await.unwrap();
        let sent = domain::list(&db, Some(ORDER)).await.unwrap();
        assert_eq!(sent.len(), 1, "{description}");
        assert_eq!(
            (sent[0].kind.as_str(), sent[0].customer_id.as_str()),
            (kind, "c-pact")
        );
        assert!(sent[0].message.contains(text), "{}", sent[0].message);
        // And its line in the order history.
        project(&db, &pact, description).await;
        assert_eq!(row(&db).await.4, 1);
    }
    pact.write();
}

#[tokio::test]
async fn reads_what_inventory_sends() {
    let mut pact = MessagePact::new("notifications", "inventory");
    pact.message(
        "stock was reserved for an order",
        event(INVENTORY_RESERVED, "/shop/inventory", 2),
        json_pattern!({"order_id": like!(ORDER), "amount_cents": like!(900)}),
    )
    .message(
        "stock could not be reserved for an order",
        event(INVENTORY_REJECTED, "/shop/inventory", 1),
        json_pattern!({
            "order_id": like!(ORDER),
            "reason": term!("^(out_of_stock|unknown_product)$", "out_of_stock"),
            "sku": like!("tea")
        }),
    )
    .message(
        "the reservation of an order was released",
        event(INVENTORY_RELEASED, "/shop/inventory", 1),
        json_pattern!({"order_id": like!(ORDER)}),
    );

    let (_dir, db) = fresh_db().await;
    project(&db, &pact, "stock was reserved for an order").await;
    assert_eq!(
        row(&db).await,
        ("RESERVED".into(), None, None, Some(900), 1)
    );
    project(&db, &pact, "the reservation of an order was released").await;
    assert_eq!(row(&db).await.4, 2);

    let (_dir, db) = fresh_db().await;
    project(&db, &pact, "stock could not be reserved for an order").await;
    assert_eq!(
        row(&db).await,
        (
            "REJECTED".into(),
            Some("out_of_stock (tea)".into()),
            None,
            None,
            1
        )
    );
    pact.write();
}

#[tokio::test]
async fn reads_what_payments_sends() {
    let mut pact = MessagePact::new("notifications", "payments");
    pact.message(
        "a payment succeeded",
        event(PAYMENT_SUCCEEDED, "/shop/payments", 1),
        json_pattern!({
            "order_id": like!(ORDER),
            "charge_id": like!("ch_pact"),
            "amount_cents": like!(900)
        }),
    )
    .message(
        "a payment was refunded",
        event(PAYMENT_REFUNDED, "/shop/payments", 1),
        json_pattern!({"order_id": like!(ORDER), "charge_id": like!("ch_pact")}),
    )
    .message(
        "a payment failed",
        event(PAYMENT_FAILED, "/shop/payments", 1),
        json_pattern!({"order_id": like!(ORDER), "reason": like!("card_declined")}),
    );

    let (_dir, db) = fresh_db().await;
    project(&db, &pact, "a payment succeeded").await;
    assert_eq!(row(&db).await.0, "PAID");
    project(&db, &pact, "a payment was refunded").await;
    assert_eq!(row(&db).await.4, 2);
    assert_eq!(
        details(&db).await,
        [Some("ch_pact".into()), Some("ch_pact".into())]
    );

    let (_dir, db) = fresh_db().await;
    project(&db, &pact, "a payment failed").await;
    assert_eq!(
        row(&db).await,
        (
            "PAYMENT_FAILED".into(),
            Some("card_declined".into()),
            None,
            None,
            1
        )
    );
    pact.write();
}
