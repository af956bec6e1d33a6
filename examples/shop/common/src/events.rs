//! Event and command payloads of the shop, and where they travel.
//!
//! Events go to the topic exchange [`EVENTS_EXCHANGE`] (`shop.events`) with the event type as the
//! routing key; commands (the orchestrator telling a service to act) go to [`COMMANDS_EXCHANGE`]
//! (`shop.commands`), also keyed by type. Every payload carries the `order_id`, which is also the
//! envelope's `subject` (the outbox's per-aggregate ordering key). Domain code returns what it
//! wants published as [`Emit`]s; consumers read payloads with [`decode`] and answer a transient
//! failure with [`retry`] (both give the chassis `Outcome` directly).
//!
//! Every payload type has a version ([`Versioned`]), sent as the CloudEvents extension
//! `eventversion` ([`Emit`] sets it from the payload type); [`decode`] reads the versions a
//! payload type knows and dead-letters the others with the reason. [`InventoryReserved`] is at
//! version 2 and still reads version 1 ([`InventoryReservedV1`], upcast).
//!
//! The saga (run by `orders`):
//! ```text
//! order.placed ──► inventory ──► inventory.reserved ──► orders ──► payment.charge ──► payments
//!                          └──► inventory.rejected ──► orders: FAILED(out_of_stock)
//! payment.succeeded ──► orders: CONFIRMED ──► order.confirmed ──► notifications
//! payment.failed    ──► orders: inventory.release (compensation) + FAILED ──► order.failed
//! step timeout      ──► orders: payment.refund / inventory.release + FAILED(<step>_timeout)
//! ```
//!
//! # Example
//! ```
//! use shop_common::events::{Item, OrderPlaced, ORDER_PLACED};
//!
//! let e = OrderPlaced {
//!     order_id: "o-1".into(),
//!     customer_id: "c-1".into(),
//!     items: vec![Item { sku: "tea".into(), quantity: 2 }],
//!     payment_method: "card_ok".into(),
//! };
//! let json = serde_json::to_value(&e).unwrap();
//! assert_eq!(json["items"][0]["quantity"], 2);
//! assert_eq!(ORDER_PLACED, "order.placed");
//! ```

use chassis_messaging::error::ErrorKind;
use chassis_messaging::{Envelope, IncomingMessage, Outcome, Versioned};
use serde::{Deserialize, Serialize};

use crate::limits::{
    FieldError, MAX_CHARGE_ID_LEN, MAX_CUSTOMER_ID_LEN, MAX_PAYMENT_METHOD_LEN, MAX_REASON_LEN,
    MAX_SKU_LEN, check_len, check_order, check_order_id, check_required,
};

/// The topic exchange for events.
pub const EVENTS_EXCHANGE: &str = "shop.events";
/// The topic exchange for commands.
pub const COMMANDS_EXCHANGE: &str = "shop.commands";

/// Event: an order was accepted (`orders`); starts the saga.
pub const ORDER_PLACED: &str = "order.placed";
/// Event: stock was reserved for an order (`inventory`).
pub const INVENTORY_RESERVED: &str = "inventory.reserved";
/// Event: stock could not be reserved (`inventory`).
pub const INVENTORY_REJECTED: &str = "inventory.rejected";
/// Event: a reservation was released (`inventory`).
pub const INVENTORY_RELEASED: &str = "inventory.released";
/// Event: the payment went through (`payments`).
pub const PAYMENT_SUCCEEDED: &str = "payment.succeeded";
/// Event: the payment failed (`payments`).
pub const PAYMENT_FAILED: &str = "payment.failed";
/// Event: a payment was refunded (`payments`).
pub const PAYMENT_REFUNDED: &str = "payment.refunded";
/// Event: the order is confirmed (`orders`).
pub const ORDER_CONFIRMED: &str = "order.confirmed";
/// Event: the order failed (`orders`).
pub const ORDER_FAILED: &str = "order.failed";

/// Command: charge the customer (`orders` -> `payments`).
pub const CMD_PAYMENT_CHARGE: &str = "payment.charge";
/// Command: refund the order's charge, if any (`orders` -> `payments`).
pub const CMD_PAYMENT_REFUND: &str = "payment.refund";
/// Command: release the order's reservation, if any (`orders` -> `inventory`).
pub const CMD_INVENTORY_RELEASE: &str = "inventory.release";

