//! The connection manager: one supervised AMQP connection that reconnects by itself.
//!
//! [`Connection`] owns a supervisor task that connects with jittered exponential backoff,
//! watches the live connection (lapin's error events, plus a status poll as a backstop),
//! and on loss reconnects and re-declares every topology registered with
//! [`Connection::declare`]. Publishers and consumers built on it open fresh channels on the
//! new connection by themselves (consumers re-subscribe). Every broker operation has a
//! deadline ([`ConnectionConfig::operation_timeout`]): nothing waits forever on a dead
//! connection.
//!
//! Topology can also vanish while the connection stays up: an operator deletes a queue or an
//! exchange, or the broker restarts with fresh state under the same address (then the
//! reconnect re-declares it anyway). Consumers and publishers notice (a consumer cancelled by
//! the broker with `basic.cancel`, a consume or publish failing with 404 `NOT_FOUND`, a
//! message returned unroutable) and have the connection declare the registered topologies
//! again, once for all of them and at most once a second, before they subscribe again or
//! publish again.
//!
//! The state is observable ([`Connection::state`], [`Connection::subscribe`]) and
//! [`Connection::health_check`] turns it into a readiness check. Each connection carries the
//! `connection_name` client property, so operators (and tests) can find it with
//! `rabbitmqctl list_connections name client_properties`.
//!
//! # Several brokers: fail-over between the nodes of a cluster
//! [`ConnectionConfig::url`] plus [`ConnectionConfig::urls`] list the brokers (typically the
//! nodes of one RabbitMQ cluster) in order of preference; [`ConnectionConfig::from_env`] reads
//! them from `AMQP_URLS` (comma-separated) or `AMQP_URL`. The supervisor connects to the first
//! one that answers. When the connection is lost it tries the node it was on once more (a
//! forced close leaves the node up), then the next ones in order, wrapping around: between two
//! nodes of one round it waits [`ConnectionConfig::min_backoff`] (jittered), after a whole
//! round that failed the usual doubling backoff. [`Connection::broker`] says which node the
//! connection is on. Topology is re-declared on the new node as after any reconnect; quorum
//! queues (the default) keep their messages when a node dies, classic queues only live on
//! the node that declared them.
//!
//! lapin 4.12.3's own auto-recovery (`enable_auto_recover`) works against the broker here
//! for a forced close (`tests/lapin_recovery.rs` pins that down: publishing resumes, the
//! consumer is re-registered, acks of pre-loss deliveries are refused). The chassis still uses
//! its own reconnect loop, which lapin's recovery would otherwise need as a backstop anyway
//! (its reconnect backoff gives up after 16 attempts by default): the loop
//! replaces the whole connection, so every channel and every outstanding [`lapin::Acker`] of
//! the old one is dead (acks on it are refused), topology comes from our typed config, and
//! there is exactly one state to watch.
//!
//! # Example
//! ```no_run
//! use chassis_messaging::amqp::connection::{Connection, ConnectionConfig, ConnectionState};
//! use chassis_messaging::amqp::topology::{ExchangeConfig, QueueConfig, TopologyConfig};
//!
//! # async fn run() -> Result<(), chassis_messaging::error::Error> {
//! let conn = Connection::connect(ConnectionConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f", "orders-service")).await?;
//! assert_eq!(conn.state(), ConnectionState::Connected);
//! conn.declare(
//!     TopologyConfig::new()
//!         .exchange(ExchangeConfig::topic("shop.events"))
//!         .queue(QueueConfig::new("orders.payments").bind("shop.events", "shop.payment.*")),
//! )
//! .await?;
//! // ... publishers and consumers ...
//! conn.close().await;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chassis_core::BoxError;
use chassis_core::health::{BoxFuture, HealthCheck};
use futures_util::StreamExt;
use lapin::{ConnectionProperties, Event};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::amqp::topology::{QueueConfig, TopologyConfig, Unroutable, strictest};
use crate::error::{Error, ErrorKind};

