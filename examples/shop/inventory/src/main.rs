//! The inventory service: `shop-inventory` (env: `HTTP_ADDR`, `DATABASE_URL`, `AMQP_URL`,
//! `INVENTORY_SEED=sku:name:price_cents:stock,…`; see `shop_common::runtime`).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use chassis_core::BoxError;
use shop_common::events::{
    CMD_INVENTORY_RELEASE, COMMANDS_EXCHANGE, Compensate, EVENTS_EXCHANGE, ORDER_PLACED,
    OrderPlaced,
};
use shop_common::runtime::{App, Spec, decode, handle_once};
use shop_common::web::{ApiErr, ok};
use shop_inventory::domain;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let app = App::start(Spec {
        name: "inventory",
        default_port: 8082,
        schema: domain::SCHEMA,
    })
    .await?;
    let seed = std::env::var("INVENTORY_SEED").unwrap_or_else(|_| domain::DEFAULT_SEED.to_owned());
    domain::seed(app.db(), &domain::parse_seed(&seed)?).await?;

    // Saga step 1: reserve on `order.placed`.
    app.consume(app.queue("order-placed", &[(EVENTS_EXCHANGE, ORDER_PLACED)]), |app, msg| async move {
        let event: OrderPlaced = decode(&msg)?;
        handle_once(&app, "inventory.reserve", &msg, move |tx| {
            Box::pin(async move {
                let emits = domain::reserve(tx, &event).await?;
                for e in &emits {
                    tracing::info!(order_id = %event.order_id, outcome = e.kind, "reservation decided");
                }
                Ok(emits)
            })
        })
        .await
    })
    .await?;
    // Compensation: release on the `inventory.release` command.
    app.consume(
        app.queue("release", &[(COMMANDS_EXCHANGE, CMD_INVENTORY_RELEASE)]),
        |app, msg| async move {
            let cmd: Compensate = decode(&msg)?;
            handle_once(&app, "inventory.release", &msg, move |tx| {
                Box::pin(async move { Ok(domain::release(tx, &cmd.order_id, &cmd.reason).await?) })
            })
            .await
        },
    )
    .await?;

    let router = Router::new()
        .route("/internal/products", get(products))
        .route("/internal/reservations/{order_id}", get(reservation))
        .layer(shop_common::auth::require_from_env("inventory")?)
        .with_state(app.clone());
    app.serve(router).await
}

async fn products(State(app): State<App>) -> Result<Response, ApiErr> {
    Ok(ok(StatusCode::OK, domain::list_products(app.db()).await?))
}

async fn reservation(
    State(app): State<App>,
    axum::extract::Path(order_id): axum::extract::Path<String>,
) -> Result<Response, ApiErr> {
    match domain::reservation_status(app.db(), &order_id).await? {
        Some(status) => Ok(ok(
            StatusCode::OK,
            serde_json::json!({"order_id": order_id, "status": status}),
        )),
        None => Err(ApiErr::not_found("no reservation for this order")),
    }
}