/// Decodes a message's chassis envelope by its version (`T`'s own, or an older one `T`
/// upcasts) and checks its payload's limits ([`Validate`]). An undecodable message, one of a
/// version `T` does not read, or one with a field outside its limit, can never succeed: it is
/// rejected, and the chassis consumer dead-letters it (`<queue>.dlq`, the reason in
/// `x-chassis-failure-reason`) and logs it once, before the handler writes anything.
pub fn decode<T: Versioned + Validate>(msg: &IncomingMessage) -> Result<T, Outcome> {
    let data = msg
        .decode_versioned::<T>()
        .map(|e| e.data)
        .map_err(|e| match e.kind() {
            ErrorKind::UnsupportedVersion { .. } => Outcome::reject(e.to_string()),
            _ => Outcome::reject(format!("undecodable: {e}")),
        })?;
    data.validate()
        .map_err(|e| Outcome::reject(format!("invalid {}: {e}", msg.routing_key())))?;
    Ok(data)
}

/// A payload's own limits (see [`limits`](crate::limits)): every event and command the shop
/// sends implements it, and [`decode`] applies it to each message consumed.
pub trait Validate {
    /// `Err` names the first field outside its limit.
    fn validate(&self) -> Result<(), FieldError>;
}

/// A handler's transient failure (the database is busy or away): retry through the delay tiers.
pub fn retry(error: impl std::fmt::Display) -> Outcome {
    Outcome::retry(error.to_string())
}

/// A line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Product SKU.
    pub sku: String,
    /// Units, > 0.
    pub quantity: i64,
}

/// `order.placed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: String,
    /// The customer.
    pub customer_id: String,
    /// What to reserve.
    pub items: Vec<Item>,
    /// How the customer pays.
    pub payment_method: String,
}

/// `inventory.reserved`, version 2 (the current one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReserved {
    /// The order.
    pub order_id: String,
    /// Total price of the reserved items, in cents (the amount to charge).
    pub amount_cents: i64,
}

/// `inventory.reserved`, version 1: the amount in currency units as a JSON number. Floating
/// point money rounds (0.1 + 0.2), so version 2 carries integer cents; consumers still read
/// version 1 through [`InventoryReserved`]'s upcast, rounding to the nearest cent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InventoryReservedV1 {
    /// The order.
    pub order_id: String,
    /// Total price in currency units, e.g. `4.5`.
    pub amount: f64,
}

impl Versioned for InventoryReserved {
    const VERSION: u32 = 2;
    const UPCASTS_FROM: &'static [u32] = &[1];

    fn upcast(from: u32, data: serde_json::Value) -> Result<Self, serde_json::Error> {
        debug_assert_eq!(from, 1, "only version 1 is listed");
        let v1: InventoryReservedV1 = serde_json::from_value(data)?;
        let cents = (v1.amount * 100.0).round();
        if !cents.is_finite() || cents.abs() > i64::MAX as f64 {
            return Err(serde::de::Error::custom(format_args!(
                "amount {} is not a price",
                v1.amount
            )));
        }
        Ok(Self {
            order_id: v1.order_id,
            amount_cents: cents as i64,
        })
    }
}

/// Every other payload is at its first version: none has changed incompatibly yet.
macro_rules! first_version {
    ($($t:ty),* $(,)?) => {
        $(impl Versioned for $t {
            const VERSION: u32 = 1;
        })*
    };
}

first_version!(
    OrderPlaced,
    InventoryRejected,
    InventoryReleased,
    ChargePayment,
    Compensate,
    PaymentSucceeded,
    PaymentFailed,
    PaymentRefunded,
    OrderFinished,
);

/// `inventory.rejected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryRejected {
    /// The order.
    pub order_id: String,
    /// `out_of_stock` or `unknown_product`.
    pub reason: String,
    /// The SKU that could not be reserved.
    pub sku: String,
}

/// `inventory.released`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryReleased {
    /// The order.
    pub order_id: String,
}

/// `payment.charge` (command).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargePayment {
    /// The order (also the provider idempotency key's stem).
    pub order_id: String,
    /// Amount in cents.
    pub amount_cents: i64,
    /// Payment method token.
    pub payment_method: String,
}

/// `payment.refund` / `inventory.release` (commands): undo the step for this order, if it happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compensate {
    /// The order.
    pub order_id: String,
    /// Why (the order's failure reason).
    pub reason: String,
}

