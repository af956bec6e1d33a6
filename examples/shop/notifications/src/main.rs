//! The notifications service: `shop-notifications` (env: `HTTP_ADDR`, `DATABASE_URL`,
//! `AMQP_URL`; see `shop_common::runtime`).

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use chassis_core::BoxError;
use shop_common::events::{EVENTS_EXCHANGE, ORDER_CONFIRMED, ORDER_FAILED, OrderFinished};
use shop_common::runtime::{App, Spec, decode, handle_once};
use shop_common::web::{ApiErr, ok};
use shop_notifications::domain;

#[derive(Debug, serde::Deserialize)]
struct ListQuery {
    order_id: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let app = App::start(Spec {
        name: "notifications",
        default_port: 8084,
        schema: domain::SCHEMA,
    })
    .await?;
    let queue = app.queue(
        "orders",
        &[
            (EVENTS_EXCHANGE, ORDER_CONFIRMED),
            (EVENTS_EXCHANGE, ORDER_FAILED),
        ],
    );
    app.consume(queue, |app, msg| async move {
        let event: OrderFinished = decode(&msg)?;
        handle_once(&app, "notifications.orders", &msg, move |tx| {
            Box::pin(async move {
                if domain::record(tx, &event).await? {
                    tracing::info!(order_id = %event.order_id, status = %event.status, "customer notified");
                }
                Ok(Vec::new())
            })
        })
        .await
    })
    .await?;
    let router = Router::new()
        .route("/api/v1/notifications", get(list))
        .layer(shop_common::auth::require_from_env("notifications")?)
        .with_state(app.clone());
    app.serve(router).await
}

async fn list(State(app): State<App>, Query(q): Query<ListQuery>) -> Result<Response, ApiErr> {
    Ok(ok(
        StatusCode::OK,
        domain::list(app.db(), q.order_id.as_deref()).await?,
    ))
}
