//! What a shop service reads from its environment: [`Shop`] (its name, the namespace of its
//! exchanges and queues, its database and broker) and the HTTP addresses ([`server_config`]).
//!
//! `HTTP_ADDR` (default `127.0.0.1:<the service's port>`), `ADMIN_ADDR` (the admin listener:
//! probes and `/metrics`; default `127.0.0.1:<the service's port + 1000>`), `DATABASE_URL` (default
//! `sqlite://<DATA_DIR or .>/<service>.db`), `AMQP_URL` (default the local broker),
//! `SHOP_NAMESPACE` (a prefix of every exchange and queue name, so several systems share one
//! broker), `CONSUMER_CONCURRENCY` (default 32), `OUTBOX_RELAY` (the outbox relay's settings:
//! [`relay_config`]), `INBOX_GROUP_COMMIT` (how inbox consumers share transactions:
//! [`inbox_group_config`]).
//!
//! [`Shop`] also holds the service's control registry (`chassis_core::control`): what it builds
//! through [`Shop`] registers itself there, the outbox of [`Shop::database`] and every consumer
//! of [`Db::consumer`](crate::db::Db::consumer) or [`Shop::controlled`], so the admin API
//! ([`crate::admin`]) shows their backlogs and dead-letter queues with their actions.
//!
//! [`runtime`] is the tokio runtime every shop service runs on (`SHOP_RUNTIME_THREADS`, default
//! 1). [`telemetry`] is the chassis telemetry with the shop's histogram buckets
//! ([`LATENCY_BUCKETS`]), fine enough for the launcher's per-hop breakdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chassis_core::control::ControlRegistry;
use chassis_core::health::HealthRegistry;
use chassis_core::{BoxError, ServiceInfo};
use chassis_http::server::ServerConfig;
use chassis_messaging::amqp::consumer::Handler;
use chassis_messaging::amqp::control::{Counted, QueueControl, counted};
use chassis_messaging::sql::group_commit::GroupCommitConfig;
use chassis_messaging::{
    Connection, ConnectionConfig, ConsumerConfig, ExchangeConfig, QueueConfig, RelayConfig,
    TopologyConfig, Unroutable,
};
use chassis_observability::Telemetry;

use crate::db::Db;
use crate::events::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE};

/// `key`'s value, or `default` when it is unset or empty.
pub fn env(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.into())
}

/// The HTTP server's configuration: `HTTP_ADDR` or `127.0.0.1:<default_port>`; the admin
/// listener, which alone serves the probes and `/metrics`, at `ADMIN_ADDR` or
/// `127.0.0.1:<default_port + 1000>` (gateway 9080, orders 9081, …); in-flight requests get
/// 10 s to finish at shutdown; HTTPS when `TLS_CERT_FILE` is set (see [`crate::tls`]; the
/// admin listener stays plain HTTP).
pub fn server_config(default_port: u16) -> Result<ServerConfig, BoxError> {
    let addr: SocketAddr = env("HTTP_ADDR", &format!("127.0.0.1:{default_port}"))
        .parse()
        .map_err(|e| format!("HTTP_ADDR: {e}"))?;
    let admin_port = default_port.saturating_add(ADMIN_PORT_OFFSET);
    let admin: SocketAddr = env("ADMIN_ADDR", &format!("127.0.0.1:{admin_port}"))
        .parse()
        .map_err(|e| format!("ADMIN_ADDR: {e}"))?;
    let config = ServerConfig::default()
        .bind(addr)
        .admin(admin)
        .drain_timeout(Duration::from_secs(10));
    Ok(match crate::tls::server_tls()? {
        Some(tls) => config.tls(tls),
        None => config,
    })
}

/// A service's default admin port is its HTTP port plus this (8080 -> 9080).
pub const ADMIN_PORT_OFFSET: u16 = 1000;

/// Histogram buckets (seconds) of every shop service: 0.1 ms to 30 s, about 25% apart below
/// 0.1 s. The chassis default (the OpenTelemetry duration buckets, 5 ms and up) puts most of a
/// fast hop into its first bucket; with these the launcher's per-hop quantiles
/// (`shop_launcher::hops`) are within a quarter of the value. Recording costs the same either
/// way (one sample into a lock-free buffer; buckets are counted when `/metrics` is scraped).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.00125, 0.0015, 0.00175, 0.002, 0.0025, 0.003, 0.004,
    0.005, 0.006, 0.008, 0.01, 0.0125, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1,
    0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0,
];