/// `payment.succeeded`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentSucceeded {
    /// The order.
    pub order_id: String,
    /// The provider's charge id.
    pub charge_id: String,
    /// Amount charged, in cents.
    pub amount_cents: i64,
}

/// `payment.failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    /// The order.
    pub order_id: String,
    /// `card_declined`, `payment_provider_unavailable`, or `cancelled`.
    pub reason: String,
}

/// `payment.refunded`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefunded {
    /// The order.
    pub order_id: String,
    /// The refunded charge.
    pub charge_id: String,
}

/// `order.confirmed` / `order.failed`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderFinished {
    /// The order.
    pub order_id: String,
    /// The customer.
    pub customer_id: String,
    /// `CONFIRMED` or `FAILED`.
    pub status: String,
    /// Failure reason, for `FAILED`.
    pub reason: Option<String>,
}

/// An event or command a domain function wants published, in the same transaction as its writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    /// [`EVENTS_EXCHANGE`] or [`COMMANDS_EXCHANGE`].
    pub exchange: &'static str,
    /// The type, also the routing key.
    pub kind: &'static str,
    /// The payload type's version ([`Versioned::VERSION`]).
    pub version: u32,
    /// The aggregate (order id).
    pub subject: String,
    /// The JSON payload.
    pub payload: serde_json::Value,
}

impl Emit {
    /// An event on `shop.events`, at the payload type's version.
    pub fn event<P: Versioned + Serialize>(kind: &'static str, subject: &str, payload: &P) -> Self {
        Self {
            exchange: EVENTS_EXCHANGE,
            kind,
            version: P::VERSION,
            subject: subject.to_owned(),
            payload: serde_json::to_value(payload).expect("payloads serialise"),
        }
    }

    /// A command on `shop.commands`, at the payload type's version.
    pub fn command<P: Versioned + Serialize>(
        kind: &'static str,
        subject: &str,
        payload: &P,
    ) -> Self {
        Self {
            exchange: COMMANDS_EXCHANGE,
            ..Self::event(kind, subject, payload)
        }
    }

    /// The chassis envelope (CloudEvents) `service` sends: source `/shop/<service>`, the order id
    /// as subject (the outbox's ordering key) and correlation id, caused by the message `cause`.
    pub fn envelope(&self, service: &str, cause: Option<&str>) -> Envelope<&serde_json::Value> {
        let envelope = Envelope::new(format!("/shop/{service}"), self.kind, &self.payload)
            .version(self.version)
            .subject(self.subject.clone())
            .correlation_id(self.subject.clone());
        match cause {
            Some(id) => envelope.causation_id(id),
            None => envelope,
        }
    }
}

impl Validate for OrderPlaced {
    fn validate(&self) -> Result<(), FieldError> {
        check_order_id("order_id", &self.order_id)?;
        check_order(&self.customer_id, &self.items, &self.payment_method)
    }
}

impl Validate for InventoryReserved {
    fn validate(&self) -> Result<(), FieldError> {
        check_order_id("order_id", &self.order_id)
    }
}

impl Validate for InventoryRejected {
    fn validate(&self) -> Result<(), FieldError> {
        check_order_id("order_id", &self.order_id)?;
        check_required("reason", &self.reason, MAX_REASON_LEN)?;
        // Empty for an order without lines.
        check_len("sku", &self.sku, MAX_SKU_LEN)
    }
}

impl Validate for InventoryReleased {
    fn validate(&self) -> Result<(), FieldError> {
        check_order_id("order_id", &self.order_id)
    }
}

impl Validate for ChargePayment {
    fn validate(&self) -> Result<(), FieldError> {
        check_order_id("order_id", &self.order_id)?;
        check_required(
            "payment_method",
            &self.payment_method,
            MAX_PAYMENT_METHOD_LEN,
        )
    }
}

impl Validate for Compensate {
    fn validate(&self) -> Result<(), FieldError> {
        check_order_id("order_id", &self.order_id)?;
        check_len("reason", &self.reason, MAX_REASON_LEN)
    }
}

impl Validate for PaymentSucceeded {
    fn validate(&self) -> Result<(), FieldError> {
        check_order_id("order_id", &self.order_id)?;
        check_required("charge_id", &self.charge_id, MAX_CHARGE_ID_LEN)
    }
}

