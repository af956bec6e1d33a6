//! # minimal-service
//!
//! The smallest service using every chassis piece — copy this crate to start a new service.
//!
//! - **telemetry**: JSON logs with trace ids, OpenTelemetry (set `OTEL_EXPORTER_OTLP_ENDPOINT`),
//!   Prometheus metrics at `/metrics`;
//! - **HTTP**: the chassis server (graceful shutdown on SIGTERM) with the standard layers
//!   (request id, trace, metrics, access log, timeout, load shedding, body limit, panic -> 500)
//!   around an axum router, errors in the chassis JSON body;
//! - **health**: `/health/live`, `/health/ready` (database + RabbitMQ), `/health/startup`;
//! - **messaging**: a supervised RabbitMQ connection, topology (a topic exchange, a quorum queue
//!   with retry tiers and a dead-letter queue), the transactional **outbox** (`POST /greetings`
//!   writes a row and its event in one transaction; the relay publishes it with confirms) and an
//!   **inbox** consumer (each event applied once).
//!
//! Environment: `HTTP_ADDR` (default `127.0.0.1:8095`), `DATABASE_URL` (SQLite, default
//! `sqlite://minimal.db`), `AMQP_URL`, `MINIMAL_PREFIX` (prefix of the exchange/queue names).
//! For PostgreSQL use `sqlx::PgPool`, `PgOutbox` and `Inbox<Postgres>` the same way.
//!
//! ```text
//! curl -XPOST localhost:8095/greetings -d '{"name":"ada"}' -H 'content-type: application/json'
//! curl localhost:8095/greetings     # {"success":true,"data":{"created":1,"processed":1}}
//! ```

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chassis_core::health::{CheckOptions, HealthRegistry, fn_check};
use chassis_core::shutdown::Shutdown;
use chassis_core::{BoxError, ServiceInfo};
use chassis_http::error::ApiError;
use chassis_http::health::HealthLayer;
use chassis_http::layers::StandardLayers;
use chassis_http::server::{Server, ServerConfig};
use chassis_messaging::amqp::connection::{Connection, ConnectionConfig};
use chassis_messaging::amqp::consumer::{Consumer, ConsumerConfig, Outcome};
use chassis_messaging::amqp::incoming::IncomingMessage;
use chassis_messaging::amqp::publisher::{Publisher, PublisherConfig};
use chassis_messaging::amqp::topology::{ExchangeConfig, QueueConfig, TopologyConfig};
use chassis_messaging::envelope::Envelope;
use chassis_messaging::sql::inbox::{Claim, Inbox};
use chassis_messaging::sql::outbox::{Relay, RelayConfig, SqliteOutbox};
use chassis_observability::Telemetry;
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

/// The event this service emits (and, to show the inbox, consumes).
#[derive(Debug, Serialize, Deserialize)]
struct GreetingCreated {
    name: String,
}

#[derive(Clone)]
struct AppState {
    pool: SqlitePool,
    outbox: SqliteOutbox,
    exchange: Arc<str>,
}

