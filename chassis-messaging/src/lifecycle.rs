//! The crate's moving parts as lifecycle [`Component`]s, so a service's
//! [`App`](chassis_core::lifecycle::App) starts and stops them in the right order:
//!
//! | component | made by | stage | start | stop |
//! |---|---|---|---|---|
//! | the AMQP connection | [`Connection::component`] | Transport | registers its health check; waits for the broker (up to [`attach_timeout`](ConnectionComponent::attach_timeout), 3 s, or [`initial_connect_timeout`](crate::ConnectionConfig::initial_connect_timeout) when [`required`](ConnectionComponent::required)) and declares the topology, else leaves both to the background | closes the connection |
//! | a consumer | [`ConsumerComponent::new`] | Intake | subscribes in the background (retrying until the broker and the queue are there) | `basic.cancel` with the other intakes, then waits for its in-flight handlers |
//! | the outbox relay | [`Relay::into_component`] | Worker | runs the relay | finishes the batches in flight (their confirms recorded), then returns |
//! | a saga | [`Saga::component`](crate::saga::Saga::component) | Worker | creates the saga tables, then fires due timeouts | stops firing timeouts |
//! | the database | [`Outbox::component`] | Resource | migrates the outbox/inbox tables and the service's schema, registers the database as a required readiness check | closes the pool |
//!
//! # The broker is not a start-up dependency of an outbox service
//! A service whose writes go through the outbox keeps serving while RabbitMQ is away: when the
//! broker does not answer within the attach timeout, start goes on, the connection attaches in
//! the background and reconnects, the topology is declared on every
//! connect, consumers subscribe once they can, and the relay publishes what was committed
//! meanwhile. Its health check is then *optional*: readiness shows the broker as `DOWN` and the
//! service as `DEGRADED`, still ready, because intake (HTTP writes into the outbox) only needs
//! the database. A service without an outbox, which can do nothing useful without the broker,
//! makes it [`required`](ConnectionComponent::required): start waits for it (failing under the
//! name `rabbitmq` after [`ConnectionConfig::initial_connect_timeout`](crate::ConnectionConfig::initial_connect_timeout)) and readiness
//! requires it.
//!
//! # Example
//! ```no_run
//! use std::sync::Arc;
//! use chassis_core::lifecycle::App;
//! use chassis_messaging::{
//!     Connection, ConnectionConfig, ConsumerConfig, ExchangeConfig, Outcome, Outbox, Publisher,
//!     PublisherConfig, QueueConfig, Relay, RelayConfig, TopologyConfig,
//! };
//! use chassis_messaging::lifecycle::ConsumerComponent;
//!
//! # async fn run(pool: sqlx::SqlitePool) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let conn = Connection::start(ConnectionConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f", "orders"))?;
//! let queue = QueueConfig::new("orders.payments").bind("shop.events", "shop.payment.*");
//! let topology = TopologyConfig::new().exchange(ExchangeConfig::topic("shop.events")).queue(queue.clone());
//! let publisher = Arc::new(Publisher::new(&conn, PublisherConfig::default())?);
//! let relay = Relay::new(Outbox::new(pool), publisher, RelayConfig::default())?;
//!
//! App::new("orders")
//!     .component(conn.component().declare(topology))
//!     .component(relay.into_component())
//!     .component(ConsumerComponent::new(&conn, queue, ConsumerConfig::default(),
//!         |_msg: chassis_messaging::IncomingMessage| async { Outcome::Ack }))
//!     .run()
//!     .await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use chassis_core::BoxError;
use chassis_core::health::{BoxFuture, CheckOptions};
use chassis_core::lifecycle::{Component, Context, Stage, task};

use crate::amqp::connection::{Connection, ConnectionState};
use crate::amqp::consumer::{Consumer, ConsumerConfig, Handler};
use crate::amqp::publisher::Publish;
use crate::amqp::topology::{QueueConfig, TopologyConfig};
use crate::error::Error;
use crate::sql::outbox::{Outbox, OutboxDatabase, OutboxStore, Relay};

