//! The notifications service honours its consumers' pacts (Pact, provider side): the real
//! `shop-notifications` binary on SQLite (a broker address where nothing listens), verified
//! against every pact in `examples/shop/pacts/` naming `notifications` as the provider.
//!
//! A notification only comes from an `order.confirmed` / `order.failed` event, so the state
//! `order has a notification` is set up the way its consumer would record one: the service's
//! own `domain::record`, in the service's own SQLite database.

use shop_common::db::Db;
use shop_common::events::OrderFinished;
use shop_contract::{FnStates, Service, StateValues, verify};
use shop_notifications::domain;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honours_its_pacts() {
    let service = Service::start(env!("CARGO_BIN_EXE_shop-notifications"), "notifications").await;
    let file = service.data_dir().join("notifications.db");
    let db = Db::open(&format!("sqlite://{}", file.display())).unwrap();
    let states = FnStates::new(move |state: String, params: StateValues| {
        let db = db.clone();
        Box::pin(async move {
            match state.as_str() {
                "order has a notification" => {
                    let order_id = params
                        .get("order_id")
                        .and_then(|v| v.as_str())
                        .ok_or("the state needs `order_id`")?;
                    let finished = OrderFinished {
                        order_id: order_id.to_owned(),
                        customer_id: "c-pact".into(),
                        status: "CONFIRMED".into(),
                        reason: None,
                    };
                    let recorded = async {
                        let mut txn = db.begin().await?;
                        domain::record(&mut txn.tx(), &finished).await?;
                        txn.commit().await?;
                        Ok::<_, chassis_core::BoxError>(())
                    };
                    recorded.await.map_err(|e| e.to_string())?;
                    Ok(StateValues::new())
                }
                other => Err(format!("unknown provider state `{other}`")),
            }
        })
    });
    verify(
        "notifications",
        service.port(),
        Some(service.token()),
        states,
    )
    .await;
}
