//! Shared helpers of the outbox/inbox integration tests: a broker fixture (one exchange and one
//! queue per test, on a named connection), SQLite files in temp dirs, one PostgreSQL schema per
//! test, and closing one test's own broker connection with rabbitmqctl.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use chassis_messaging::connection::{Connection, ConnectionConfig};
use chassis_messaging::message::OutgoingMessage;
use chassis_messaging::publisher::{Publisher, PublisherConfig};
use chassis_messaging::topology::{ExchangeConfig, QueueConfig, QueueType, TopologyConfig};
use lapin::options::{BasicAckOptions, BasicGetOptions, ExchangeDeleteOptions, QueueDeleteOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn unique(prefix: &str) -> String {
    format!("chassis-test.{prefix}.{}", uuid::Uuid::new_v4().simple())
}

/// One received message, as the tests look at it.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub subject: Option<String>,
    pub seq: u64,
    pub routing_key: String,
}

/// A test's exchange and queue (bound with `#`), its named connection and a confirming
/// publisher on it.
pub struct Broker {
    pub conn: Connection,
    pub name: String,
    pub exchange: String,
    pub queue: QueueConfig,
    pub publisher: Arc<Publisher>,
}

impl Broker {
    pub async fn new(test: &str) -> Self {
        let name = unique(test);
        let conn = Connection::connect(
            ConnectionConfig::new(amqp_url(), name.clone())
                .operation_timeout(Duration::from_secs(5))
                .backoff(Duration::from_millis(50), Duration::from_millis(500)),
        )
        .await
        .expect("connect to RabbitMQ");
        let exchange = format!("{name}.ex");
        let queue = QueueConfig::new(format!("{name}.q"))
            .queue_type(QueueType::Classic)
            .bind(exchange.clone(), "event.#");
        conn.declare(
            TopologyConfig::new()
                .exchange(ExchangeConfig::topic(exchange.clone()))
                .queue(queue.clone()),
        )
        .await
        .expect("declare topology");
        let publisher = Arc::new(
            Publisher::new(
                &conn,
                PublisherConfig::default().confirm_timeout(Duration::from_secs(3)),
            )
            .expect("publisher"),
        );
        Self {
            conn,
            name,
            exchange,
            queue,
            publisher,
        }
    }

    /// An event of `subject` with sequence number `seq` (in the body), routed to the queue.
    pub fn event(&self, subject: &str, seq: u64) -> OutgoingMessage {
        OutgoingMessage::new(
            self.exchange.clone(),
            "event.happened",
            serde_json::to_vec(&serde_json::json!({ "subject": subject, "seq": seq })).unwrap(),
        )
        .content_type("application/json")
        .header("cloudEvents:subject", subject)
    }

    /// Takes messages from the queue (acking them) until `expected` arrived or `within` elapsed.
    pub async fn drain(&self, expected: usize, within: Duration) -> Vec<Received> {
        let ch = self.conn.create_channel().await.expect("channel");
        let deadline = tokio::time::Instant::now() + within;
        let mut out = Vec::new();
        while out.len() < expected && tokio::time::Instant::now() < deadline {
            let got = ch
                .basic_get(self.queue.name.as_str().into(), BasicGetOptions::default())
                .await;
            match got {
                Ok(Some(m)) => {
                    m.delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .expect("ack");
                    let body: serde_json::Value =
                        serde_json::from_slice(&m.delivery.data).expect("json body");
                    out.push(Received {
                        message_id: m
                            .delivery
                            .properties
                            .message_id()
                            .as_ref()
                            .map(|s| s.as_str().to_owned())
                            .unwrap_or_default(),
                        subject: body["subject"].as_str().map(str::to_owned),
                        seq: body["seq"].as_u64().unwrap_or_default(),
                        routing_key: m.delivery.routing_key.as_str().to_owned(),
                    });
                }
                Ok(None) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => panic!("basic.get failed: {e}"),
            }
        }
        let _ = ch.close(200, "done".into()).await;
        out
    }

    /// Deletes the queues and exchanges and closes the connection.
    pub async fn cleanup(self) {
        let ch = self
            .conn
            .create_channel()
            .await
            .expect("channel for cleanup");
        for q in self.queue.all_queues() {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for e in [self.exchange.clone(), self.queue.dead_letter_exchange()] {
            let _ = ch
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = ch.close(200, "cleanup".into()).await;
        self.conn.close().await;
    }
}

/// Asserts per-subject order: for every subject, the sequence numbers of the first deliveries
/// of each message are strictly increasing (redelivered duplicates are ignored).
pub fn assert_per_subject_order(received: &[Received]) {
    let mut seen = std::collections::HashSet::new();
    let mut last: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for r in received {
        if !seen.insert(r.message_id.clone()) {
            continue;
        }
        let subject = r.subject.clone().expect("subject");
        if let Some(prev) = last.get(&subject) {
            assert!(
                r.seq > *prev,
                "subject {subject}: seq {} arrived after {prev}",
                r.seq
            );
        }
        last.insert(subject, r.seq);
    }
}

/// Closes only the broker connection(s) named `name`; returns how many.
pub async fn kill_connection(name: &str) -> usize {
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("rabbitmqctl")
            .args(["-q", "list_connections", "pid", "client_properties"])
            .output()
            .expect("rabbitmqctl list_connections");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut killed = 0;
        for line in text.lines().filter(|l| l.contains(&name)) {
            let Some(pid) = line.split_whitespace().next() else {
                continue;
            };
            if !pid.starts_with('<') {
                continue;
            }
            let status = std::process::Command::new("rabbitmqctl")
                .args(["close_connection", pid, "chassis outbox test: forced close"])
                .status()
                .expect("rabbitmqctl close_connection");
            if status.success() {
                killed += 1;
            }
        }
        killed
    })
    .await
    .expect("rabbitmqctl task")
}

/// A SQLite database file in `dir` (WAL, 5 s busy timeout).
pub async fn sqlite_pool(dir: &tempfile::TempDir) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("outbox.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .expect("open sqlite")
}

/// Polls `check` every 20 ms until it is true or `within` elapsed; returns the last result.
pub async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One PostgreSQL schema for one test; `pool` connections use it as `search_path`.
#[cfg(feature = "postgres")]
pub struct PgSchema {
    pub schema: String,
    pub pool: sqlx::PgPool,
}

#[cfg(feature = "postgres")]
impl PgSchema {
    pub async fn new(max_connections: u32) -> Self {
        use std::str::FromStr;
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let options =
            sqlx::postgres::PgConnectOptions::from_str(&database_url()).expect("DATABASE_URL");
        let mut admin = sqlx::ConnectOptions::connect(&options)
            .await
            .expect("connect to PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
            .execute(&mut admin)
            .await
            .expect("create schema");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options.options([("search_path", schema.as_str())]))
            .await
            .expect("connect to PostgreSQL");
        Self { schema, pool }
    }

    pub async fn drop(self) {
        self.pool.close().await;
        use std::str::FromStr;
        let options =
            sqlx::postgres::PgConnectOptions::from_str(&database_url()).expect("DATABASE_URL");
        let mut admin = sqlx::ConnectOptions::connect(&options)
            .await
            .expect("connect to PostgreSQL");
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            self.schema
        )))
        .execute(&mut admin)
        .await;
    }
}
