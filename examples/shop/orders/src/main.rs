//! The orders service, `shop-orders`: places orders and runs the saga.
//!
//! It runs, in start order: telemetry; the database (the orders schema and the chassis
//! outbox/inbox tables); RabbitMQ, attached in the background (the shop's exchanges and the
//! `orders.saga` queue); the outbox relay; the order saga (`shop_orders::saga`: its tables, and
//! its step timeouts fired from the database); the saga consumer (inventory and payment
//! replies, each applied once); HTTP (`POST /internal/orders`,
//! `GET /internal/orders/{id}` (with `?wait_ms=N`, answered once the order is final or after
//! N ms: see `shop_orders::waiters`), `GET /internal/stats`, behind service tokens). Orders are
//! accepted while RabbitMQ is away: they wait in the outbox. With `INVENTORY_URL`, a placement
//! first asks the inventory over gRPC whether its products exist (`shop_orders::catalogue`;
//! accepted unchecked while the inventory is away).
//!
//! Environment: `HTTP_ADDR` (default `127.0.0.1:8081`), `ADMIN_ADDR` (probes and
//! `/metrics`, default `127.0.0.1:9081`), `DATABASE_URL`, `DATA_DIR`, `AMQP_URL`,
//! `SHOP_NAMESPACE`, `CONSUMER_CONCURRENCY` (see `shop_common::service`),
//! `SAGA_STEP_TIMEOUT_MS` (default 30000), `SERVICE_TOKEN_PUBLIC_KEY`, `INVENTORY_URL` and
//! `ORDERS_TOKEN_PRIVATE_KEY` (the inventory's gRPC API and the key of orders' own tokens
//! for it), and the chassis'
//! `LOG_FORMAT`, `RUST_LOG`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `PRE_STOP_DELAY`, `DRAIN_TIMEOUT`, ….

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderMap, HeaderValue};
use axum::routing::{get, post};
use chassis_core::lifecycle::{App, LifecycleConfig};
use chassis_core::{BoxError, ServiceInfo};
use chassis_http::health::HealthLayer;
use chassis_http::layers::StandardLayers;
use chassis_http::server::HttpServer;
use chassis_http::{ApiError, ApiResponse, ApiResult, ResultExt};
use chassis_messaging::lifecycle::ConsumerComponent;
use serde_json::{Map, Value};
use shop_common::db::Db;
use shop_common::events::{
    EVENTS_EXCHANGE, INVENTORY_REJECTED, INVENTORY_RESERVED, PAYMENT_FAILED, PAYMENT_SUCCEEDED,
};
use shop_common::limits;
use shop_common::service::{env, server_config};
use shop_common::{Shop, auth};
use shop_orders::catalogue::Catalogue;
use shop_orders::saga::{self, NewOrder, OrderSaga};
use shop_orders::waiters::{self, Waiters};

#[derive(Clone)]
struct Ctx {
    db: Db,
    saga: OrderSaga,
    waiters: Waiters,
    /// The inventory's product check at placement (gRPC), when `INVENTORY_URL` is set.
    catalogue: Option<Catalogue>,
}

/// `?wait_ms=N`: answer once the order is final, or after N ms (capped at `waiters::MAX_WAIT`).
#[derive(Debug, serde::Deserialize)]
struct WaitQuery {
    wait_ms: Option<u64>,
}

