//! The inventory honours its consumers' pacts (Pact, provider side): the real `shop-inventory`
//! binary on SQLite, its provider states set up through `POST /_pact/state`
//! (`SHOP_PACT_STATES=1`, see `shop_inventory::pact_states`), verified against every pact in
//! `examples/shop/pacts/` naming `inventory` as the provider.

use shop_contract::{Service, state_route, verify};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honours_its_pacts() {
    let inventory = Service::start(env!("CARGO_BIN_EXE_shop-inventory"), "inventory").await;
    verify(
        "inventory",
        inventory.port(),
        Some(inventory.token()),
        state_route(inventory.port()),
    )
    .await;
}