/// The AMQP [`Connection`] as a component, named `"rabbitmq"`; see the
/// [module docs](self).
#[derive(Debug)]
pub struct ConnectionComponent {
    conn: Connection,
    topologies: Vec<TopologyConfig>,
    required: bool,
    attach_timeout: Duration,
}

/// Default of [`ConnectionComponent::attach_timeout`].
pub const DEFAULT_ATTACH_TIMEOUT: Duration = Duration::from_secs(3);

impl Connection {
    /// This connection as a lifecycle component (see [`ConnectionComponent`]): not required
    /// by default, so the service starts and serves while the broker is away.
    pub fn component(&self) -> ConnectionComponent {
        ConnectionComponent {
            conn: self.clone(),
            topologies: Vec::new(),
            required: false,
            attach_timeout: DEFAULT_ATTACH_TIMEOUT,
        }
    }
}

impl ConnectionComponent {
    /// Declares `topology` on every connect ([`Connection::declare_on_connect`]), from start
    /// on.
    pub fn declare(mut self, topology: TopologyConfig) -> Self {
        self.topologies.push(topology);
        self
    }

    /// How long start waits for the broker when it is not required. Within it, start returns
    /// once the connection is up and the topology declared, so consumers started next find
    /// their queues and the service's first events are routable when it reports ready (other
    /// services waiting for it see a complete system). Past it, start returns anyway and the
    /// connection and topology attach in the background. Defaults to
    /// [`DEFAULT_ATTACH_TIMEOUT`] (3 s).
    pub fn attach_timeout(mut self, timeout: Duration) -> Self {
        self.attach_timeout = timeout;
        self
    }

    /// Makes the broker a hard dependency: start waits for the first connection (at most
    /// [`ConnectionConfig::initial_connect_timeout`](crate::ConnectionConfig::initial_connect_timeout)) and readiness requires it. For services
    /// without an outbox. Defaults to not required.
    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }
}

impl Component for ConnectionComponent {
    fn name(&self) -> &str {
        "rabbitmq"
    }

    fn stage(&self) -> Stage {
        Stage::Transport
    }

    fn start(&mut self, ctx: Context) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            for topology in &self.topologies {
                topology.validate()?;
            }
            let options = if self.required {
                CheckOptions::required()
            } else {
                CheckOptions::optional()
            };
            ctx.health().register(self.conn.health_check(), options);
            let wait = if self.required {
                self.conn.config().initial_connect_timeout
            } else {
                self.attach_timeout
            };
            let mut state = self.conn.subscribe();
            let up = state.wait_for(|s| *s == ConnectionState::Connected);
            let connected = tokio::time::timeout(wait, up)
                .await
                .is_ok_and(|r| r.is_ok());
            if self.required && !connected {
                return Err(Error::timeout("connect", wait).into());
            }
            for topology in self.topologies.drain(..) {
                if connected {
                    // Declared now (and again after every reconnect), so what starts next
                    // finds it.
                    match self.conn.declare(topology.clone()).await {
                        Ok(()) => continue,
                        Err(e) if self.required => return Err(e.into()),
                        Err(e) => {
                            tracing::warn!(error = %e, "declaring topology failed; retrying in the background");
                        }
                    }
                }
                self.conn.declare_on_connect(topology)?;
            }
            if !connected {
                tracing::warn!(
                    waited_ms = wait.as_millis() as u64,
                    "RabbitMQ not reachable yet; starting without it (it attaches in the background)"
                );
            }
            Ok(())
        })
    }

    fn stop(&mut self, _deadline: Duration) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            self.conn.close().await;
            Ok(())
        })
    }
}

/// A consumer as a component, named `consumer <queue>`; see the [module docs](self).
pub struct ConsumerComponent<H> {
    name: String,
    conn: Connection,
    queue: Option<QueueConfig>,
    config: ConsumerConfig,
    handler: Option<H>,
    consumer: Option<Consumer>,
}

impl<H> std::fmt::Debug for ConsumerComponent<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerComponent")
            .field("name", &self.name)
            .field("running", &self.consumer.is_some())
            .finish()
    }
}