fn main() -> Result<(), BoxError> {
    // One runtime thread unless SHOP_RUNTIME_THREADS says otherwise (see `shop_common::service::runtime`).
    shop_common::service::runtime()?.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    // 1. Identity and telemetry.
    let info = ServiceInfo::from_env("orders", env!("CARGO_PKG_VERSION"));
    let telemetry = shop_common::service::telemetry(info.clone())?;
    let app = App::new("orders").config(LifecycleConfig::from_env()?);
    let shop = Shop::from_env("orders");
    let step_timeout = env("SAGA_STEP_TIMEOUT_MS", "30000")
        .parse()
        .map_or(Duration::from_secs(30), Duration::from_millis);

    // 2. The database (opened at start) with its outbox.
    let db = shop.database()?;
    let waiters = Waiters::default();
    // An order ended by a reply or a timeout wakes the requests waiting for it.
    let finished = waiters.clone();
    let order_saga = OrderSaga::new(&db, &shop, step_timeout, move |id| finished.finished(id))?;
    let ctx = Ctx {
        db: db.clone(),
        saga: order_saga.clone(),
        waiters: waiters.clone(),
        catalogue: Catalogue::from_env()?,
    };

    // 3. RabbitMQ, attached in the background: topology, relay, the saga's replies.
    let conn = shop.connect(&info)?;
    let replies = shop.queue(
        "saga",
        &[
            (EVENTS_EXCHANGE, INVENTORY_RESERVED),
            (EVENTS_EXCHANGE, INVENTORY_REJECTED),
            (EVENTS_EXCHANGE, PAYMENT_SUCCEEDED),
            (EVENTS_EXCHANGE, PAYMENT_FAILED),
        ],
    );
    let topology = shop.topology().queue(replies.clone());
    let relay = db.relay(&conn)?;
    let handler = shop.controlled(&conn, &replies, order_saga.handler()?);
    let consumer = ConsumerComponent::new(&conn, replies, shop.consumer_config(), handler);

    // 4. HTTP: the internal API behind service tokens, in the standard layers.
    // With mTLS, only the gateway's certificate gets through as well.
    let routes = shop_common::tls::only_callers(
        Router::new()
            .route("/internal/orders", post(place))
            .route("/internal/orders/{id}", get(get_order))
            .route("/internal/stats", get(stats))
            .layer(auth::require_from_env("orders")?),
        &["gateway"],
    )?
    .with_state(ctx);
    let control = shop.control(app.health());
    let probes = HealthLayer::new(app.health().clone()).prometheus(telemetry.prometheus_handle());
    let service = routes.layer(StandardLayers::new());

    // 5. Run: start in this order; on SIGTERM stop in stages.
    app.component(telemetry)
        .component(db.component(saga::SCHEMA))
        .component(order_saga.component())
        .component(conn.component().declare(topology))
        .component(relay)
        .component(consumer)
        .component(shop_common::admin::with_admin(
            HttpServer::new(server_config(8081)?, service).probes(probes),
            control,
        )?)
        .run()
        .await?;
    Ok(())
}

/// `POST /internal/orders`: 202 with the order and `Location: /internal/orders/{id}`. A body
/// that is not an order is 400; a field outside its limit (`shop_common::limits`), or an
/// `Idempotency-Key` longer than `MAX_SCOPED_IDEMPOTENCY_KEY_LEN`, is 422 naming the field, and
/// nothing is written.
async fn place(State(ctx): State<Ctx>, headers: HeaderMap, body: Bytes) -> ApiResult<Value> {
    let new: NewOrder = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid order: {e}")))?;
    new.validate().map_err(|e| {
        tracing::info!(field = e.field(), error = %e, "order refused");
        ApiError::from(e)
    })?;
    // Every line must name a product (the inventory over gRPC; unchecked when it is away).
    if let Some(catalogue) = &ctx.catalogue {
        catalogue.admit(&new.items).await?;
    }
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(key)) => {
            limits::check_required(
                "Idempotency-Key",
                key,
                limits::MAX_SCOPED_IDEMPOTENCY_KEY_LEN,
            )?;
            Some(key)
        }
        Some(Err(_)) => {
            return Err(ApiError::bad_request(
                "Idempotency-Key must be visible ASCII",
            ));
        }
        None => None,
    };
    let placed = ctx.saga.place(&new, key).await.or_internal()?;
    if placed.created {
        tracing::info!(order_id = %placed.order.id, "order placed");
    }
    let location =
        HeaderValue::from_str(&format!("/internal/orders/{}", placed.order.id)).or_internal()?;
    let mut data = serde_json::to_value(&placed.order).or_internal()?;
    data["order_id"] = data["id"].clone();
    data["replayed"] = (!placed.created).into();
    Ok(ApiResponse::accepted(data).with_header(LOCATION, location))
}

async fn get_order(
    State(ctx): State<Ctx>,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<saga::Order> {
    limits::check_order_id("id", &id)?;
    // Registered before the read: a finish committed after the read still wakes it.
    let waiter = q.wait_ms.filter(|ms| *ms > 0).map(|ms| {
        let wait = Duration::from_millis(ms).min(waiters::MAX_WAIT);
        (ctx.waiters.wait(&id), wait)
    });
    let Some(order) = saga::get(&ctx.db, &id).await.or_internal()? else {
        return Err(ApiError::not_found("no such order"));
    };
    let Some((waiter, wait)) = waiter.filter(|_| order.status == saga::PENDING) else {
        return Ok(ApiResponse::ok(order));
    };
    if !waiter.wait(wait).await {
        return Ok(ApiResponse::ok(order));
    }
    match saga::get(&ctx.db, &id).await.or_internal()? {
        Some(order) => Ok(ApiResponse::ok(order)),
        None => Err(ApiError::not_found("no such order")),
    }
}

async fn stats(State(ctx): State<Ctx>) -> ApiResult<Map<String, Value>> {
    let counts = saga::count_by_status(&ctx.db).await.or_internal()?;
    Ok(ApiResponse::ok(
        counts.into_iter().map(|(k, v)| (k, v.into())).collect(),
    ))
}
