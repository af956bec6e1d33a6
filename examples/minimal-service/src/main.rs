//! # minimal-service
//!
//! The template for a new service: copy this folder, rename it, and replace the greetings with
//! your domain. It uses every chassis piece:
//!
//! - **telemetry**: JSON logs with trace ids, OpenTelemetry (set `OTEL_EXPORTER_OTLP_ENDPOINT`),
//!   Prometheus metrics at `/metrics` on the admin port;
//! - **HTTP**: axum routes inside the standard layers (request id, trace, RED metrics labelled
//!   by route, access log, timeout, load shedding, body limit, panic -> 500), answers and errors
//!   in the chassis JSON envelope;
//! - **health**: `/health/live`, `/health/ready` (the database; RabbitMQ shows as degraded, not
//!   as not ready: writes go to the outbox), `/health/startup`, served with `/metrics` on the
//!   **admin port** only, so the public port serves the API alone;
//! - **messaging**: `POST /greetings` writes a row and its event in one transaction (the
//!   **outbox**); the relay publishes it with confirms; an **inbox** consumer applies each event
//!   once. The service starts and takes writes while RabbitMQ is away, and catches up after;
//! - **lifecycle**: the [`App`] starts the components in order and, on SIGTERM, fails
//!   readiness, stops intake, drains requests and handlers, lets the relay finish its batch,
//!   closes RabbitMQ and the database, and flushes telemetry (a second signal forces the exit).
//!
//! Environment: `HTTP_ADDR` (default `127.0.0.1:8095`), `ADMIN_ADDR` (probes and `/metrics`,
//! default `127.0.0.1:9095`; keep it off the public network), `DATABASE_URL` (SQLite, default
//! `sqlite://minimal.db`), `AMQP_URL`, `MINIMAL_PREFIX` (prefix of the exchange/queue names),
//! `PRE_STOP_DELAY` (e.g. `5s` on Kubernetes), `DRAIN_TIMEOUT`, and the access log's
//! `ACCESS_LOG_SAMPLE`, `ACCESS_LOG_SLOW_MS` and `ACCESS_LOG_CLIENT_ERRORS`. For PostgreSQL use a
//! `PgPool`: `Outbox` and `Inbox` are generic over the database.
//!
//! ```text
//! curl -XPOST localhost:8095/greetings -d '{"name":"ada"}' -H 'content-type: application/json'
//! curl localhost:8095/greetings     # {"success":true,"data":{"created":1,"processed":1},…}
//! curl localhost:9095/health/ready  # the admin port: probes and /metrics
//! ```

use std::sync::Arc;

use axum::{Json, Router, extract::State, routing::get};
use chassis_core::lifecycle::{App, LifecycleConfig};
use chassis_core::{BoxError, ServiceInfo};
use chassis_http::layers::StandardLayers;
use chassis_http::server::{HttpServer, ServerConfig};
use chassis_http::{ApiError, ApiResponse, ApiResult, ResultExt, health::HealthLayer};
use chassis_messaging::lifecycle::ConsumerComponent;
use chassis_messaging::sql::sqlite_pool;
use chassis_messaging::{
    Connection, ConnectionConfig, ConsumerConfig, Envelope, ExchangeConfig, Inbox, IncomingMessage,
    Outbox, Outcome, Publisher, PublisherConfig, QueueConfig, Relay, RelayConfig, TopologyConfig,
    idempotent,
};
use chassis_observability::Telemetry;
use serde::{Deserialize, Serialize};
use sqlx::{Sqlite, SqlitePool, Transaction};

/// The event this service emits (and, to show the inbox, consumes).
#[derive(Debug, Serialize, Deserialize)]
struct GreetingCreated {
    name: String,
}

#[derive(Clone)]
struct Ctx {
    pool: SqlitePool,
    outbox: Outbox<Sqlite>,
    exchange: Arc<str>,
}

const LOCAL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS greetings \
    (name TEXT NOT NULL, processed INTEGER NOT NULL DEFAULT 0)";

