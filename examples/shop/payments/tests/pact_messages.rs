//! Payments' message pact with orders (Pact V4 asynchronous messages, consumer side): the
//! `payment.charge` and `payment.refund` commands, as payments reads them. Each pact example
//! goes through payments' own decoding (`shop_common::events::decode`) and the domain
//! functions its queue handlers call around the provider call, on SQLite: the charge is
//! recorded with the example's amount (as after a provider's `charged`) and answered
//! `payment.succeeded`; the refund finds that charge to refund and records it. Then
//! `examples/shop/pacts/payments-orders-messages.json` is written.

use shop_common::db::Db;
use shop_common::events::{
    CMD_PAYMENT_CHARGE, CMD_PAYMENT_REFUND, COMMANDS_EXCHANGE, ChargePayment, Compensate,
    PAYMENT_REFUNDED, PAYMENT_SUCCEEDED, decode,
};
use shop_contract::messages::{Expected, MessagePact};
use shop_contract::pact_consumer::prelude::*;
use shop_payments::domain::{self, ChargeOutcome};

const ORDER: &str = "o-pact-1";

fn command(kind: &'static str) -> Expected<'static> {
    Expected {
        exchange: COMMANDS_EXCHANGE,
        kind,
        version: 1,
        source: "/shop/orders",
        subject: ORDER,
    }
}

#[tokio::test]
async fn reads_what_orders_sends() {
    let mut pact = MessagePact::new("payments", "orders");
    pact.message(
        "charge an order",
        command(CMD_PAYMENT_CHARGE),
        json_pattern!({
            "order_id": like!(ORDER),
            "amount_cents": like!(900),
            "payment_method": like!("card_ok")
        }),
    )
    .message(
        "refund an order",
        command(CMD_PAYMENT_REFUND),
        json_pattern!({
            "order_id": like!(ORDER),
            "reason": like!("payment_timeout")
        }),
    );

    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(&format!("sqlite://{}", dir.path().join("p.db").display())).unwrap();
    domain::migrate(&db).await.unwrap();

    // payment.charge: a new order is charged under its idempotency key, the amount recorded.
    let charge: ChargePayment = decode(&pact.example("charge an order")).expect("decodes");
    assert_eq!(domain::existing(&db, &charge.order_id).await.unwrap(), None);
    assert_eq!(domain::idempotency_key(&charge.order_id), "charge-o-pact-1");
    let mut txn = db.begin().await.unwrap();
    let charged = ChargeOutcome::Charged {
        charge_id: "ch_pact".into(),
    };
    let recorded = domain::record_charge(&mut txn.tx(), &charge, &charged)
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(recorded.emits.len(), 1);
    assert_eq!(recorded.emits[0].kind, PAYMENT_SUCCEEDED);
    assert_eq!(recorded.emits[0].payload["amount_cents"], 900);
    assert_eq!(recorded.emits[0].payload["order_id"], ORDER);

    // payment.refund: the order's charge is found and its refund recorded.
    let refund: Compensate = decode(&pact.example("refund an order")).expect("decodes");
    let mut txn = db.begin().await.unwrap();
    let to_refund = domain::begin_refund(&mut txn.tx(), &refund.order_id, &refund.reason)
        .await
        .unwrap();
    assert_eq!(to_refund.as_deref(), Some("ch_pact"));
    let emits = domain::record_refund(&mut txn.tx(), &refund.order_id, "ch_pact")
        .await
        .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(emits[0].kind, PAYMENT_REFUNDED);
    assert_eq!(
        domain::existing(&db, ORDER).await.unwrap().as_deref(),
        Some(domain::REFUNDED)
    );

    pact.write();
}
