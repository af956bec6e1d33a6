//! The payments service's provider states for the contract tests, served by
//! `shop_common::pact::routes` when `SHOP_PACT_STATES=1` (see `shop_common::pact`).
//!
//! - `order has a payment` (`order_id`): the order was charged (a `CHARGED` payment recorded
//!   as a charge reply would record it; its event is not published).

use chassis_core::BoxError;
use serde_json::{Value, json};
use shop_common::db::Db;
use shop_common::events::ChargePayment;
use shop_common::pact::StateChange;

use crate::domain::{self, ChargeOutcome};

/// Sets up `change` in the payments database.
pub async fn setup(db: Db, change: StateChange) -> Result<Value, BoxError> {
    match change.state.as_str() {
        "order has a payment" => {
            let order_id = change.param("order_id")?.to_owned();
            let cmd = ChargePayment {
                order_id: order_id.clone(),
                amount_cents: 1200,
                payment_method: "card_ok".into(),
            };
            let outcome = ChargeOutcome::Charged {
                charge_id: format!("ch_{order_id}"),
            };
            let mut txn = db.begin().await?;
            // Recorded once: a second setup for the same order changes nothing.
            domain::record_charge(&mut txn.tx(), &cmd, &outcome).await?;
            txn.commit().await?;
            Ok(json!({"order_id": order_id}))
        }
        _ => Err(change.unknown()),
    }
}
