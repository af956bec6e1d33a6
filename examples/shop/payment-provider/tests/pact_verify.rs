//! The payment-provider stand-in honours the payments service's pact (Pact, provider side):
//! the real `shop-payment-provider` binary, its provider states set up through
//! `POST /_pact/state` (`SHOP_PACT_STATES=1`), verified against every pact in
//! `examples/shop/pacts/` naming `payment-provider` as the provider. The stand-in plays the
//! external provider, so this is what keeps it and the payments client in step.

use shop_contract::{StandIn, state_route, verify};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honours_its_pacts() {
    let provider = StandIn::start(env!("CARGO_BIN_EXE_shop-payment-provider")).await;
    verify(
        "payment-provider",
        provider.port(),
        None,
        state_route(provider.port()),
    )
    .await;
}