fn env(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // 1. Identity and telemetry (logs, traces, metrics).
    let telemetry = Telemetry::builder(ServiceInfo::from_env(
        "minimal-service",
        env!("CARGO_PKG_VERSION"),
    ))
    .init()?;
    let prefix = env("MINIMAL_PREFIX", "");
    let exchange: Arc<str> = format!("{prefix}minimal.events").into();

    // 2. Database: the service's table plus the chassis outbox/inbox tables.
    let opts = SqliteConnectOptions::from_str(&env("DATABASE_URL", "sqlite://minimal.db"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(opts)
        .await?;
    let outbox = SqliteOutbox::new(pool.clone());
    outbox.migrate().await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS greetings (name TEXT NOT NULL, processed INTEGER NOT NULL DEFAULT 0)")
        .execute(&pool)
        .await?;

    // 3. RabbitMQ: connection, topology, the outbox relay, an inbox consumer.
    let amqp = env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let conn = Connection::connect(ConnectionConfig::new(amqp, "minimal-service")).await?;
    let queue = QueueConfig::new(format!("{prefix}minimal.greetings"))
        .bind(exchange.to_string(), "greeting.created");
    conn.declare(
        TopologyConfig::new()
            .exchange(ExchangeConfig::topic(exchange.to_string()))
            .queue(queue.clone()),
    )
    .await?;
    let relay_token = tokio_util::sync::CancellationToken::new();
    let publisher = Arc::new(Publisher::new(&conn, PublisherConfig::default())?);
    let relay =
        Relay::new(outbox.clone(), publisher, RelayConfig::default())?.spawn(relay_token.clone());
    let inbox = Inbox::new(pool.clone(), "minimal.greetings");
    let consumer = Consumer::start(
        &conn,
        queue,
        ConsumerConfig::default(),
        move |msg: IncomingMessage| {
            let inbox = inbox.clone();
            async move {
                let Ok(event) = msg.decode::<GreetingCreated>() else {
                    return Outcome::reject("undecodable");
                };
                let Some(id) = msg.message_id() else {
                    return Outcome::reject("no message id");
                };
                let mut tx = match inbox.begin(id).await {
                    Ok(Claim::New(tx)) => tx,
                    Ok(Claim::Duplicate) => return Outcome::Ack,
                    Err(e) => return Outcome::retry(e.to_string()),
                };
                let done =
                    sqlx::query("UPDATE greetings SET processed = processed + 1 WHERE name = $1")
                        .bind(&event.data.name)
                        .execute(&mut *tx)
                        .await;
                match (done, tx.commit().await) {
                    (Ok(_), Ok(())) => Outcome::Ack,
                    (Err(e), _) | (_, Err(e)) => Outcome::retry(e.to_string()),
                }
            }
        },
    )
    .await?;

    // 4. Health: required checks for the database and the broker.
    let health = HealthRegistry::new();
    health.register(
        conn.health_check(),
        CheckOptions::required().timeout(Duration::from_secs(2)),
    );
    let ping = pool.clone();
    health.register(
        fn_check("database", move || {
            let pool = ping.clone();
            async move {
                sqlx::query("SELECT 1")
                    .execute(&pool)
                    .await
                    .map(|_| ())
                    .map_err(BoxError::from)
            }
        }),
        CheckOptions::required(),
    );

    // 5. HTTP: the app router inside the standard layers, probes and /metrics outside them.
    let state = AppState {
        pool: pool.clone(),
        outbox,
        exchange,
    };
    let router = Router::new()
        .route("/greetings", get(count).post(create))
        .with_state(state);
    let mut probes = HealthLayer::new(health.clone());
    if let Some(handle) = telemetry.prometheus_handle() {
        probes = probes.prometheus(handle);
    }
    let service = tower::ServiceBuilder::new()
        .layer(probes)
        .layer(StandardLayers::new())
        .service(router);
    let addr = env("HTTP_ADDR", "127.0.0.1:8095").parse()?;
    let server = Server::bind(ServerConfig::default().bind(addr))
        .await?
        .shutdown(Shutdown::new())
        .health(health.clone());
    health.mark_started();
    tracing::info!(%addr, "minimal-service ready");
    server.serve(service).await?;

    // 6. Graceful shutdown (the server already failed readiness and drained HTTP).
    consumer.shutdown().await;
    relay_token.cancel();
    let _ = relay.await;
    conn.close().await;
    pool.close().await;
    telemetry.shutdown(Duration::from_secs(5)).await?;
    Ok(())
}

async fn create(
    State(s): State<AppState>,
    Json(g): Json<GreetingCreated>,
) -> Result<Response, ApiErr> {
    if g.name.trim().is_empty() {
        return Err(ApiErr(Box::new(ApiError::bad_request(
            "name must not be empty",
        ))));
    }
    // The business write and its event commit together, or not at all.
    let mut tx = s.pool.begin().await?;
    sqlx::query("INSERT INTO greetings (name) VALUES ($1)")
        .bind(&g.name)
        .execute(&mut *tx)
        .await?;
    let msg = Envelope::new("/minimal-service", "greeting.created", &g)
        .subject(g.name.clone())
        .to_message(s.exchange.to_string())
        .map_err(ApiErr::internal)?;
    s.outbox
        .enqueue(&mut tx, &msg)
        .await
        .map_err(ApiErr::internal)?;
    s.outbox.commit(tx).await.map_err(ApiErr::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({"success": true, "data": g})),
    )
        .into_response())
}

async fn count(State(s): State<AppState>) -> Result<Response, ApiErr> {
    let row = sqlx::query("SELECT COUNT(*) AS n, COALESCE(SUM(processed), 0) AS p FROM greetings")
        .fetch_one(&s.pool)
        .await?;
    let (created, processed): (i64, i64) = (row.try_get("n")?, row.try_get("p")?);
    Ok(Json(
        serde_json::json!({"success": true, "data": {"created": created, "processed": processed}}),
    )
    .into_response())
}

/// A chassis error as an axum response (the one JSON error body).
#[derive(Debug)]
struct ApiErr(Box<ApiError>);

impl ApiErr {
    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "internal error");
        ApiErr(Box::new(ApiError::internal("internal error")))
    }
}

impl From<sqlx::Error> for ApiErr {
    fn from(e: sqlx::Error) -> Self {
        ApiErr::internal(e)
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        (*self.0).into_response().map(axum::body::Body::new)
    }
}