impl Validate for PaymentFailed {
    fn validate(&self) -> Result<(), FieldError> {
        check_order_id("order_id", &self.order_id)?;
        check_required("reason", &self.reason, MAX_REASON_LEN)
    }
}

impl Validate for PaymentRefunded {
    fn validate(&self) -> Result<(), FieldError> {
        check_order_id("order_id", &self.order_id)?;
        check_len("charge_id", &self.charge_id, MAX_CHARGE_ID_LEN)
    }
}

impl Validate for OrderFinished {
    fn validate(&self) -> Result<(), FieldError> {
        check_order_id("order_id", &self.order_id)?;
        check_required("customer_id", &self.customer_id, MAX_CUSTOMER_ID_LEN)?;
        check_len("status", &self.status, MAX_REASON_LEN)?;
        check_len(
            "reason",
            self.reason.as_deref().unwrap_or_default(),
            MAX_REASON_LEN,
        )
    }
}

/// Any JSON: for consumers that read a payload they do not interpret.
impl Validate for serde_json::Value {
    fn validate(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chassis_messaging::envelope::EVENTVERSION;

    fn reserved_message(version: Option<u32>, payload: serde_json::Value) -> IncomingMessage {
        let mut msg = Envelope::new("/shop/inventory", INVENTORY_RESERVED, payload)
            .subject("o-1")
            .to_message(EVENTS_EXCHANGE)
            .unwrap();
        match version {
            Some(v) => msg
                .headers
                .insert(EVENTVERSION.into(), v.to_string().into()),
            None => msg.headers.remove(EVENTVERSION),
        };
        IncomingMessage::from_outgoing(msg)
    }

    #[test]
    fn inventory_reserved_reads_version_1_and_2_and_refuses_3() {
        let emitted = Emit::event(
            INVENTORY_RESERVED,
            "o-1",
            &InventoryReserved {
                order_id: "o-1".into(),
                amount_cents: 450,
            },
        );
        assert_eq!(emitted.version, 2);
        let wire = emitted
            .envelope("inventory", None)
            .to_message(EVENTS_EXCHANGE)
            .unwrap();
        let v2: InventoryReserved = decode(&IncomingMessage::from_outgoing(wire)).unwrap();
        assert_eq!(v2.amount_cents, 450);

        // An inventory from before version 2 (with or without the attribute).
        for version in [Some(1), None] {
            let v1 = reserved_message(
                version,
                serde_json::json!({"order_id": "o-1", "amount": 4.35}),
            );
            let read: InventoryReserved = decode(&v1).unwrap();
            assert_eq!(read.amount_cents, 435, "{version:?}");
        }

        let v3 = reserved_message(Some(3), serde_json::json!({"order_id": "o-1"}));
        match decode::<InventoryReserved>(&v3) {
            Err(Outcome::Reject { reason }) => assert!(
                reason
                    .contains("inventory.reserved version 3, this consumer reads versions [1, 2]"),
                "{reason}"
            ),
            other => panic!("{other:?}"),
        }
        // A version-1 event with a version-2 body is not guessed at.
        let wrong = reserved_message(
            Some(1),
            serde_json::json!({"order_id": "o-1", "amount_cents": 1}),
        );
        assert!(matches!(
            decode::<InventoryReserved>(&wrong),
            Err(Outcome::Reject { .. })
        ));
        // Every other payload is at version 1 and refuses version 2.
        let placed = reserved_message(Some(2), serde_json::json!({}));
        assert!(
            matches!(decode::<OrderPlaced>(&placed), Err(Outcome::Reject { reason }) if reason.contains("reads versions [1]"))
        );
    }

    #[test]
    fn payloads_check_their_fields() {
        let mut placed = OrderPlaced {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            items: vec![Item {
                sku: "tea".into(),
                quantity: 1,
            }],
            payment_method: "card_ok".into(),
        };
        assert_eq!(placed.validate(), Ok(()));
        placed.customer_id = "c".repeat(1 << 20);
        assert_eq!(placed.validate().unwrap_err().field(), "customer_id");
        let charge = ChargePayment {
            order_id: "o".repeat(65),
            amount_cents: 1,
            payment_method: "card_ok".into(),
        };
        assert_eq!(charge.validate().unwrap_err().field(), "order_id");
        let failed = PaymentFailed {
            order_id: "o-1".into(),
            reason: "r".repeat(MAX_REASON_LEN + 1),
        };
        assert_eq!(failed.validate().unwrap_err().field(), "reason");
    }
}