impl<H: Handler> ConsumerComponent<H> {
    /// A component that consumes `queue` on `conn` with `handler` once started (see
    /// [`Consumer::spawn`]). The queue is declared by the connection's topology
    /// ([`ConnectionComponent::declare`]).
    pub fn new(conn: &Connection, queue: QueueConfig, config: ConsumerConfig, handler: H) -> Self {
        Self {
            name: format!("consumer {}", queue.name),
            conn: conn.clone(),
            queue: Some(queue),
            config,
            handler: Some(handler),
            consumer: None,
        }
    }
}

impl<H: Handler> Component for ConsumerComponent<H> {
    fn name(&self) -> &str {
        &self.name
    }

    fn stage(&self) -> Stage {
        Stage::Intake
    }

    fn start(&mut self, _ctx: Context) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            let (Some(queue), Some(handler)) = (self.queue.take(), self.handler.take()) else {
                return Err("consumer started twice".into());
            };
            self.consumer = Some(Consumer::spawn(
                &self.conn,
                queue,
                self.config.clone(),
                handler,
            )?);
            Ok(())
        })
    }

    fn stop_intake(&mut self) {
        if let Some(consumer) = &self.consumer {
            consumer.stop_consuming();
        }
    }

    fn stop(&mut self, _deadline: Duration) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            if let Some(consumer) = self.consumer.take() {
                consumer.shutdown().await;
            }
            Ok(())
        })
    }
}

impl<S, P> Relay<S, P>
where
    S: OutboxStore + 'static,
    P: Publish + ?Sized + 'static,
{
    /// The relay as a lifecycle component named `"outbox-relay"`, in
    /// [`Stage::Worker`]: it runs from start until its stage stops, then finishes the batches
    /// in flight (their confirms recorded) and returns; see the [module docs](crate::lifecycle).
    pub fn into_component(self) -> impl Component {
        task("outbox-relay", Stage::Worker, move |stop| async move {
            self.run(stop).await;
            Ok(())
        })
    }
}

/// The service's database, reached through its [`Outbox`], as a component named
/// `"database"`; see the [module docs](self).
///
/// Start is where an unreachable or unwritable database shows: the migrations run there, so
/// the app stops before it is ready and names `database` in the error. Give the pool lazily
/// (e.g. [`sqlite_pool`](crate::sql::sqlite_pool), or sqlx's `connect_lazy`) and everything
/// that holds it can be built before the app starts.
#[derive(Debug)]
pub struct DatabaseComponent<DB: OutboxDatabase> {
    outbox: Outbox<DB>,
    schema: Vec<&'static str>,
}

impl<DB: OutboxDatabase> Outbox<DB> {
    /// The database behind this outbox as a lifecycle component (see
    /// [`DatabaseComponent`]).
    pub fn component(&self) -> DatabaseComponent<DB> {
        DatabaseComponent {
            outbox: self.clone(),
            schema: Vec::new(),
        }
    }
}

impl<DB: OutboxDatabase> DatabaseComponent<DB> {
    /// Runs `sql` (one or more statements, e.g. `CREATE TABLE IF NOT EXISTS …`) at start,
    /// after the chassis migrations, in the order given. For a versioned history use sqlx's
    /// `migrate!` in a [`before_start`](chassis_core::lifecycle::App::before_start) hook.
    pub fn schema(mut self, sql: &'static str) -> Self {
        self.schema.push(sql);
        self
    }
}

impl<DB> Component for DatabaseComponent<DB>
where
    DB: OutboxDatabase,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    fn name(&self) -> &str {
        "database"
    }

    fn stage(&self) -> Stage {
        Stage::Resource
    }

    fn start(&mut self, ctx: Context) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            self.outbox.migrate().await?;
            let mut conn = self.outbox.pool().acquire().await?;
            for sql in &self.schema {
                sqlx::raw_sql(*sql).execute(&mut *conn).await?;
            }
            drop(conn);
            ctx.health()
                .register(self.outbox.clone(), CheckOptions::required());
            Ok(())
        })
    }

    fn stop(&mut self, _deadline: Duration) -> BoxFuture<'_, Result<(), BoxError>> {
        Box::pin(async move {
            self.outbox.pool().close().await;
            Ok(())
        })
    }
}