/// The service's tokio runtime: `SHOP_RUNTIME_THREADS` worker threads (default 1, a
/// current-thread runtime; more gives a multi-thread one).
///
/// A shop service waits on its database, the broker and other services, and uses a fraction of a
/// core. On one thread, a task woken by I/O runs where the reactor runs; with several workers a
/// wake-up often lands on a parked worker and costs a futex wake and two context switches, which
/// on a 2-core machine shared by six services and the broker was a large part of each
/// service's CPU time (see `examples/README.md`, "Performance"). The database drivers' own
/// threads (sqlx runs each SQLite connection on one) are unaffected.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let threads: usize = env("SHOP_RUNTIME_THREADS", "1").parse().unwrap_or(1);
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    builder.enable_all().build()
}

/// The chassis telemetry (logs, traces, the Prometheus recorder) of a shop service, with
/// [`LATENCY_BUCKETS`] for every histogram, and the shop's own two histograms described (their
/// `# HELP` and unit), as the chassis describes its own.
pub fn telemetry(info: ServiceInfo) -> Result<Telemetry, BoxError> {
    let guard = Telemetry::builder(info)
        .histogram_buckets(LATENCY_BUCKETS)
        .init()?;
    metrics::describe_histogram!(
        crate::db::COMMIT_DURATION,
        metrics::Unit::Seconds,
        "Duration of one commit of a shop transaction (a handler's or an inbox consumer's)."
    );
    metrics::describe_histogram!(
        crate::db::MESSAGE_WAIT,
        metrics::Unit::Seconds,
        "From the sender's outbox write of a message to the start of its handler here, by consumer."
    );
    Ok(guard)
}

/// The outbox relay's settings: the chassis defaults ([`RelayConfig::default`]) with the fields
/// of the JSON object in `OUTBOX_RELAY` over them (`RelayConfig`'s field names, durations in
/// humantime form), e.g. `OUTBOX_RELAY='{"batches_in_flight": 1, "sent_retention": "0s"}'`.
/// An unknown field or a value that does not parse is an error, so a typo stops the service at
/// start instead of being ignored.
///
/// # Example
/// ```
/// // With OUTBOX_RELAY unset: the chassis defaults.
/// let config = shop_common::service::relay_config().unwrap();
/// assert_eq!(config, chassis_messaging::RelayConfig::default());
/// ```
pub fn relay_config() -> Result<RelayConfig, BoxError> {
    relay_config_from(&env("OUTBOX_RELAY", "{}"))
}

fn relay_config_from(json: &str) -> Result<RelayConfig, BoxError> {
    let config: RelayConfig =
        serde_json::from_str(json).map_err(|e| format!("OUTBOX_RELAY {json:?}: {e}"))?;
    config
        .validate()
        .map_err(|e| format!("OUTBOX_RELAY {json:?}: {e}"))?;
    Ok(config)
}

/// How each inbox consumer groups its messages into transactions: the chassis defaults
/// ([`GroupCommitConfig::default`]: up to 32 messages per transaction, one transaction at a
/// time) with the fields of the JSON object in `INBOX_GROUP_COMMIT` over them, e.g.
/// `INBOX_GROUP_COMMIT='{"max_batch": 1}'` for one transaction per message. Unknown fields and
/// invalid values are refused, as in [`relay_config`].
///
/// # Example
/// ```
/// // With INBOX_GROUP_COMMIT unset: the chassis defaults.
/// let config = shop_common::service::inbox_group_config().unwrap();
/// assert_eq!(config, chassis_messaging::sql::group_commit::GroupCommitConfig::default());
/// ```
pub fn inbox_group_config() -> Result<GroupCommitConfig, BoxError> {
    inbox_group_config_from(&env("INBOX_GROUP_COMMIT", "{}"))
}

fn inbox_group_config_from(json: &str) -> Result<GroupCommitConfig, BoxError> {
    let config: GroupCommitConfig =
        serde_json::from_str(json).map_err(|e| format!("INBOX_GROUP_COMMIT {json:?}: {e}"))?;
    config
        .validate()
        .map_err(|e| format!("INBOX_GROUP_COMMIT {json:?}: {e}"))?;
    Ok(config)
}

