//! The inventory service, `shop-inventory`: stock and reservations.
//!
//! It runs, in start order: telemetry; the database (the inventory schema and the chassis
//! outbox/inbox tables); the catalogue seed (products missing from the database); RabbitMQ,
//! attached in the background (the shop's exchanges, the `inventory.order-placed` and
//! `inventory.release` queues); the outbox relay; the two inbox consumers (reserve on
//! `order.placed`, release on the `inventory.release` command; a message with a field outside
//! its limit, `shop_common::limits`, is dead-lettered by `shop_common::events::decode` before
//! anything is written); HTTP
//! (`GET /internal/products`, `GET /internal/reservations/{order_id}`, behind service tokens)
//! and, on the same port, gRPC (`grpc.health.v1`, reflection; `inventory.v1.Inventory` for the orders
//! service, see `shop_inventory::grpc`, when `ORDERS_TOKEN_PUBLIC_KEY` is set).
//!
//! Environment: `HTTP_ADDR` (default `127.0.0.1:8082`), `ADMIN_ADDR` (probes and
//! `/metrics`, default `127.0.0.1:9082`), `DATABASE_URL`, `DATA_DIR`, `AMQP_URL`,
//! `SHOP_NAMESPACE`, `CONSUMER_CONCURRENCY` (see `shop_common::service`),
//! `INVENTORY_SEED=sku:name:price_cents:stock,…`, `SERVICE_TOKEN_PUBLIC_KEY`,
//! `ORDERS_TOKEN_PUBLIC_KEY` (the orders service's tokens for the gRPC API), and the
//! chassis' `LOG_FORMAT`, `RUST_LOG`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `PRE_STOP_DELAY`, ….

use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;
use chassis_core::health::BoxFuture;
use chassis_core::lifecycle::{App, Component, Context, LifecycleConfig, Stage};
use chassis_core::{BoxError, ServiceInfo};
use chassis_http::grpc::{GrpcHealth, GrpcLayers, GrpcReflection, GrpcRouter, Multiplex};
use chassis_http::health::HealthLayer;
use chassis_http::layers::StandardLayers;
use chassis_http::server::HttpServer;
use chassis_http::{ApiError, ApiResponse, ApiResult, ResultExt};
use chassis_messaging::{IncomingMessage, Outcome};
use serde_json::{Value, json};
use shop_common::db::{Db, Tx};
use shop_common::events::{
    CMD_INVENTORY_RELEASE, COMMANDS_EXCHANGE, Compensate, EVENTS_EXCHANGE, Emit, ORDER_PLACED,
    OrderPlaced, decode, retry,
};
use shop_common::limits;
use shop_common::service::{env, server_config};
use shop_common::{Shop, auth};
use shop_inventory::domain::{self, Product};
use shop_inventory::grpc::InventoryApi;
use shop_proto::methods;
use tower::Layer as _;