/// Connection settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// AMQP URI, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f` (add `?heartbeat=10` to detect
    /// dead TCP connections faster): the first broker tried. May be empty when
    /// [`urls`](Self::urls) lists the brokers.
    #[serde(default)]
    pub url: String,
    /// Further brokers (the other nodes of the cluster), tried in order after
    /// [`url`](Self::url) when it does not answer or its connection is lost. Defaults to none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// The `connection_name` client property shown by the broker.
    pub connection_name: String,
    /// Deadline of one connection attempt. Defaults to 10 s.
    #[serde(with = "humantime_serde", default = "d10")]
    pub connect_timeout: Duration,
    /// How long [`Connection::connect`] keeps trying before it gives up. Defaults to 30 s.
    #[serde(with = "humantime_serde", default = "d30")]
    pub initial_connect_timeout: Duration,
    /// Deadline of every other broker operation (opening a channel, declaring, cancelling,
    /// acking, waiting for a live connection). Defaults to 10 s.
    #[serde(with = "humantime_serde", default = "d10")]
    pub operation_timeout: Duration,
    /// First reconnect delay (jittered, doubling). Defaults to 100 ms.
    #[serde(with = "humantime_serde", default = "d100ms")]
    pub min_backoff: Duration,
    /// Longest reconnect delay. Defaults to 10 s.
    #[serde(with = "humantime_serde", default = "d10")]
    pub max_backoff: Duration,
}

fn d10() -> Duration {
    Duration::from_secs(10)
}
fn d30() -> Duration {
    Duration::from_secs(30)
}
fn d100ms() -> Duration {
    Duration::from_millis(100)
}

impl ConnectionConfig {
    /// Settings for `url` with connection name `name` and default timeouts.
    pub fn new(url: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            urls: Vec::new(),
            connection_name: name.into(),
            connect_timeout: d10(),
            initial_connect_timeout: d30(),
            operation_timeout: d10(),
            min_backoff: d100ms(),
            max_backoff: d10(),
        }
    }

    /// Settings for several brokers, tried in this order, with connection name `name`.
    pub fn with_urls<I, S>(urls: I, name: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut urls = urls.into_iter().map(Into::into);
        let first = urls.next().unwrap_or_default();
        Self {
            urls: urls.collect(),
            ..Self::new(first, name)
        }
    }

    /// Settings from the environment: `AMQP_URLS` (comma-separated, blanks around the commas
    /// ignored) if set and not empty, else `AMQP_URL`, else the local broker
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub fn from_env(name: impl Into<String>) -> Self {
        let list = std::env::var("AMQP_URLS").unwrap_or_default();
        let urls = parse_url_list(&list);
        if urls.is_empty() {
            let url = std::env::var("AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
            Self::new(url, name)
        } else {
            Self::with_urls(urls, name)
        }
    }

    /// Adds a broker tried after the ones listed so far.
    pub fn fallback_url(mut self, url: impl Into<String>) -> Self {
        self.urls.push(url.into());
        self
    }

    /// Every broker, in the order they are tried: [`url`](Self::url) (if not empty), then
    /// [`urls`](Self::urls).
    pub fn brokers(&self) -> Vec<&str> {
        std::iter::once(self.url.as_str())
            .filter(|u| !u.is_empty())
            .chain(self.urls.iter().map(String::as_str))
            .collect()
    }

    chassis_core::__builder_setters! {
        /// Sets [`operation_timeout`](Self::operation_timeout).
        operation_timeout: Duration,
        /// Sets [`initial_connect_timeout`](Self::initial_connect_timeout).
        initial_connect_timeout: Duration,
        /// Sets [`min_backoff`](Self::min_backoff).
        min_backoff: Duration,
        /// Sets [`max_backoff`](Self::max_backoff).
        max_backoff: Duration,
    }

    fn validate(&self) -> Result<(), Error> {
        if self.min_backoff.is_zero() || self.max_backoff < self.min_backoff {
            return Err(Error::invalid_config(
                "backoff: min must be positive and not above max",
            ));
        }
        if self.operation_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::invalid_config("timeouts must be positive"));
        }
        let brokers = self.brokers();
        if brokers.is_empty() {
            return Err(Error::invalid_config("no broker url"));
        }
        for url in brokers {
            url.parse::<lapin::uri::AMQPUri>()
                .map_err(|e| Error::invalid_config(format!("bad AMQP url: {e}")))?;
        }
        Ok(())
    }
}

