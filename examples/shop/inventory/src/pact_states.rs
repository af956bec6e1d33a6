//! The inventory's provider states for the contract tests, served by
//! `shop_common::pact::routes` when `SHOP_PACT_STATES=1` (see `shop_common::pact`).
//!
//! - `product in stock` (`sku`): the product exists with 100 units.

use chassis_core::BoxError;
use serde_json::{Value, json};
use shop_common::db::Db;
use shop_common::pact::StateChange;

use crate::domain::{self, Product};

/// Units a product `in stock` has.
const STOCK: i64 = 100;

/// Sets up `change` in the inventory's database.
pub async fn setup(db: Db, change: StateChange) -> Result<Value, BoxError> {
    match change.state.as_str() {
        "product in stock" => {
            let sku = change.param("sku")?.to_owned();
            let product = Product {
                sku: sku.clone(),
                name: format!("Product {sku}"),
                price_cents: 450,
                stock: STOCK,
            };
            domain::seed(&db, std::slice::from_ref(&product)).await?;
            let mut txn = db.begin().await?;
            txn.tx()
                .execute(
                    "UPDATE products SET stock = $1 WHERE sku = $2",
                    &[STOCK.into(), (&sku).into()],
                )
                .await?;
            txn.commit().await?;
            Ok(json!({"sku": sku}))
        }
        _ => Err(change.unknown()),
    }
}