fn env(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.into())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // 1. Identity and telemetry (logs, traces, metrics).
    let info = ServiceInfo::from_env("minimal-service", env!("CARGO_PKG_VERSION"));
    let telemetry = Telemetry::builder(info).init()?;
    let app = App::new("minimal-service").config(LifecycleConfig::from_env()?);
    let prefix = env("MINIMAL_PREFIX", "");
    let exchange: Arc<str> = format!("{prefix}minimal.events").into();

    // 2. Database (opened at start): the service's table plus the chassis outbox/inbox tables.
    let pool = sqlite_pool(&env("DATABASE_URL", "sqlite://minimal.db"))?;
    let outbox = Outbox::new(pool.clone());

    // 3. RabbitMQ, attached in the background: topology, outbox relay, an inbox consumer.
    let conn = Connection::start(ConnectionConfig::new(
        env("AMQP_URL", LOCAL),
        "minimal-service",
    ))?;
    let queue = QueueConfig::new(format!("{prefix}minimal.greetings"));
    let queue = queue.bind(&*exchange, "greeting.created");
    let topology = TopologyConfig::new().exchange(ExchangeConfig::topic(&*exchange));
    let publisher = Arc::new(Publisher::new(&conn, PublisherConfig::default())?);
    let relay = Relay::new(outbox.clone(), publisher, RelayConfig::default())?;
    let outbox_db = outbox.component();
    let inbox = Inbox::new(pool.clone(), "minimal.greetings");
    let handler = idempotent(inbox, |msg, tx| Box::pin(apply(msg, tx)));
    let consumer = ConsumerComponent::new(&conn, queue.clone(), ConsumerConfig::default(), handler);

    // 4. HTTP: routes inside the standard layers on HTTP_ADDR; probes and /metrics on the
    //    admin port (ADMIN_ADDR), not on the public one.
    let routes = Router::new().route("/greetings", get(count).post(create));
    let routes = routes.with_state(Ctx {
        pool: pool.clone(),
        outbox,
        exchange,
    });
    let probes = HealthLayer::new(app.health().clone()).prometheus(telemetry.prometheus_handle());
    let service = routes.layer(StandardLayers::from_env()?);
    let config = ServerConfig::default()
        .bind(env("HTTP_ADDR", "127.0.0.1:8095").parse()?)
        .admin(env("ADMIN_ADDR", "127.0.0.1:9095").parse()?);

    // 5. Run: start in this order; on SIGTERM stop in stages (intake, relay, broker, pool, telemetry).
    app.component(telemetry)
        .component(outbox_db.schema(SCHEMA))
        .component(conn.component().declare(topology.queue(queue)))
        .component(relay.into_component())
        .component(consumer)
        .component(HttpServer::new(config, service).probes(probes))
        .run()
        .await?;
    Ok(())
}

/// The inbox consumer: runs once per event, in the transaction that records its id.
async fn apply(msg: IncomingMessage, tx: &mut Transaction<'static, Sqlite>) -> Outcome {
    let Ok(event) = msg.decode::<GreetingCreated>() else {
        return Outcome::reject("undecodable");
    };
    let applied = sqlx::query("UPDATE greetings SET processed = processed + 1 WHERE name = $1")
        .bind(&event.data.name)
        .execute(&mut **tx)
        .await;
    applied.map_or_else(|e| Outcome::retry(e.to_string()), |_| Outcome::Ack)
}

#[derive(Serialize)]
struct Counts {
    created: i64,
    processed: i64,
}

async fn create(
    State(s): State<Ctx>,
    Json(g): Json<GreetingCreated>,
) -> ApiResult<GreetingCreated> {
    if g.name.trim().is_empty() {
        return Err(ApiError::bad_request("name must not be empty"));
    }
    // The business write and its event commit together, or not at all.
    let mut tx = s.pool.begin().await.or_internal()?;
    sqlx::query("INSERT INTO greetings (name) VALUES ($1)")
        .bind(&g.name)
        .execute(&mut *tx)
        .await
        .or_internal()?;
    let event = Envelope::new("/minimal-service", "greeting.created", &g).subject(g.name.clone());
    s.outbox
        .enqueue_event(&mut tx, &s.exchange, &event)
        .await
        .or_internal()?;
    s.outbox.commit(tx).await.or_internal()?;
    Ok(ApiResponse::created(g))
}

async fn count(State(s): State<Ctx>) -> ApiResult<Counts> {
    let (created, processed): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), COALESCE(SUM(processed), 0) FROM greetings")
            .fetch_one(&s.pool)
            .await
            .or_internal()?;
    Ok(ApiResponse::ok(Counts { created, processed }))
}