fn parse_url_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `host:port` of an AMQP URL, for logs: never the credentials.
fn endpoint(url: &str) -> String {
    url.parse::<lapin::uri::AMQPUri>().map_or_else(
        |_| "<bad url>".to_owned(),
        |u| format!("{}:{}", u.authority.host, u.authority.port),
    )
}

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConnectionState {
    /// Connecting for the first time.
    Connecting,
    /// Connected; topology declared.
    Connected,
    /// The connection was lost; reconnecting.
    Reconnecting,
    /// Closed by [`Connection::close`] (or never connected and given up).
    Closed,
}

#[derive(Clone)]
pub(crate) struct Live {
    pub(crate) conn: Arc<lapin::Connection>,
    pub(crate) generation: u64,
    /// `host:port` of the broker it is connected to.
    pub(crate) broker: Arc<str>,
}

struct Shared {
    config: ConnectionConfig,
    state: watch::Sender<ConnectionState>,
    live: watch::Sender<Option<Live>>,
    topologies: Mutex<Vec<TopologyConfig>>,
    shutdown: CancellationToken,
    supervisor: Mutex<Option<JoinHandle<()>>>,
    channel_ids: AtomicU64,
    /// When the last [`Connection::repair_topology`] declaration started; the async lock
    /// makes concurrent repairs wait for one declaration.
    repaired: tokio::sync::Mutex<Option<Instant>>,
    /// The queues the last topology repair found missing and declared again, for their
    /// consumers to subscribe again (see [`Connection::repairs`]).
    repairs: watch::Sender<Arc<[String]>>,
}

/// Shortest time between two topology repairs that nobody asked for since the last one: a
/// publisher returned unroutable messages over and over (an exchange nobody binds to) must
/// not re-declare everything per message.
const REPAIR_MIN_GAP: Duration = Duration::from_secs(1);

/// A supervised, self-healing AMQP connection. Cheap to clone (clones share it).
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.shared.config.connection_name)
            .field("state", &self.state())
            .finish()
    }
}

/// A channel opened by the manager, tagged with what it came from.
#[derive(Debug, Clone)]
pub(crate) struct ManagedChannel {
    pub(crate) channel: lapin::Channel,
    /// Connection generation (1 for the first connection, +1 per reconnect).
    pub(crate) generation: u64,
    /// Unique per channel ever opened by this manager.
    pub(crate) id: u64,
}

