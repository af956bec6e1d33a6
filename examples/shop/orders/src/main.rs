//! The orders service, `shop-orders`: places orders and runs the saga.
//!
//! It runs, in start order: telemetry; the database (the orders schema and the chassis
//! outbox/inbox tables); RabbitMQ, attached in the background (the shop's exchanges and the
//! `orders.saga` queue); the outbox relay; the saga consumer (inventory and payment replies,
//! through the inbox); the timeout sweeper; HTTP (`POST /internal/orders`,
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
use chassis_core::lifecycle::{App, LifecycleConfig, Stage, task};
use chassis_core::{BoxError, ServiceInfo};
use chassis_http::health::HealthLayer;
use chassis_http::layers::StandardLayers;
use chassis_http::server::HttpServer;
use chassis_http::{ApiError, ApiResponse, ApiResult, ResultExt};
use chassis_messaging::{IncomingMessage, Outcome};
use serde_json::{Map, Value};
use shop_common::db::{Db, Tx, now_ms};
use shop_common::events::{
    EVENTS_EXCHANGE, Emit, INVENTORY_REJECTED, INVENTORY_RESERVED, ORDER_CONFIRMED, ORDER_FAILED,
    PAYMENT_FAILED, PAYMENT_SUCCEEDED, decode, retry,
};
use shop_common::limits;
use shop_common::service::{env, server_config};
use shop_common::{Shop, auth};
use shop_orders::catalogue::Catalogue;
use shop_orders::saga::{self, NewOrder};
use shop_orders::waiters::{self, Waiters};

#[derive(Clone)]
struct Ctx {
    shop: Shop,
    db: Db,
    step_timeout_ms: i64,
    waiters: Waiters,
    /// The inventory's product check at placement (gRPC), when `INVENTORY_URL` is set.
    catalogue: Option<Catalogue>,
}

/// Wakes the requests waiting for the orders that `emits` (just committed) announce as final.
fn announce(waiters: &Waiters, emits: &[Emit]) {
    for e in emits {
        if e.kind == ORDER_CONFIRMED || e.kind == ORDER_FAILED {
            waiters.finished(&e.subject);
        }
    }
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
    let step_timeout_ms = env("SAGA_STEP_TIMEOUT_MS", "30000")
        .parse()
        .unwrap_or(30_000);

    // 2. The database (opened at start) with its outbox.
    let db = shop.database()?;
    let waiters = Waiters::default();
    let ctx = Ctx {
        shop: shop.clone(),
        db: db.clone(),
        step_timeout_ms,
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
    let saga = db.consumer_then(
        &shop,
        &conn,
        replies,
        "orders.saga",
        move |msg, tx| Box::pin(on_reply(msg, tx, step_timeout_ms)),
        move |emits| announce(&waiters, emits),
    );
    let sweeper = ctx.clone();
    let timeouts = task("saga-timeouts", Stage::Worker, |stop| async move {
        // Fails overdue steps once a second, and right after a restart.
        while !stop.is_cancelled() {
            expire_overdue(&sweeper).await;
            let _ = tokio::time::timeout(Duration::from_secs(1), stop.cancelled()).await;
        }
        Ok(())
    });

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
        .component(conn.component().declare(topology))
        .component(relay)
        .component(saga)
        .component(timeouts)
        .component(shop_common::admin::with_admin(
            HttpServer::new(server_config(8081)?, service).probes(probes),
            control,
        )?)
        .run()
        .await?;
    Ok(())
}

/// A reply to the saga (inventory, payments), applied once through the inbox.
async fn on_reply(
    msg: IncomingMessage,
    mut tx: Tx<'_>,
    timeout: i64,
) -> Result<Vec<Emit>, Outcome> {
    let tx = &mut tx;
    let emits = match msg.routing_key() {
        INVENTORY_RESERVED => saga::on_inventory_reserved(tx, &decode(&msg)?, timeout).await,
        INVENTORY_REJECTED => saga::on_inventory_rejected(tx, &decode(&msg)?).await,
        PAYMENT_SUCCEEDED => saga::on_payment_succeeded(tx, &decode(&msg)?).await,
        PAYMENT_FAILED => saga::on_payment_failed(tx, &decode(&msg)?).await,
        other => return Err(Outcome::reject(format!("unexpected routing key `{other}`"))),
    };
    emits.map_err(retry)
}

/// One sweep: fails the overdue saga steps (at most 100) with their compensations.
async fn expire_overdue(ctx: &Ctx) {
    let swept = async {
        let mut txn = ctx.db.begin().await?;
        let (ids, emits) = saga::expire_overdue(&mut txn.tx(), now_ms(), 100).await?;
        txn.emit(&ctx.shop, &emits, None).await?;
        txn.commit().await?;
        announce(&ctx.waiters, &emits);
        Ok::<_, BoxError>(ids)
    };
    match swept.await {
        Ok(ids) if !ids.is_empty() => {
            tracing::warn!(count = ids.len(), ?ids, "saga steps timed out")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "timeout sweep failed"),
    }
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
    let mut txn = ctx.db.begin().await.or_internal()?;
    let placed = saga::place(&mut txn.tx(), &new, key, ctx.step_timeout_ms)
        .await
        .or_internal()?;
    txn.emit(&ctx.shop, &placed.emits, None)
        .await
        .or_internal()?;
    txn.commit().await.or_internal()?;
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