/// A shop service: its name, the namespace prefixed to its exchange and queue names, and its
/// control registry. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shop {
    service: &'static str,
    namespace: Arc<str>,
    control: ControlRegistry,
}

impl Shop {
    /// The service `service` (`orders`, …) in the namespace `SHOP_NAMESPACE`.
    pub fn from_env(service: &'static str) -> Self {
        Self::new(service, &env("SHOP_NAMESPACE", ""))
    }

    fn new(service: &'static str, namespace: &str) -> Self {
        Self {
            service,
            namespace: namespace.into(),
            control: ControlRegistry::new(service),
        }
    }

    /// The service's control registry, for the admin API ([`crate::admin::with_admin`]), with
    /// `health`'s checks registered: its outbox and consumers are in it once built (see the
    /// [module docs](self)); add the service's breakers and other policies.
    pub fn control(&self, health: &HealthRegistry) -> ControlRegistry {
        self.control.register_health(health.clone());
        self.control.clone()
    }

    /// `handler`, counted, with `queue`'s depths, retry tiers and dead-letter queue registered
    /// in the service's control registry (`requeue_dlq` moves dead-lettered messages back),
    /// for a consumer built without [`Db::consumer`](crate::db::Db::consumer), which does this
    /// itself.
    pub fn controlled<H: Handler>(
        &self,
        conn: &Connection,
        queue: &QueueConfig,
        handler: H,
    ) -> Counted<H> {
        let (handler, stats) = counted(handler);
        self.control.register(
            queue.name.clone(),
            QueueControl::new(conn.clone(), queue.clone()).stats(stats),
        );
        handler
    }