impl Connection {
    /// Starts the supervisor and waits until the first connection is up and every topology is
    /// declared, for at most [`ConnectionConfig::initial_connect_timeout`].
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] for a bad URL or settings, [`ErrorKind::Timeout`] (with
    /// operation `"connect"`) when no connection could be made in time; the supervisor is
    /// stopped then.
    pub async fn connect(config: ConnectionConfig) -> Result<Self, Error> {
        let limit = config.initial_connect_timeout;
        let conn = Self::start(config)?;
        let mut rx = conn.shared.live.subscribe();
        match tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await {
            Ok(Ok(_)) => Ok(conn),
            _ => {
                conn.close().await;
                Err(Error::timeout("connect", limit))
            }
        }
    }

    /// Starts the supervisor without waiting: the connection comes up in the background
    /// (watch [`state`](Self::state)). Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] for a bad URL or settings.
    pub fn start(config: ConnectionConfig) -> Result<Self, Error> {
        config.validate()?;
        let (state, _) = watch::channel(ConnectionState::Connecting);
        let (live, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            config,
            state,
            live,
            topologies: Mutex::new(Vec::new()),
            shutdown: CancellationToken::new(),
            supervisor: Mutex::new(None),
            channel_ids: AtomicU64::new(0),
            repaired: tokio::sync::Mutex::new(None),
            repairs: watch::channel(Arc::from(Vec::new())).0,
        });
        let handle = tokio::spawn(supervise(Arc::clone(&shared)));
        *lock(&shared.supervisor) = Some(handle);
        Ok(Self { shared })
    }

    /// `host:port` of the broker the connection is on now (one of
    /// [`ConnectionConfig::brokers`]); `None` while disconnected.
    pub fn broker(&self) -> Option<String> {
        self.shared
            .live
            .borrow()
            .as_ref()
            .map(|l| l.broker.to_string())
    }

    /// The current state.
    pub fn state(&self) -> ConnectionState {
        *self.shared.state.borrow()
    }

    /// A receiver of state changes.
    pub fn subscribe(&self) -> watch::Receiver<ConnectionState> {
        self.shared.state.subscribe()
    }

    /// The settings.
    pub fn config(&self) -> &ConnectionConfig {
        &self.shared.config
    }

    /// The connection generation: 1 for the first connection, incremented on each reconnect;
    /// 0 while disconnected.
    pub fn generation(&self) -> u64 {
        self.shared
            .live
            .borrow()
            .as_ref()
            .map_or(0, |l| l.generation)
    }

    /// Declares `topology` now and again after every reconnect.
    ///
    /// # Errors
    /// [`ErrorKind::Topology`] or [`ErrorKind::Timeout`] from the declaration,
    /// [`ErrorKind::InvalidConfig`] when the topology is invalid, [`ErrorKind::Connection`]
    /// when no connection came up within the operation timeout. A topology that failed to
    /// declare is not registered.
    pub async fn declare(&self, topology: TopologyConfig) -> Result<(), Error> {
        topology.validate()?;
        let ch = self.open_channel().await?;
        let res = topology
            .declare(&ch.channel, self.shared.config.operation_timeout)
            .await;
        self.close_channel(&ch.channel).await;
        res?;
        lock(&self.shared.topologies).push(topology);
        Ok(())
    }

    /// What a message returned as unroutable by `exchange` means, from the topologies
    /// registered with [`declare`](Self::declare) and
    /// [`declare_on_connect`](Self::declare_on_connect): [`Unroutable::Retry`] for an exchange
    /// none of them declares, and when they disagree (the policy that loses nothing wins).
    /// See [`topology`](crate::amqp::topology#unroutable-messages-unroutable-per-exchange).
    pub fn unroutable_policy(&self, exchange: &str) -> Unroutable {
        lock(&self.shared.topologies)
            .iter()
            .filter_map(|t| t.unroutable_policy(exchange))
            .reduce(strictest)
            .unwrap_or(Unroutable::Retry)
    }

    /// Declares `topology` whenever a connection is up: now in the background if one is, and
    /// again after every reconnect, without waiting for the broker. A service that must start
    /// while the broker is away declares its topology this way; its consumers (see
    /// [`Consumer::spawn`](crate::amqp::consumer::Consumer::spawn)) subscribe once the queues
    /// exist. A failed background declaration is logged and tried again at the next reconnect.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] when the topology is invalid.
    pub fn declare_on_connect(&self, topology: TopologyConfig) -> Result<(), Error> {
        topology.validate()?;
        lock(&self.shared.topologies).push(topology.clone());
        // The supervisor declares the registered topologies before a connection goes live; a
        // connection that went live while this one was being added may have missed it, so
        // declare it once on the first live connection too (declarations are idempotent).
        let conn = self.clone();
        tokio::spawn(async move {
            let mut live = conn.shared.live.subscribe();
            let shutdown = conn.shared.shutdown.clone();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = live.wait_for(Option::is_some) => if r.is_err() { return },
            }
            let Ok(ch) = conn.open_channel().await else {
                return;
            };
            let res = topology
                .declare(&ch.channel, conn.shared.config.operation_timeout)
                .await;
            conn.close_channel(&ch.channel).await;
            if let Err(e) = res {
                tracing::warn!(error = %e, "declaring topology failed; retried at the next reconnect");
            }
        });
        Ok(())
    }

    /// Declares the registered topologies again on the live connection, for a consumer the
    /// broker cancelled (its queue was deleted) or a publish that found its exchange missing
    /// (404) or no queue bound (an unroutable return): somebody deleted part of the topology
    /// behind the chassis's back, or the broker came back without its data. Declarations are
    /// idempotent, so repairing an intact topology costs only the round trips.
    ///
    /// Concurrent callers wait for one declaration: a caller whose failure (at `failed_at`)
    /// predates a declaration that already ran returns `Ok(true)` at once. Otherwise at most
    /// one declaration runs per [`REPAIR_MIN_GAP`]; within it the call returns `Ok(false)`.
    /// `queue` (a consumer's own) is declared as well when no registered topology has it.
    /// `Ok(true)` means the topology was declared after `failed_at`: trying again may work.
    pub(crate) async fn repair_topology(
        &self,
        failed_at: Instant,
        queue: Option<&QueueConfig>,
    ) -> Result<bool, Error> {
        let timeout = self.shared.config.operation_timeout;
        let own = queue.filter(|q| {
            !lock(&self.shared.topologies)
                .iter()
                .any(|t| t.queues.iter().any(|r| r.name == q.name))
        });
        let mut last = self.shared.repaired.lock().await;
        let done = match *last {
            Some(at) if at >= failed_at => true,
            Some(at) if at.elapsed() < REPAIR_MIN_GAP => return Ok(false),
            _ => false,
        };
        if done && own.is_none() {
            return Ok(true);
        }
        let started = Instant::now();
        let mut topologies = if done {
            Vec::new()
        } else {
            lock(&self.shared.topologies).clone()
        };
        topologies.extend(own.map(|q| TopologyConfig::new().queue(q.clone())));
        let names: Vec<String> = topologies
            .iter()
            .flat_map(|t| t.queues.iter().map(|q| q.name.clone()))
            .collect();
        let missing = self.missing_queues(names).await?;
        let ch = self.open_channel().await?;
        let mut res = Ok(());
        for t in &topologies {
            res = t.declare(&ch.channel, timeout).await;
            if res.is_err() {
                break;
            }
        }
        self.close_channel(&ch.channel).await;
        res?;
        if !done {
            *last = Some(started);
        }
        tracing::info!(connection = %self.shared.config.connection_name, topologies = topologies.len(), ?missing, "topology declared again");
        if !missing.is_empty() {
            self.shared.repairs.send_replace(Arc::from(missing));
        }
        Ok(true)
    }

    /// Which of `queues` do not exist, by passive `queue.declare` (a 404 closes the channel,
    /// so each missing queue costs a new one).
    async fn missing_queues(&self, queues: Vec<String>) -> Result<Vec<String>, Error> {
        let timeout = self.shared.config.operation_timeout;
        let passive = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let mut missing = Vec::new();
        let mut ch = self.open_channel().await?;
        for name in queues {
            let declare = ch.channel.queue_declare(
                name.as_str().into(),
                passive,
                lapin::types::FieldTable::default(),
            );
            match tokio::time::timeout(timeout, declare).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if crate::amqp::topology::is_not_found(&e) => {
                    missing.push(name);
                    self.close_channel(&ch.channel).await;
                    ch = self.open_channel().await?;
                }
                Ok(Err(e)) => return Err(Error::connection(e)),
                Err(_) => return Err(Error::timeout("queue.declare", timeout)),
            }
        }
        self.close_channel(&ch.channel).await;
        Ok(missing)
    }

    /// The queues the last [`repair_topology`](Self::repair_topology) found missing and
    /// declared again. Their consumers subscribe again: a quorum queue deleted and declared
    /// again under the same name keeps the old consumer registered on RabbitMQ 3.10 without
    /// sending it `basic.cancel` or any delivery, so only a fresh subscription consumes it.
    /// Consumers of queues that were there keep their subscription (and their deliveries).
    pub(crate) fn repairs(&self) -> watch::Receiver<Arc<[String]>> {
        self.shared.repairs.subscribe()
    }

    /// Opens a raw lapin channel on the current connection, waiting (up to the operation
    /// timeout) for one to be up. The chassis does not supervise it.
    ///
    /// # Errors
    /// [`ErrorKind::Connection`], [`ErrorKind::Timeout`] or [`ErrorKind::Shutdown`].
    pub async fn create_channel(&self) -> Result<lapin::Channel, Error> {
        Ok(self.open_channel().await?.channel)
    }

    pub(crate) async fn wait_live(&self) -> Result<Live, Error> {
        let timeout = self.shared.config.operation_timeout;
        let mut rx = self.shared.live.subscribe();
        let shutdown = self.shared.shutdown.clone();
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Err(Error::shutdown()),
            r = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)) => match r {
                Ok(Ok(live)) => Ok(live.clone().expect("wait_for guarantees Some")),
                Ok(Err(_)) => Err(Error::shutdown()),
                Err(_) => Err(Error::with_source(
                    ErrorKind::Connection,
                    format!("no broker connection within {}ms", timeout.as_millis()),
                )),
            },
        }
    }

    pub(crate) async fn open_channel(&self) -> Result<ManagedChannel, Error> {
        let timeout = self.shared.config.operation_timeout;
        let mut attempt = 0;
        let (channel, live) = loop {
            let live = self.wait_live().await?;
            match tokio::time::timeout(timeout, live.conn.create_channel()).await {
                Ok(Ok(ch)) => break (ch, live),
                // A channel the broker just closed (e.g. after a 404) can still be closing
                // under the number lapin hands out next: try again shortly.
                Ok(Err(e)) if attempt < 3 => {
                    tracing::debug!(error = %e, "opening a channel failed; retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
                }
                Ok(Err(e)) => return Err(Error::connection(e)),
                Err(_) => return Err(Error::timeout("channel.open", timeout)),
            }
        };
        Ok(ManagedChannel {
            channel,
            generation: live.generation,
            id: self.shared.channel_ids.fetch_add(1, Ordering::Relaxed) + 1,
        })
    }

    pub(crate) async fn close_channel(&self, channel: &lapin::Channel) {
        if channel.status().connected() {
            let _ = tokio::time::timeout(
                self.shared.config.operation_timeout,
                channel.close(200, "bye".into()),
            )
            .await;
        }
    }

    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.shared.shutdown.clone()
    }

    /// A readiness check (named `"rabbitmq"`) that passes while the connection is up.
    pub fn health_check(&self) -> ConnectionHealth {
        ConnectionHealth { conn: self.clone() }
    }

    /// Closes the connection (after consumers were shut down, see
    /// [`Consumer::shutdown`](crate::amqp::consumer::Consumer::shutdown)) and stops
    /// reconnecting. Idempotent.
    pub async fn close(&self) {
        self.shared.shutdown.cancel();
        let handle = lock(&self.shared.supervisor).take();
        if let Some(handle) = handle {
            let limit = self.shared.config.operation_timeout + Duration::from_secs(1);
            let abort = handle.abort_handle();
            if tokio::time::timeout(limit, handle).await.is_err() {
                abort.abort();
            }
        }
        self.shared.live.send_replace(None);
        self.shared.state.send_replace(ConnectionState::Closed);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn backoff_delay(config: &ConnectionConfig, failures: u32) -> Duration {
    let exp = config
        .min_backoff
        .saturating_mul(2u32.saturating_pow(failures.min(20)))
        .min(config.max_backoff);
    // Equal jitter: half fixed, half random, so reconnect storms spread out.
    let half = exp / 2;
    let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    half + Duration::from_millis(rand::rng().random_range(0..=jitter_ms))
}

async fn supervise(shared: Arc<Shared>) {
    let config = &shared.config;
    let mut failures: u32 = 0;
    let mut generation: u64 = 0;
    let name = config.connection_name.clone();
    let brokers: Vec<String> = config.brokers().into_iter().map(str::to_owned).collect();
    let mut rotation = Rotation::new(brokers.len());
    loop {
        if shared.shutdown.is_cancelled() {
            break;
        }
        let url = &brokers[rotation.current];
        let broker = endpoint(url);
        let props = ConnectionProperties::default().with_connection_name(name.clone().into());
        let attempt = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = tokio::time::timeout(config.connect_timeout, lapin::Connection::connect(url, props)) => r,
        };
        let conn = match attempt {
            Ok(Ok(conn)) => Arc::new(conn),
            Ok(Err(e)) => {
                tracing::warn!(connection = %name, %broker, error = %e, "RabbitMQ connection attempt failed");
                let delay = rotation.failed(config, &mut failures);
                sleep_or_shutdown(&shared, delay).await;
                continue;
            }
            Err(_) => {
                tracing::warn!(connection = %name, %broker, "RabbitMQ connection attempt timed out");
                let delay = rotation.failed(config, &mut failures);
                sleep_or_shutdown(&shared, delay).await;
                continue;
            }
        };
        // Subscribe before anything can go wrong so no error event is missed.
        let mut events = conn.events_listener();
        if let Err(e) = redeclare(&shared, &conn).await {
            tracing::warn!(connection = %name, error = %e, "re-declaring topology failed; reconnecting");
            let _ = tokio::time::timeout(
                config.operation_timeout,
                conn.close(320, "topology failed".into()),
            )
            .await;
            let delay = rotation.failed(config, &mut failures);
            sleep_or_shutdown(&shared, delay).await;
            continue;
        }
        generation += 1;
        failures = 0;
        rotation.connected();
        shared.live.send_replace(Some(Live {
            conn: Arc::clone(&conn),
            generation,
            broker: Arc::from(broker.as_str()),
        }));
        shared.state.send_replace(ConnectionState::Connected);
        tracing::info!(connection = %name, %broker, generation, "RabbitMQ connected");

        let mut poll = tokio::time::interval(Duration::from_millis(250));
        let lost_reason = loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break None,
                ev = events.next() => match ev {
                    Some(Event::Error(e)) => break Some(e.to_string()),
                    Some(_) => {}
                    None => break Some("event stream ended".to_owned()),
                },
                _ = poll.tick() => if !conn.status().connected() {
                    break Some("connection no longer connected".to_owned());
                },
            }
        };
        shared.live.send_replace(None);
        match lost_reason {
            None => {
                let _ = tokio::time::timeout(
                    config.operation_timeout,
                    conn.close(200, "shutdown".into()),
                )
                .await;
                break;
            }
            Some(reason) => {
                tracing::warn!(connection = %name, generation, %reason, "RabbitMQ connection lost; reconnecting");
                shared.state.send_replace(ConnectionState::Reconnecting);
                if conn.status().connected() {
                    let _ = tokio::time::timeout(
                        config.operation_timeout,
                        conn.close(320, "lost".into()),
                    )
                    .await;
                }
                failures += 1;
                sleep_or_shutdown(&shared, backoff_delay(config, failures.min(1))).await;
            }
        }
    }
    shared.live.send_replace(None);
    shared.state.send_replace(ConnectionState::Closed);
}

