//! Orders honours its message pacts (Pact V4 asynchronous messages, provider side): every
//! event and command a consumer's pact expects from `orders` (`*-orders-messages.json` in
//! `examples/shop/pacts/`) is built the way the order saga (`shop_orders::saga`) builds it,
//! from `shop_common::events`' payload types through `Emit` and the envelope its outbox
//! publishes (`Emit::envelope` with the service `orders`), and matched against the pact:
//! a missing or renamed field, a wrong type or another attribute fails the test.

use shop_common::events::{
    CMD_INVENTORY_RELEASE, CMD_PAYMENT_CHARGE, CMD_PAYMENT_REFUND, ChargePayment, Compensate, Emit,
    Item, ORDER_CONFIRMED, ORDER_FAILED, ORDER_PLACED, OrderFinished, OrderPlaced,
};

const ORDER: &str = "0193a5c0-1111-7000-8000-00000000000a";

fn finished(status: &str, reason: Option<&str>) -> OrderFinished {
    OrderFinished {
        order_id: ORDER.into(),
        customer_id: "c-42".into(),
        status: status.into(),
        reason: reason.map(str::to_owned),
    }
}

fn compensate(reason: &str) -> Compensate {
    Compensate {
        order_id: ORDER.into(),
        reason: reason.into(),
    }
}

#[tokio::test]
async fn honours_its_message_pacts() {
    let placed = OrderPlaced {
        order_id: ORDER.into(),
        customer_id: "c-42".into(),
        items: vec![
            Item {
                sku: "coffee".into(),
                quantity: 1,
            },
            Item {
                sku: "tea".into(),
                quantity: 3,
            },
        ],
        payment_method: "card_ok".into(),
    };
    let charge = ChargePayment {
        order_id: ORDER.into(),
        amount_cents: 1_350,
        payment_method: "card_ok".into(),
    };
    let emits = [
        (
            "an order was placed",
            Emit::event(ORDER_PLACED, ORDER, &placed),
        ),
        (
            "release the reservation of an order",
            Emit::command(
                CMD_INVENTORY_RELEASE,
                ORDER,
                &compensate("inventory_timeout"),
            ),
        ),
        (
            "charge an order",
            Emit::command(CMD_PAYMENT_CHARGE, ORDER, &charge),
        ),
        (
            "refund an order",
            Emit::command(CMD_PAYMENT_REFUND, ORDER, &compensate("payment_timeout")),
        ),
        (
            "an order was confirmed",
            Emit::event(ORDER_CONFIRMED, ORDER, &finished("CONFIRMED", None)),
        ),
        (
            "an order failed",
            Emit::event(
                ORDER_FAILED,
                ORDER,
                &finished("FAILED", Some("card_declined")),
            ),
        ),
    ];
    shop_contract::messages::verify_emits("orders", None, &emits).await;
}
