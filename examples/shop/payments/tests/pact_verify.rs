//! The payments service honours its consumers' pacts (Pact, provider side): the real
//! `shop-payments` binary on SQLite, its provider states set up through `POST /_pact/state`
//! (`SHOP_PACT_STATES=1`, see `shop_payments::pact_states`), verified against every pact in
//! `examples/shop/pacts/` naming `payments` as the provider.

use shop_contract::{Service, state_route, verify};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honours_its_pacts() {
    let payments = Service::start(env!("CARGO_BIN_EXE_shop-payments"), "payments").await;
    verify(
        "payments",
        payments.port(),
        Some(payments.token()),
        state_route(payments.port()),
    )
    .await;
}