/// Which broker to try next. A round starts at the broker of the last good connection (or the
/// first one) and goes through the list once, wrapping around.
#[derive(Debug)]
struct Rotation {
    len: usize,
    current: usize,
    round_start: usize,
}

impl Rotation {
    fn new(len: usize) -> Self {
        Self {
            len: len.max(1),
            current: 0,
            round_start: 0,
        }
    }

    /// The connection to `current` is up: a later loss starts the next round there.
    fn connected(&mut self) {
        self.round_start = self.current;
    }

    /// The attempt on `current` failed: moves on to the next broker and returns how long to
    /// wait first: the shortest backoff within a round, the doubling one after a whole round
    /// failed (counted in `failures`).
    fn failed(&mut self, config: &ConnectionConfig, failures: &mut u32) -> Duration {
        self.current = (self.current + 1) % self.len;
        if self.current == self.round_start {
            *failures += 1;
            backoff_delay(config, *failures)
        } else {
            backoff_delay(config, 0)
        }
    }
}

async fn sleep_or_shutdown(shared: &Shared, d: Duration) {
    tokio::select! {
        _ = shared.shutdown.cancelled() => {}
        _ = tokio::time::sleep(d) => {}
    }
}

async fn redeclare(shared: &Shared, conn: &lapin::Connection) -> Result<(), Error> {
    let topologies = lock(&shared.topologies).clone();
    if topologies.is_empty() {
        return Ok(());
    }
    let timeout = shared.config.operation_timeout;
    let channel = match tokio::time::timeout(timeout, conn.create_channel()).await {
        Ok(Ok(ch)) => ch,
        Ok(Err(e)) => return Err(Error::connection(e)),
        Err(_) => return Err(Error::timeout("channel.open", timeout)),
    };
    for t in &topologies {
        t.declare(&channel, timeout).await?;
    }
    let _ = tokio::time::timeout(timeout, channel.close(200, "declared".into())).await;
    Ok(())
}

