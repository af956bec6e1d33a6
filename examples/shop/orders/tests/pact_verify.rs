//! The orders service honours its consumers' pacts (Pact, provider side): the real
//! `shop-orders` binary on SQLite (no inventory: placements are not checked against the
//! catalogue; a broker address where nothing listens: orders wait in the outbox), verified
//! against every pact in `examples/shop/pacts/` naming `orders` as the provider.
//!
//! Orders' provider states need no test-only route: an order exists once it is placed through
//! orders' own `POST /internal/orders`, so the state `an order exists` places one, and hands
//! its id to the verifier as `orderId` (the pacts read it into their paths).

use serde_json::{Value, json};
use shop_contract::{FnStates, Service, StateValues, verify};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honours_its_pacts() {
    let orders = Service::start(env!("CARGO_BIN_EXE_shop-orders"), "orders").await;
    let (url, token) = (orders.url(), orders.token().to_owned());
    let states = FnStates::new(move |state: String, params: StateValues| {
        let (url, token) = (url.clone(), token.clone());
        Box::pin(async move {
            match state.as_str() {
                "an order exists" => {
                    let customer = params
                        .get("customer_id")
                        .and_then(Value::as_str)
                        .unwrap_or("c-pact");
                    let placed: Value = reqwest::Client::new()
                        .post(format!("{url}/internal/orders"))
                        .bearer_auth(&token)
                        .json(&json!({
                            "customer_id": customer,
                            "items": [{"sku": "tea", "quantity": 1}],
                            "payment_method": "card_ok",
                            "client_id": "pact"
                        }))
                        .send()
                        .await
                        .and_then(reqwest::Response::error_for_status)
                        .map_err(|e| e.to_string())?
                        .json()
                        .await
                        .map_err(|e| e.to_string())?;
                    let id = placed["data"]["id"].clone();
                    Ok(StateValues::from([("orderId".to_owned(), id)]))
                }
                other => Err(format!("unknown provider state `{other}`")),
            }
        })
    });
    verify("orders", orders.port(), Some(orders.token()), states).await;
}
