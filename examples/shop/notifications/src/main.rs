//! The notifications service, `shop-notifications`: one notification per finished order.
//!
//! It runs, in start order: telemetry; the database (the notifications schema and the chassis
//! inbox table, the order-history tables); RabbitMQ, attached in the background (the shop's
//! exchanges, the `notifications.orders` and `notifications.order-history` queues, and the
//! `notifications.order-history.stream` stream, declared once the broker answers); the inbox
//! consumer of `order.confirmed` / `order.failed`; the inbox consumer projecting the saga's
//! events into the order history (see `shop_notifications::order_history`); HTTP
//! (`GET /api/v1/notifications?order_id=…`, `GET /api/v1/customers/{customer}/orders?limit=…`,
//! behind service tokens; the rebuild is the admin action
//! `POST /admin/control/projection/order-history/rebuild`). It publishes nothing, so it runs no
//! outbox relay.
//!
//! Environment: `HTTP_ADDR` (default `127.0.0.1:8084`), `ADMIN_ADDR` (probes and
//! `/metrics`, default `127.0.0.1:9084`), `DATABASE_URL`, `DATA_DIR`, `AMQP_URL`,
//! `SHOP_NAMESPACE`, `CONSUMER_CONCURRENCY` (see `shop_common::service`),
//! `SERVICE_TOKEN_PUBLIC_KEY`, and the chassis' `LOG_FORMAT`, `RUST_LOG`,
//! `OTEL_EXPORTER_OTLP_ENDPOINT`, `PRE_STOP_DELAY`, ….

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use chassis_core::health::CheckOptions;
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
use shop_common::limits::{MAX_CUSTOMER_ID_LEN, check_required};
use shop_common::service::server_config;
use shop_common::{Shop, auth};
use shop_notifications::domain::{self, Notification};
use shop_notifications::order_history::projection::{self, MAX_LIMIT, OrderHistory as Order};
use shop_notifications::order_history::stream::{StreamConfig, StreamDeclared};
use shop_notifications::order_history::{self, OrderHistory};

#[derive(Debug, serde::Deserialize)]
struct ListQuery {
    order_id: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
struct HistoryQuery {
    limit: Option<i64>,
}

/// Orders listed per customer unless `?limit=` says otherwise.
const DEFAULT_LIMIT: i64 = 20;

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
    })?;
    // The order-history read model: its own queue and inbox on every saga event, and the
    // stream it is rebuilt from, bound to the same keys.
    let bindings: Vec<_> = projection::EVENT_KINDS
        .iter()
        .map(|key| (EVENTS_EXCHANGE, *key))
        .collect();
    let history_queue = shop.queue("order-history", &bindings);
    let topology = topology.queue(history_queue.clone());
    let projector = db.consumer(
        &shop,
        &conn,
        history_queue,
        "notifications.order-history",
        |msg, tx| Box::pin(order_history::project(msg, tx)),
    )?;
    let stream = StreamConfig::new(
        shop.name("notifications.order-history.stream"),
        shop.name(EVENTS_EXCHANGE),
    );
    let history = OrderHistory::new(db.clone(), conn.clone(), stream.clone());
    order_history::describe_metrics();
    // Optional, like the broker's own check: without a broker the service still serves its
    // API (degraded).
    let declared = StreamDeclared::default();
    app.health()
        .register(declared.clone(), CheckOptions::optional());
    tokio::spawn(stream.keep_declared(conn.clone(), declared, Duration::from_secs(1)));

    // 4. HTTP: the API behind service tokens (the gateway's), in the standard layers.
    // With mTLS, only the gateway's certificate gets through as well.
    let routes = shop_common::tls::only_callers(
        Router::new()
            .route("/api/v1/notifications", get(list))
            .route("/api/v1/customers/{customer}/orders", get(customer_orders))
            .layer(auth::require_from_env("notifications")?),
        &["gateway"],
    )?
    .with_state(db.clone());
    let control = shop.control(app.health());
    control.register("order-history", history);
    let probes = HealthLayer::new(app.health().clone()).prometheus(telemetry.prometheus_handle());
    let service = routes.layer(StandardLayers::new());

    // 5. Run: start in this order; on SIGTERM stop in stages.
    // The notifications table, then the read model's tables (built once, at start).
    let schema: &'static str = format!("{};\n{}", domain::SCHEMA, projection::SCHEMA).leak();
    app.component(telemetry)
        .component(db.component(schema))
        .component(conn.component().declare(topology))
        .component(notifier)
        .component(projector)
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

async fn customer_orders(
    State(db): State<Db>,
    Path(customer): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Vec<Order>> {
    check_required("customer", &customer, MAX_CUSTOMER_ID_LEN)?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(chassis_http::ApiError::bad_request(format!(
            "limit must be 1..={MAX_LIMIT}"
        )));
    }
    let found = projection::for_customer(&db, &customer, limit)
        .await
        .or_internal()?;
    Ok(ApiResponse::ok(found))
}