/// Readiness check of a [`Connection`]: up while [`ConnectionState::Connected`].
#[derive(Debug, Clone)]
pub struct ConnectionHealth {
    conn: Connection,
}

impl HealthCheck for ConnectionHealth {
    fn name(&self) -> &str {
        "rabbitmq"
    }

    fn check(&self) -> BoxFuture<'_, Result<(), BoxError>> {
        let state = self.conn.state();
        let live = self.conn.shared.live.borrow().clone();
        Box::pin(async move {
            match (state, live) {
                (ConnectionState::Connected, Some(live)) if live.conn.status().connected() => {
                    Ok(())
                }
                (state, _) => Err(format!("RabbitMQ connection is {state:?}").into()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let c = ConnectionConfig::new("amqp://127.0.0.1", "t")
            .min_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_secs(2));
        for f in 0..30 {
            let d = backoff_delay(&c, f);
            let cap = Duration::from_millis(100)
                .saturating_mul(2u32.saturating_pow(f.min(20)))
                .min(Duration::from_secs(2));
            assert!(d >= cap / 2 && d <= cap, "{f}: {d:?} vs {cap:?}");
        }
    }

    #[test]
    fn brokers_come_from_url_urls_and_the_environment_list() {
        let c = ConnectionConfig::with_urls(["amqp://a:5701", "amqp://b:5702"], "t")
            .fallback_url("amqp://c:5703");
        assert_eq!(
            c.brokers(),
            ["amqp://a:5701", "amqp://b:5702", "amqp://c:5703"]
        );
        c.validate().unwrap();
        assert_eq!(
            ConnectionConfig::new("amqp://a", "t").brokers(),
            ["amqp://a"]
        );
        assert!(
            ConnectionConfig::with_urls(Vec::<String>::new(), "t")
                .validate()
                .is_err()
        );
        assert!(
            ConnectionConfig::new("amqp://a", "t")
                .fallback_url("not a url::")
                .validate()
                .is_err()
        );
        assert_eq!(
            parse_url_list(" amqp://a:1 ,amqp://b:2,, "),
            ["amqp://a:1", "amqp://b:2"]
        );
        let parsed: ConnectionConfig =
            serde_json::from_str(r#"{"urls": ["amqp://a", "amqp://b"], "connection_name": "t"}"#)
                .unwrap();
        assert_eq!(parsed.brokers(), ["amqp://a", "amqp://b"]);
        assert_eq!(
            endpoint("amqp://guest:secret@10.0.0.1:5701/%2f"),
            "10.0.0.1:5701"
        );
    }

    #[test]
    fn rotation_tries_every_broker_before_backing_off() {
        let c = ConnectionConfig::new("amqp://a", "t")
            .min_backoff(Duration::from_millis(100))
            .max_backoff(Duration::from_secs(60));
        let mut r = Rotation::new(3);
        let mut failures = 0;
        // First round: 0 fails, 1 fails, 2 fails -> back at 0 with one failed round.
        assert!(r.failed(&c, &mut failures) <= Duration::from_millis(100));
        assert_eq!((r.current, failures), (1, 0));
        r.failed(&c, &mut failures);
        assert_eq!((r.current, failures), (2, 0));
        let d = r.failed(&c, &mut failures);
        assert_eq!((r.current, failures), (0, 1));
        assert!(d >= Duration::from_millis(100), "{d:?}");
        // Connected on 1: after a loss, 1 is tried first, then 2, 0, and the round ends at 1.
        r.failed(&c, &mut failures);
        r.connected();
        failures = 0;
        r.failed(&c, &mut failures);
        assert_eq!((r.current, failures), (2, 0));
        r.failed(&c, &mut failures);
        assert_eq!((r.current, failures), (0, 0));
        r.failed(&c, &mut failures);
        assert_eq!((r.current, failures), (1, 1));
        let mut single = Rotation::new(1);
        single.failed(&c, &mut failures);
        assert_eq!((single.current, failures), (0, 2));
    }

    #[test]
    fn invalid_config_is_rejected() {
        assert!(
            ConnectionConfig::new("not a url::", "t")
                .validate()
                .is_err()
        );
        assert!(
            ConnectionConfig::new("amqp://127.0.0.1", "t")
                .min_backoff(Duration::from_secs(2))
                .max_backoff(Duration::from_secs(1))
                .validate()
                .is_err()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_on_unreachable_broker_within_initial_timeout() {
        // Port 1 on loopback refuses connections immediately.
        let cfg = ConnectionConfig::new("amqp://guest:guest@127.0.0.1:1/%2f", "unreachable")
            .initial_connect_timeout(Duration::from_secs(3));
        let err = Connection::connect(cfg).await.unwrap_err();
        assert!(matches!(
            err.kind(),
            ErrorKind::Timeout {
                operation: "connect",
                ..
            }
        ));
    }
}