    /// The service name.
    pub fn service(&self) -> &'static str {
        self.service
    }

    /// An exchange or queue name with the namespace prefix.
    pub fn name(&self, base: &str) -> String {
        format!("{}{base}", self.namespace)
    }

    /// The queue `<namespace><service>.<suffix>` bound to `bindings` (exchange, routing key);
    /// the broker gives it its retry tiers and dead-letter queue.
    /// `SHOP_QUEUE_TYPE=classic` declares classic queues instead of quorum ones (for
    /// comparisons; a queue's type cannot change once declared, so use it with a fresh
    /// namespace).
    pub fn queue(&self, suffix: &str, bindings: &[(&str, &str)]) -> QueueConfig {
        let mut queue = QueueConfig::new(self.name(&format!("{}.{suffix}", self.service)));
        if env("SHOP_QUEUE_TYPE", "quorum") == "classic" {
            queue = queue.queue_type(chassis_messaging::amqp::topology::QueueType::Classic);
        }
        bindings.iter().fold(queue, |q, (exchange, key)| {
            q.bind(self.name(exchange), *key)
        })
    }

    /// The shop's topic exchanges, `shop.events` and `shop.commands`; add the service's queues.
    ///
    /// An event is a fact published for whoever cares: one nobody subscribes to
    /// (`inventory.released`, `payment.refunded`) is normal publish/subscribe, so `shop.events`
    /// accepts unroutable messages (the outbox marks them sent and counts them in
    /// `outbox_unroutable_total`). A command must reach its handler: `shop.commands` keeps the default,
    /// and an unroutable command is retried, then parked. The price on `shop.events`: an event
    /// published before its consumer ever declared its queue (only possible on a fresh broker,
    /// the queues are durable) is dropped, and the saga's step timeout fails that order.
    pub fn topology(&self) -> TopologyConfig {
        TopologyConfig::new()
            .exchange(
                ExchangeConfig::topic(self.name(EVENTS_EXCHANGE)).unroutable(Unroutable::Accept),
            )
            .exchange(ExchangeConfig::topic(self.name(COMMANDS_EXCHANGE)))
    }

    /// The connection to `AMQP_URL`, attaching in the background (see `Connection::start`).
    pub fn connect(&self, info: &ServiceInfo) -> Result<Connection, chassis_messaging::Error> {
        let url = env("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
        let name = format!("{}{}-{}", self.namespace, self.service, info.instance_id);
        Connection::start(ConnectionConfig::new(url, name))
    }

    /// Consumers' settings: `CONSUMER_CONCURRENCY` handlers at a time (default 32), partitioned
    /// by the events' subject (the order id): one order's messages are handled one at a time,
    /// in the order they arrive, while different orders run concurrently. The outbox publishes
    /// an order's events in order; this keeps that order on the consuming side.
    pub fn consumer_config(&self) -> ConsumerConfig {
        // 32 rather than fewer: the messages in hand share one inbox transaction (the group
        // commit), so more of them at once means fewer commits per message. Measured on
        // SQLite, 1 000 orders at concurrency 32: 6.5-6.7 ms of CPU per order against 7.4-7.7
        // with 8, and no better with 64 (benches/README.md, "Example system").
        let concurrency = env("CONSUMER_CONCURRENCY", "32").parse().unwrap_or(32);
        ConsumerConfig::default()
            .concurrency(concurrency)
            .partition_by_subject()
    }

    /// The database `DATABASE_URL`, by default the SQLite file `<DATA_DIR>/<service>.db`; its
    /// outbox is registered in the control registry as `outbox` (pending rows, the oldest
    /// one's age, parked rows; `requeue` puts parked rows back).
    pub fn database(&self) -> Result<Db, BoxError> {
        let dir = std::path::PathBuf::from(env("DATA_DIR", "."));
        let file = dir.join(format!("{}.db", self.service));
        let db = Db::open(&env(
            "DATABASE_URL",
            &format!("sqlite://{}", file.display()),
        ))?;
        db.register_outbox(&self.control);
        Ok(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_namespace() {
        let shop = Shop::new("orders", "ns.");
        let queue = shop.queue("saga", &[(EVENTS_EXCHANGE, "payment.failed")]);
        assert_eq!(queue.name, "ns.orders.saga");
        assert_eq!(queue.bindings[0].exchange, "ns.shop.events");
        assert_eq!(queue.bindings[0].routing_key, "payment.failed");
        let exchanges = shop.topology().exchanges;
        let names: Vec<_> = exchanges.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["ns.shop.events", "ns.shop.commands"]);
    }

    #[test]
    fn relay_settings_come_over_the_chassis_defaults_and_typos_are_refused() {
        let config =
            relay_config_from(r#"{"batches_in_flight": 1, "sent_retention": "0s"}"#).unwrap();
        assert_eq!(config.batches_in_flight, 1);
        assert_eq!(config.sent_retention, Duration::ZERO);
        assert_eq!(config.batch_size, RelayConfig::default().batch_size);
        assert_eq!(relay_config_from("{}").unwrap(), RelayConfig::default());
        let typo = relay_config_from(r#"{"batches_in_fligth": 1}"#).unwrap_err();
        assert!(typo.to_string().contains("batches_in_fligth"), "{typo}");
        assert!(relay_config_from(r#"{"batch_size": 0}"#).is_err());
    }

    #[test]
    fn inbox_group_settings_come_over_the_chassis_defaults_and_typos_are_refused() {
        let config = inbox_group_config_from(r#"{"max_batch": 1}"#).unwrap();
        assert_eq!(config.max_batch, 1);
        assert_eq!(
            config.batches_in_flight,
            GroupCommitConfig::default().batches_in_flight
        );
        assert_eq!(
            inbox_group_config_from("{}").unwrap(),
            GroupCommitConfig::default()
        );
        let typo = inbox_group_config_from(r#"{"max_bacth": 1}"#).unwrap_err();
        assert!(typo.to_string().contains("max_bacth"), "{typo}");
        assert!(inbox_group_config_from(r#"{"max_batch": 0}"#).is_err());
    }

    #[test]
    fn latency_buckets_are_increasing_and_span_a_tenth_of_a_millisecond_to_seconds() {
        assert!(LATENCY_BUCKETS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(LATENCY_BUCKETS.first(), Some(&0.0001));
        assert!(LATENCY_BUCKETS.last().is_some_and(|b| *b >= 10.0));
        // Below 0.1 s no bucket is more than 2.5 times the previous one (quantiles within a
        // bucket's width stay close to the value).
        let fine = LATENCY_BUCKETS
            .iter()
            .filter(|b| **b <= 0.1)
            .collect::<Vec<_>>();
        assert!(fine.windows(2).all(|w| w[1] / w[0] <= 2.5));
    }
}