fn main() -> Result<(), BoxError> {
    // One runtime thread unless SHOP_RUNTIME_THREADS says otherwise (see `shop_common::service::runtime`).
    shop_common::service::runtime()?.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    // 1. Identity and telemetry.
    let info = ServiceInfo::from_env("inventory", env!("CARGO_PKG_VERSION"));
    let telemetry = shop_common::service::telemetry(info.clone())?;
    let app = App::new("inventory").config(LifecycleConfig::from_env()?);
    let shop = Shop::from_env("inventory");

    // 2. The database (opened at start) with its outbox, and the catalogue to seed it with.
    let db = shop.database()?;
    let seed = Seed {
        db: db.clone(),
        products: domain::parse_seed(&env("INVENTORY_SEED", domain::DEFAULT_SEED))?,
    };

    // 3. RabbitMQ, attached in the background: topology, relay, the two inbox consumers.
    let conn = shop.connect(&info)?;
    let placed = shop.queue("order-placed", &[(EVENTS_EXCHANGE, ORDER_PLACED)]);
    let release = shop.queue("release", &[(COMMANDS_EXCHANGE, CMD_INVENTORY_RELEASE)]);
    let topology = shop.topology().queue(placed.clone()).queue(release.clone());
    let relay = db.relay(&conn)?;
    // Saga step 1: reserve on `order.placed`.
    let reserver = db.consumer(&shop, &conn, placed, "inventory.reserve", |msg, tx| {
        Box::pin(reserve(msg, tx))
    })?;
    // Compensation: release on the `inventory.release` command.
    let releaser = db.consumer(&shop, &conn, release, "inventory.release", |msg, tx| {
        Box::pin(release_reservation(msg, tx))
    })?;

    // 4. HTTP: the internal API behind service tokens, in the standard layers.
    // With mTLS, only the gateway's certificate gets through as well.
    let routes = shop_common::tls::only_callers(
        Router::new()
            .route("/internal/products", get(products))
            .route("/internal/reservations/{order_id}", get(reservation))
            .layer(auth::require_from_env("inventory")?),
        &["gateway"],
    )?
    .with_state(db.clone())
    // Contract tests' provider states, only with SHOP_PACT_STATES=1 (see `shop_common::pact`).
    .merge(shop_common::pact::routes({
        let db = db.clone();
        move |change| shop_inventory::pact_states::setup(db.clone(), change)
    }));
    let control = shop.control(app.health());
    let probes = HealthLayer::new(app.health().clone()).prometheus(telemetry.prometheus_handle());
    // gRPC on the same port (HTTP/2; `Multiplex` tells the two apart by content type):
    // grpc.health.v1 from the same health registry as the probes, and `inventory.v1.Inventory`
    // for the orders service, behind its service token (and, with mTLS, its certificate).
    // Reflection lets grpcurl and other tools call it without the .proto file.
    let mut grpc = GrpcRouter::new()
        .add_service(
            GrpcHealth::new(app.health().clone())
                .service(methods::INVENTORY)
                .into_service(),
        )
        .add_service(
            GrpcReflection::new()
                .file_descriptor_set(shop_proto::FILE_DESCRIPTOR_SET)
                .into_service()?,
        );
    if let Some(orders_token) = auth::require_orders_from_env("inventory")? {
        let api = InventoryApi::new(db.clone()).into_server();
        grpc = match shop_common::tls::callers_layer(&["orders"])? {
            Some(peer) => grpc.route(methods::INVENTORY, orders_token.layer(peer.layer(api))),
            None => grpc.route(methods::INVENTORY, orders_token.layer(api)),
        };
    }
    let service = Multiplex::new(
        routes.layer(StandardLayers::new()),
        GrpcLayers::new().layer(grpc),
    );

    // 5. Run: start in this order; on SIGTERM stop in stages.
    app.component(telemetry)
        .component(db.component(domain::SCHEMA))
        .component(seed)
        .component(conn.component().declare(topology))
        .component(relay)
        .component(reserver)
        .component(releaser)
        .component(shop_common::admin::with_admin(
            HttpServer::new(server_config(8082)?, service).probes(probes),
            control,
        )?)
        .run()
        .await?;
    Ok(())
}

async fn reserve(msg: IncomingMessage, mut tx: Tx<'_>) -> Result<Vec<Emit>, Outcome> {
    let event: OrderPlaced = decode(&msg)?;
    let emits = domain::reserve(&mut tx, &event).await.map_err(retry)?;
    for e in &emits {
        tracing::info!(order_id = %event.order_id, outcome = e.kind, "reservation decided");
    }
    Ok(emits)
}

async fn release_reservation(msg: IncomingMessage, mut tx: Tx<'_>) -> Result<Vec<Emit>, Outcome> {
    let cmd: Compensate = decode(&msg)?;
    domain::release(&mut tx, &cmd.order_id, &cmd.reason)
        .await
        .map_err(retry)
}

/// Inserts the catalogue's missing products once the schema exists, before anything reads or
/// reserves stock (existing stock is kept across restarts).
#[derive(Debug)]
struct Seed {
    db: Db,
    products: Vec<Product>,
}

impl Component for Seed {
    fn name(&self) -> &str {
        "catalogue seed"
    }

    fn stage(&self) -> Stage {
        Stage::Resource
    }

    fn start(&mut self, _ctx: Context) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(domain::seed(&self.db, &self.products))
    }

    fn stop(&mut self, _deadline: Duration) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async { Ok(()) })
    }
}

async fn products(State(db): State<Db>) -> ApiResult<Vec<Product>> {
    Ok(ApiResponse::ok(
        domain::list_products(&db).await.or_internal()?,
    ))
}

/// `GET /internal/reservations/{order_id}`; an id longer than `MAX_ORDER_ID_LEN` is 422.
async fn reservation(State(db): State<Db>, Path(order_id): Path<String>) -> ApiResult<Value> {
    limits::check_order_id("order_id", &order_id)?;
    match domain::reservation_status(&db, &order_id)
        .await
        .or_internal()?
    {
        Some(status) => Ok(ApiResponse::ok(
            json!({"order_id": order_id, "status": status}),
        )),
        None => Err(ApiError::not_found("no reservation for this order")),
    }
}
