//! Orders' message pacts (Pact V4 asynchronous messages, consumer side) with inventory
//! (`inventory.reserved`, `inventory.rejected`) and payments (`payment.succeeded`,
//! `payment.failed`): the replies the order saga reads. Each pact example is decoded the
//! way the saga reads a reply (the payload type's versions, then its limits:
//! `shop_common::events::decode`) and the fields its transitions use are checked (the amount
//! to charge, the failure reason, the charge id). Then
//! `examples/shop/pacts/orders-<producer>-messages.json` is written.

use shop_common::events::{
    EVENTS_EXCHANGE, INVENTORY_REJECTED, INVENTORY_RESERVED, InventoryRejected, InventoryReserved,
    PAYMENT_FAILED, PAYMENT_SUCCEEDED, PaymentFailed, PaymentSucceeded, decode,
};
use shop_contract::messages::{Expected, MessagePact};
use shop_contract::pact_consumer::prelude::*;

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

#[tokio::test]
async fn reads_what_inventory_sends() {
    let mut pact = MessagePact::new("orders", "inventory");
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
    );
    let reserved: InventoryReserved =
        decode(&pact.example("stock was reserved for an order")).expect("decodes");
    assert_eq!(
        (reserved.order_id.as_str(), reserved.amount_cents),
        (ORDER, 900)
    );
    let rejected: InventoryRejected =
        decode(&pact.example("stock could not be reserved for an order")).expect("decodes");
    assert_eq!(
        (rejected.order_id.as_str(), rejected.reason.as_str()),
        (ORDER, "out_of_stock")
    );
    pact.write();
}

#[tokio::test]
async fn reads_what_payments_sends() {
    let mut pact = MessagePact::new("orders", "payments");
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
        "a payment failed",
        event(PAYMENT_FAILED, "/shop/payments", 1),
        json_pattern!({"order_id": like!(ORDER), "reason": like!("card_declined")}),
    );
    let paid: PaymentSucceeded = decode(&pact.example("a payment succeeded")).expect("decodes");
    assert_eq!(
        (paid.order_id.as_str(), paid.charge_id.as_str()),
        (ORDER, "ch_pact")
    );
    let failed: PaymentFailed = decode(&pact.example("a payment failed")).expect("decodes");
    assert_eq!(
        (failed.order_id.as_str(), failed.reason.as_str()),
        (ORDER, "card_declined")
    );
    pact.write();
}
