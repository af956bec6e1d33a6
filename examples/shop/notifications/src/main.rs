//! The notifications service, `shop-notifications`: one notification per finished order.
//!
//! It runs, in start order: telemetry; the database (the notifications schema and the chassis
//! inbox table); RabbitMQ, attached in the background (the shop's exchanges and the
//! `notifications.orders` queue); the inbox consumer of `order.confirmed` / `order.failed`;
//! HTTP (`GET /api/v1/notifications?order_id=…`, behind service tokens). It publishes nothing,
//! so it runs no outbox relay.
//!
//! Environment: `HTTP_ADDR` (default `127.0.0.1:8084`), `ADMIN_ADDR` (probes and
//! `/metrics`, default `127.0.0.1:9084`), `DATABASE_URL`, `DATA_DIR`, `AMQP_URL`,
//! `SHOP_NAMESPACE`, `CONSUMER_CONCURRENCY` (see `shop_common::service`),
//! `SERVICE_TOKEN_PUBLIC_KEY`, and the chassis' `LOG_FORMAT`, `RUST_LOG`,
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, `PRE_STOP_DELAY`, ….

use axum::Router;
use axum::extract::{Query, State};
use axum::routing::get;
use chassis_core::lifecycle::{App, LifecycleConfig};
use chassis_core::{BoxError, ServiceInfo};
use chassis_http::health::HealthLayer;
use chassis_http::layers::StandardLayers;
use chassis_http::server::HttpServer;
use chassis_http::{ApiResponse, ApiResult, ResultExt};
use chassis_messaging::{IncomingMessage, Outcome};
use shop_common::db::{Db, Tx};
use shop_common::events::{
    EVENTS_EXCHANGE, Emit, ORDER_CONFIRMED, ORDER_FAILED, OrderFinished, decode, retry,
};
use shop_common::service::server_config;
use shop_common::{Shop, auth};
use shop_notifications::domain::{self, Notification};

#[derive(Debug, serde::Deserialize)]
struct ListQuery {
    order_id: Option<String>,
}

fn main() -> Result<(), BoxError> {
    // One runtime thread unless SHOP_RUNTIME_THREADS says otherwise (see `shop_common::service::runtime`).
    shop_common::service::runtime()?.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    // 1. Identity and telemetry.
    let info = ServiceInfo::from_env("notifications", env!("CARGO_PKG_VERSION"));
    let telemetry = shop_common::service::telemetry(info.clone())?;
    let app = App::new("notifications").config(LifecycleConfig::from_env()?);
    let shop = Shop::from_env("notifications");

    // 2. The database (opened at start).
    let db = shop.database()?;

    // 3. RabbitMQ, attached in the background: topology and the inbox consumer.
    let conn = shop.connect(&info)?;
    let finished = shop.queue(
        "orders",
        &[
            (EVENTS_EXCHANGE, ORDER_CONFIRMED),
            (EVENTS_EXCHANGE, ORDER_FAILED),
        ],
    );
    let topology = shop.topology().queue(finished.clone());
    let notifier = db.consumer(&shop, &conn, finished, "notifications.orders", |msg, tx| {
        Box::pin(notify(msg, tx))
    });

    // 4. HTTP: the API behind service tokens (the gateway's), in the standard layers.
    // With mTLS, only the gateway's certificate gets through as well.
    let routes = shop_common::tls::only_callers(
        Router::new()
            .route("/api/v1/notifications", get(list))
            .layer(auth::require_from_env("notifications")?),
        &["gateway"],
    )?
    .with_state(db.clone());
    let control = shop.control(app.health());
    let probes = HealthLayer::new(app.health().clone()).prometheus(telemetry.prometheus_handle());
    let service = routes.layer(StandardLayers::new());

    // 5. Run: start in this order; on SIGTERM stop in stages.
    app.component(telemetry)
        .component(db.component(domain::SCHEMA))
        .component(conn.component().declare(topology))
        .component(notifier)
        .component(shop_common::admin::with_admin(
            HttpServer::new(server_config(8084)?, service).probes(probes),
            control,
        )?)
        .run()
        .await?;
    Ok(())
}

async fn notify(msg: IncomingMessage, mut tx: Tx<'_>) -> Result<Vec<Emit>, Outcome> {
    let event: OrderFinished = decode(&msg)?;
    if domain::record(&mut tx, &event).await.map_err(retry)? {
        tracing::info!(order_id = %event.order_id, status = %event.status, "customer notified");
    }
    Ok(Vec::new())
}

async fn list(State(db): State<Db>, Query(q): Query<ListQuery>) -> ApiResult<Vec<Notification>> {
    let found = domain::list(&db, q.order_id.as_deref())
        .await
        .or_internal()?;
    Ok(ApiResponse::ok(found))
}
