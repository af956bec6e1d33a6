//! The service bootstrap: every shop service starts through [`App::start`] and ends in
//! [`App::serve`], so each one uses the whole chassis the same way.
//!
//! Start: identity from the environment -> telemetry (JSON logs with trace ids, OpenTelemetry,
//! Prometheus) -> database (SQLite file or `DATABASE_URL`; the service schema plus the chassis
//! outbox/inbox tables) -> RabbitMQ connection (supervised, reconnecting) and topology (the
//! topic exchanges `shop.events` / `shop.commands` and the service's quorum queues with their
//! retry tiers and dead-letter queues) -> outbox relay -> consumers (each wrapped in the inbox)
//! -> HTTP server with the standard layers, health probes and `/metrics`.
//!
//! Stop (SIGTERM/SIGINT): readiness turns red, the listener closes, requests drain, consumers
//! stop and finish their in-flight handlers, the relay stops after its batch, the AMQP
//! connection and the pool close, telemetry flushes.
//!
//! Environment: `HTTP_ADDR` (default `127.0.0.1:<default port>`), `DATABASE_URL` (default
//! `sqlite://<DATA_DIR or .>/<service>.db`), `AMQP_URL` (default the local broker),
//! `SHOP_NAMESPACE` (a prefix for every exchange and queue name, so several systems, e.g. tests,
//! share one broker), `CONSUMER_CONCURRENCY` (default 8), plus the chassis' own `LOG_FORMAT`,
//! `RUST_LOG`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `SERVICE_NAME`, ….
//!
//! # Example
//! ```no_run
//! use shop_common::runtime::{App, Spec};
//!
//! # async fn run() -> Result<(), chassis_core::BoxError> {
//! let app = App::start(Spec { name: "minimal", default_port: 8095, schema: "" }).await?;
//! app.serve(axum::Router::new()).await?;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chassis_core::health::{CheckOptions, HealthRegistry, fn_check};
use chassis_core::shutdown::Shutdown;
use chassis_core::{BoxError, ServiceInfo};
use chassis_http::health::HealthLayer;
use chassis_http::layers::StandardLayers;
use chassis_http::server::{Server, ServerConfig};
use chassis_messaging::amqp::connection::{Connection, ConnectionConfig};
use chassis_messaging::amqp::consumer::{
    Consumer, ConsumerConfig, ConsumerHandle, Handler, Outcome,
};
use chassis_messaging::amqp::incoming::IncomingMessage;
use chassis_messaging::amqp::publisher::{Publisher, PublisherConfig};
use chassis_messaging::amqp::topology::{ExchangeConfig, QueueConfig, TopologyConfig};
use chassis_messaging::envelope::Envelope;
use chassis_messaging::sql::inbox::{Claim, Inbox};
use chassis_messaging::sql::outbox::{PgOutbox, Relay, RelayConfig, SqliteOutbox};
use chassis_observability::{Telemetry, TelemetryGuard};
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::db::{Db, Tx};
use crate::events::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE, Emit, source};

/// What a service is.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Service name (`orders`, …): log/metric identity, database file, queue prefix.
    pub name: &'static str,
    /// HTTP port when `HTTP_ADDR` is not set.
    pub default_port: u16,
    /// The service's schema (`;`-separated portable SQL), applied at start.
    pub schema: &'static str,
}

/// Why a message handler failed.
#[derive(Debug)]
pub enum HandlerError {
    /// Transient (database busy, broker hiccup): retry through the delay tiers.
    Retry(String),
    /// The message can never be processed: dead-letter it with this reason.
    Reject(String),
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        HandlerError::Retry(format!("database: {e}"))
    }
}

impl From<chassis_messaging::error::Error> for HandlerError {
    fn from(e: chassis_messaging::error::Error) -> Self {
        HandlerError::Retry(format!("messaging: {e}"))
    }
}

#[derive(Debug, Clone)]
enum Outbox {
    Sqlite(SqliteOutbox),
    Postgres(PgOutbox),
}

struct Inner {
    spec: Spec,
    info: ServiceInfo,
    namespace: String,
    db: Db,
    conn: Connection,
    outbox: Outbox,
    health: HealthRegistry,
    shutdown: Shutdown,
    telemetry: Mutex<Option<TelemetryGuard>>,
    consumers: Mutex<Vec<ConsumerHandle>>,
    relay: Mutex<Option<(CancellationToken, JoinHandle<()>)>>,
    addr: SocketAddr,
}

/// A running shop service. Cheap to clone (handlers get a clone).
#[derive(Clone)]
pub struct App {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("service", &self.inner.spec.name)
            .field("addr", &self.inner.addr)
            .finish()
    }
}

fn env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// The broker URL: `AMQP_URL` or the local RabbitMQ.
pub fn amqp_url() -> String {
    env("AMQP_URL").unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

impl App {
    /// Starts everything but the HTTP server (see the [module docs](self)).
    pub async fn start(spec: Spec) -> Result<App, BoxError> {
        let info = ServiceInfo::from_env(spec.name, env!("CARGO_PKG_VERSION"));
        let telemetry = Telemetry::builder(info.clone()).init()?;
        let namespace = env("SHOP_NAMESPACE").unwrap_or_default();
        let addr: SocketAddr = env("HTTP_ADDR")
            .unwrap_or_else(|| format!("127.0.0.1:{}", spec.default_port))
            .parse()
            .map_err(|e| format!("HTTP_ADDR: {e}"))?;

        let db_url = env("DATABASE_URL").unwrap_or_else(|| {
            let dir = env("DATA_DIR").unwrap_or_else(|| ".".into());
            Db::sqlite_url(&std::path::Path::new(&dir).join(format!("{}.db", spec.name)))
        });
        let db = Db::connect(&db_url).await?;
        let outbox = match &db {
            Db::Sqlite(p) => Outbox::Sqlite(SqliteOutbox::new(p.clone())),
            Db::Postgres(p) => Outbox::Postgres(PgOutbox::new(p.clone())),
        };
        match &outbox {
            Outbox::Sqlite(o) => o.migrate().await?,
            Outbox::Postgres(o) => o.migrate().await?,
        }
        if !spec.schema.trim().is_empty() {
            db.execute_script(spec.schema).await?;
        }

        let conn_name = format!("{}{}-{}", namespace, spec.name, info.instance_id);
        let conn = Connection::connect(ConnectionConfig::new(amqp_url(), conn_name)).await?;
        conn.declare(
            TopologyConfig::new()
                .exchange(ExchangeConfig::topic(format!(
                    "{namespace}{EVENTS_EXCHANGE}"
                )))
                .exchange(ExchangeConfig::topic(format!(
                    "{namespace}{COMMANDS_EXCHANGE}"
                ))),
        )
        .await?;

        let health = HealthRegistry::new();
        health.register(
            conn.health_check(),
            CheckOptions::required().timeout(Duration::from_secs(2)),
        );
        let ping_db = db.clone();
        health.register(
            fn_check("database", move || {
                let db = ping_db.clone();
                async move { db.ping().await.map_err(BoxError::from) }
            }),
            CheckOptions::required().timeout(Duration::from_secs(2)),
        );

        // The relay publishes each row in a span whose parent is the trace context the outbox
        // stored with the row, so an event continues the trace of the request or message that
        // caused it (chassis-messaging does this; no wrapper needed).
        let publisher = Arc::new(Publisher::new(&conn, PublisherConfig::default())?);
        let token = CancellationToken::new();
        let relay_config = RelayConfig::default();
        let relay = match &outbox {
            Outbox::Sqlite(o) => {
                Relay::new(o.clone(), publisher, relay_config)?.spawn(token.clone())
            }
            Outbox::Postgres(o) => {
                Relay::new(o.clone(), publisher, relay_config)?.spawn(token.clone())
            }
        };
        tracing::info!(service = spec.name, %addr, database = db.backend(), "service started");
        Ok(App {
            inner: Arc::new(Inner {
                spec,
                info,
                namespace,
                db,
                conn,
                outbox,
                health,
                shutdown: Shutdown::new(),
                telemetry: Mutex::new(Some(telemetry)),
                consumers: Mutex::new(Vec::new()),
                relay: Mutex::new(Some((token, relay))),
                addr,
            }),
        })
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.inner.db
    }

    /// The service identity.
    pub fn info(&self) -> &ServiceInfo {
        &self.inner.info
    }

    /// The health registry (register more checks before serving).
    pub fn health(&self) -> &HealthRegistry {
        &self.inner.health
    }

    /// The shutdown signal (background tasks watch `shutdown().token()`).
    pub fn shutdown(&self) -> &Shutdown {
        &self.inner.shutdown
    }

    /// The AMQP connection.
    pub fn connection(&self) -> &Connection {
        &self.inner.conn
    }

    /// An exchange or queue name with the namespace prefix.
    pub fn name(&self, base: &str) -> String {
        format!("{}{}", self.inner.namespace, base)
    }

    /// A queue `<namespace><service>.<suffix>` bound to `bindings` (exchange, routing key).
    pub fn queue(&self, suffix: &str, bindings: &[(&str, &str)]) -> QueueConfig {
        let mut q = QueueConfig::new(self.name(&format!("{}.{suffix}", self.inner.spec.name)));
        for (exchange, key) in bindings {
            q = q.bind(self.name(exchange), *key);
        }
        q
    }

    /// Writes `emits` into the outbox inside `tx`, as chassis envelopes (CloudEvents) with the
    /// order id as subject and correlation id, caused by `cause` if given. The outbox stores the
    /// current trace context with each row.
    pub async fn emit(
        &self,
        tx: &mut Tx,
        emits: &[Emit],
        cause: Option<&IncomingMessage>,
    ) -> Result<(), HandlerError> {
        for e in emits {
            let mut env = Envelope::new(source(self.inner.spec.name), e.kind, e.payload.clone())
                .subject(e.subject.clone())
                .correlation_id(e.subject.clone());
            if let Some(id) = cause.and_then(IncomingMessage::message_id) {
                env = env.causation_id(id.to_owned());
            }
            let msg = env.to_message(self.name(e.exchange))?;
            match (&self.inner.outbox, &mut *tx) {
                (Outbox::Sqlite(o), Tx::Sqlite(t)) => {
                    o.enqueue(t, &msg).await?;
                }
                (Outbox::Postgres(o), Tx::Postgres(t)) => {
                    o.enqueue(t, &msg).await?;
                }
                _ => {
                    return Err(HandlerError::Retry(
                        "transaction and outbox on different databases".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Commits `tx` and wakes the relay.
    pub async fn commit(&self, tx: Tx) -> Result<(), sqlx::Error> {
        tx.commit().await?;
        match &self.inner.outbox {
            Outbox::Sqlite(o) => o.notify_committed(),
            Outbox::Postgres(o) => o.notify_committed(),
        }
        Ok(())
    }

    /// Begins the inbox transaction of `consumer` for `msg`: `None` when the message was
    /// processed before (ack it), otherwise a transaction in which the message id is recorded.
    pub async fn claim(
        &self,
        consumer: &str,
        msg: &IncomingMessage,
    ) -> Result<Option<Tx>, HandlerError> {
        let Some(id) = msg.message_id() else {
            return Err(HandlerError::Reject("message has no message_id".into()));
        };
        Ok(match &self.inner.db {
            Db::Sqlite(p) => match Inbox::new(p.clone(), consumer).begin(id).await? {
                Claim::New(t) => Some(Tx::Sqlite(t)),
                Claim::Duplicate => None,
            },
            Db::Postgres(p) => match Inbox::new(p.clone(), consumer).begin(id).await? {
                Claim::New(t) => Some(Tx::Postgres(t)),
                Claim::Duplicate => None,
            },
        })
    }

    /// Subscribes `handler` to `queue` (declared here with its retry tiers and dead-letter queue).
    pub async fn consume<F, Fut>(&self, queue: QueueConfig, handler: F) -> Result<(), BoxError>
    where
        F: Fn(App, IncomingMessage) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        self.inner
            .conn
            .declare(TopologyConfig::new().queue(queue.clone()))
            .await?;
        let concurrency = env("CONSUMER_CONCURRENCY")
            .and_then(|v| v.parse().ok())
            .unwrap_or(8);
        let config = ConsumerConfig::default().concurrency(concurrency);
        let app = self.clone();
        let handler = move |msg: IncomingMessage| {
            let fut = handler(app.clone(), msg);
            async move {
                match fut.await {
                    Ok(()) => Outcome::Ack,
                    Err(HandlerError::Retry(reason)) => {
                        tracing::warn!(%reason, "handler failed, retrying");
                        Outcome::retry(reason)
                    }
                    Err(HandlerError::Reject(reason)) => {
                        tracing::error!(%reason, "message rejected to the dead-letter queue");
                        Outcome::reject(reason)
                    }
                }
            }
        };
        let handle = Consumer::start(&self.inner.conn, queue, config, as_handler(handler)).await?;
        self.inner
            .consumers
            .lock()
            .expect("consumers lock")
            .push(handle);
        Ok(())
    }

    /// Spawns a background task stopped by shutdown (it should watch `shutdown().token()`).
    pub fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.shutdown.tracker().spawn(fut);
    }

    /// Serves `router` (plus the chassis standard layers, health probes and `/metrics`) until
    /// SIGTERM/SIGINT or [`Shutdown::trigger`], then shuts everything down in order.
    pub async fn serve(self, router: axum::Router) -> Result<(), BoxError> {
        let prometheus = self
            .inner
            .telemetry
            .lock()
            .expect("telemetry lock")
            .as_ref()
            .and_then(TelemetryGuard::prometheus_handle);
        let mut health_layer = HealthLayer::new(self.inner.health.clone());
        if let Some(handle) = prometheus {
            health_layer = health_layer.prometheus(handle);
        }
        let service = tower::ServiceBuilder::new()
            .layer(health_layer)
            .layer(StandardLayers::new())
            .service(router);
        let server = Server::bind(
            ServerConfig::default()
                .bind(self.inner.addr)
                .drain_timeout(Duration::from_secs(10)),
        )
        .await?
        .shutdown(self.inner.shutdown.clone())
        .health(self.inner.health.clone());
        self.inner.health.mark_started();
        tracing::info!(addr = %server.local_addr(), "serving HTTP");
        let result = server.serve(service).await;
        self.stop().await;
        result.map(|_| ()).map_err(Into::into)
    }

    async fn stop(&self) {
        tracing::info!("shutting down: consumers, relay, connection, database, telemetry");
        self.inner.shutdown.trigger();
        let consumers: Vec<ConsumerHandle> =
            std::mem::take(&mut *self.inner.consumers.lock().expect("consumers lock"));
        for c in consumers {
            c.shutdown().await;
        }
        self.inner.shutdown.tracker().close();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.inner.shutdown.tracker().wait())
            .await;
        let relay = self.inner.relay.lock().expect("relay lock").take();
        if let Some((token, handle)) = relay {
            token.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
        self.inner.conn.close().await;
        self.inner.db.close().await;
        let telemetry = self.inner.telemetry.lock().expect("telemetry lock").take();
        if let Some(t) = telemetry {
            let _ = t.shutdown(Duration::from_secs(5)).await;
        }
    }
}

fn as_handler<F, Fut>(f: F) -> impl Handler
where
    F: Fn(IncomingMessage) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    f
}

/// Decodes a message's chassis envelope; an undecodable message is rejected (dead-lettered).
pub fn decode<T: DeserializeOwned>(msg: &IncomingMessage) -> Result<T, HandlerError> {
    msg.decode::<T>()
        .map(|e| e.data)
        .map_err(|e| HandlerError::Reject(format!("undecodable: {e}")))
}

/// Runs `msg` through `consumer`'s inbox: `f` gets the transaction (with the message id already
/// recorded) and returns what to emit; the emits go into the outbox and everything commits
/// together. A duplicate delivery is skipped.
pub async fn handle_once<F>(
    app: &App,
    consumer: &str,
    msg: &IncomingMessage,
    f: F,
) -> Result<(), HandlerError>
where
    F: for<'t> FnOnce(
        &'t mut Tx,
    ) -> futures_util::future::BoxFuture<'t, Result<Vec<Emit>, HandlerError>>,
{
    let Some(mut tx) = app.claim(consumer, msg).await? else {
        tracing::debug!(consumer, "duplicate delivery skipped");
        return Ok(());
    };
    let emits = f(&mut tx).await?;
    app.emit(&mut tx, &emits, Some(msg)).await?;
    app.commit(tx).await?;
    Ok(())
}
