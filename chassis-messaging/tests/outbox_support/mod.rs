//! Shared helpers of the outbox/inbox integration tests: a broker fixture (one exchange and one
//! queue per test, on a named connection), SQLite files in temp dirs, one PostgreSQL schema per
//! test, and (from `tests/support`) closing one test's own broker connection with rabbitmqctl.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

// The broker helpers (URL, unique names, closing one test's connection) are the RabbitMQ
// tests' own.
#[path = "../support/mod.rs"]
mod broker_support;
#[allow(unused_imports)] // not every test binary uses every helper
pub use broker_support::{Fixture, amqp_url, kill_connection, recv_n, unique};

use chassis_messaging::amqp::publisher::Publish;
use chassis_messaging::amqp::publisher::{Publisher, PublisherConfig};
use chassis_messaging::amqp::topology::QueueType;
use chassis_messaging::error::Error;
use chassis_messaging::message::OutgoingMessage;
use chassis_messaging::sql::inbox::{Inbox, InboxDatabase};
use chassis_messaging::sql::outbox::{Outbox, OutboxDatabase, OutboxStore, Relay, RelayConfig};
use futures_util::future::BoxFuture;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tokio_util::sync::CancellationToken;

pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// One received message, as the tests look at it.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub subject: Option<String>,
    pub seq: u64,
    pub routing_key: String,
}

/// A test's exchange and classic queue (bound with `event.#`), its named connection (the
/// RabbitMQ tests' [`Fixture`], which `Broker` derefs to) and a confirming publisher on it.
pub struct Broker {
    fx: Fixture,
    pub publisher: Arc<Publisher>,
}

impl std::ops::Deref for Broker {
    type Target = Fixture;
    fn deref(&self) -> &Fixture {
        &self.fx
    }
}

impl Broker {
    pub async fn new(test: &str) -> Self {
        let fx = Fixture::with_binding(test, "event.#", |q| q.queue_type(QueueType::Classic)).await;
        let publisher = Arc::new(
            Publisher::new(
                &fx.conn,
                PublisherConfig::default().confirm_timeout(Duration::from_secs(3)),
            )
            .expect("publisher"),
        );
        Self { fx, publisher }
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
        self.fx.cleanup().await;
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

/// A migrated SQLite outbox on a database file in `dir`.
pub async fn sqlite_outbox(
    dir: &tempfile::TempDir,
) -> chassis_messaging::sql::outbox::SqliteOutbox {
    let outbox = chassis_messaging::sql::outbox::SqliteOutbox::new(sqlite_pool(dir).await);
    outbox.migrate().await.unwrap();
    outbox
}

/// Installs the chassis subscriber of service `name`, its log written to `logs`, as the
/// global default. Global, in a test binary of its own: a thread-local default subscriber
/// races with other tests' threads over tracing's per-callsite interest cache.
pub fn global_telemetry(
    name: &str,
    logs: chassis_observability::logging::CaptureWriter,
) -> chassis_observability::Telemetry {
    let (dispatch, telemetry) =
        chassis_observability::Telemetry::builder(chassis_core::ServiceInfo::new(name, "1.0.0"))
            .ignore_env()
            .make_writer(logs)
            .build()
            .unwrap();
    tracing::dispatcher::set_global_default(dispatch).expect("the only subscriber");
    telemetry
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

/// Rows `1..=n`: every `every`-th one has no subject (no ordering constraint), the others
/// belong to one of `subjects` aggregates.
pub fn mixed_events(broker: &Broker, n: u64, subjects: u64, every: u64) -> Vec<OutgoingMessage> {
    (1..=n)
        .map(|i| {
            let mut msg = broker.event(&format!("agg-{}", i % subjects), i);
            if i % every == 0 {
                msg.headers.remove("cloudEvents:subject");
            }
            msg
        })
        .collect()
}

/// Drains until every id in `expected` arrived (or 30 s); asserts none is missing and that the
/// rows with a subject arrived in commit order.
pub async fn assert_all_arrive_in_subject_order(
    broker: &Broker,
    expected: &HashSet<String>,
    unordered: &HashSet<String>,
) {
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let got = |received: &Vec<Received>| -> HashSet<String> {
        received.iter().map(|r| r.message_id.clone()).collect()
    };
    while tokio::time::Instant::now() < deadline && !expected.is_subset(&got(&received)) {
        received.extend(
            broker
                .drain(expected.len(), Duration::from_millis(500))
                .await,
        );
    }
    let got = got(&received);
    assert!(
        expected.is_subset(&got),
        "{} of {} committed events arrived",
        expected.intersection(&got).count(),
        expected.len()
    );
    received.retain(|r| !unordered.contains(&r.message_id));
    assert_per_subject_order(&received);
}

/// Splits enqueued ids into all of them and those without a subject (no order to check).
pub fn split_unordered(
    ids: Vec<String>,
    events: &[OutgoingMessage],
) -> (HashSet<String>, HashSet<String>) {
    let unordered = ids
        .iter()
        .zip(events)
        .filter(|(_, m)| !m.headers.contains_key("cloudEvents:subject"))
        .map(|(id, _)| id.clone())
        .collect();
    (ids.into_iter().collect(), unordered)
}

/// What a [`Probe`] saw.
#[derive(Debug, Default)]
pub struct ProbeState {
    /// Publishes started and not yet returned.
    pub in_flight: usize,
    /// The most publishes in flight at once.
    pub max_in_flight: usize,
    /// Publishes in flight per subject.
    pub subjects: std::collections::HashMap<String, usize>,
    /// Publishes that started while an earlier one of the same subject was still unconfirmed.
    pub violations: Vec<String>,
    /// Publishes the broker confirmed.
    pub confirmed: usize,
    /// Every publish as it returned: subject, the `seq` of the event's body, confirmed.
    pub log: Vec<(Option<String>, u64, bool)>,
}

/// Publishes through the real publisher after `delay` (so batches visibly overlap) and watches
/// the relay: how many publishes are in flight, and whether a subject ever had two at once
/// (which would break per-subject order).
pub struct Probe {
    pub inner: Arc<Publisher>,
    pub delay: Duration,
    pub state: std::sync::Mutex<ProbeState>,
}

impl Probe {
    pub fn new(inner: Arc<Publisher>, delay: Duration) -> Arc<Self> {
        Arc::new(Self {
            inner,
            delay,
            state: std::sync::Mutex::new(ProbeState::default()),
        })
    }

    pub fn snapshot<T>(&self, f: impl FnOnce(&ProbeState) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    /// Asserts that more than one batch of `batch` rows was in flight at some point, and that
    /// no subject ever had two publishes in flight.
    pub fn assert_overlapped_in_order(&self, batch: usize) {
        self.snapshot(|s| {
            assert!(s.violations.is_empty(), "{:?}", s.violations);
            assert!(
                s.max_in_flight > batch,
                "two batches were in flight at once (max {} publishes)",
                s.max_in_flight
            );
        });
    }
}

/// Counts one publish out of the probe, even when the relay drops it (publish timeout).
struct InFlight<'a> {
    probe: &'a Probe,
    subject: Option<String>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut s = self.probe.state.lock().unwrap();
        s.in_flight -= 1;
        if let Some(subject) = &self.subject {
            *s.subjects.get_mut(subject).unwrap() -= 1;
        }
    }
}

impl Publish for Probe {
    fn publish(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let subject = match msg.headers.get("cloudEvents:subject") {
                Some(chassis_messaging::message::HeaderValue::String(s)) => Some(s.clone()),
                _ => None,
            };
            let _in_flight = {
                let mut s = self.state.lock().unwrap();
                s.in_flight += 1;
                s.max_in_flight = s.max_in_flight.max(s.in_flight);
                if let Some(subject) = &subject {
                    let n = {
                        let n = s.subjects.entry(subject.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    if n > 1 {
                        s.violations
                            .push(format!("{subject}: {n} publishes in flight at once"));
                    }
                }
                InFlight {
                    probe: self,
                    subject,
                }
            };
            tokio::time::sleep(self.delay).await;
            let seq = serde_json::from_slice::<serde_json::Value>(&msg.body)
                .ok()
                .and_then(|v| v["seq"].as_u64())
                .unwrap_or_default();
            let subject = _in_flight.subject.clone();
            let res = self.inner.publish(msg).await;
            let mut s = self.state.lock().unwrap();
            if res.is_ok() {
                s.confirmed += 1;
            }
            s.log.push((subject, seq, res.is_ok()));
            res
        })
    }
}

/// Publishes through the real publisher, then never returns: the relay is "killed" after the
/// broker confirmed and before it could mark the rows.
pub struct CrashAfterConfirm {
    pub inner: Arc<Publisher>,
    pub confirmed_then_hung: std::sync::atomic::AtomicUsize,
}

impl CrashAfterConfirm {
    pub fn new(inner: Arc<Publisher>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            confirmed_then_hung: std::sync::atomic::AtomicUsize::new(0),
        })
    }
}

impl Publish for CrashAfterConfirm {
    fn publish(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.inner.publish(msg).await?;
            self.confirmed_then_hung
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::future::pending().await
        })
    }
}

/// Two subjects interleaved, 12 events each (`seq` 1..=24, odd ones `agg-a`), where `agg-a`'s
/// 4th event (seq 7) is unroutable: with batches of 2 and 4 in flight, most rows are claimed
/// while their subject's earlier rows are still in flight, so they are linked behind them.
pub fn linked_events(broker: &Broker) -> Vec<OutgoingMessage> {
    (1..=24u64)
        .map(|seq| {
            let subject = if seq % 2 == 1 { "agg-a" } else { "agg-b" };
            let mut event = broker.event(subject, seq);
            if seq == LINKED_POISON {
                event.routing_key = "nobody.listens".into();
            }
            event
        })
        .collect()
}

/// The unroutable event of [`linked_events`].
pub const LINKED_POISON: u64 = 7;

/// Runs a relay (batches of 2, 4 in flight, 2 attempts) over the enqueued [`linked_events`]
/// and checks that rows linked behind a failing row wait for it: nothing of `agg-a` after the
/// poison is published until the poison was parked (its second failure), every other event
/// arrives, in subject order, and no subject ever has two publishes in flight.
pub async fn assert_linked_rows_wait_for_a_failing_predecessor<S: OutboxStore>(
    store: S,
    broker: &Broker,
) {
    let probe = Probe::new(broker.publisher.clone(), Duration::from_millis(5));
    let config = chassis_messaging::sql::outbox::RelayConfig::default()
        .batch_size(2)
        .batches_in_flight(4)
        .max_attempts(2)
        .retry_delay(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(20));
    let token = tokio_util::sync::CancellationToken::new();
    let relay = chassis_messaging::sql::outbox::Relay::new(store.clone(), probe.clone(), config)
        .unwrap()
        .spawn(token.clone());
    let received = broker.drain(23, Duration::from_secs(20)).await;
    let mut seqs: Vec<u64> = received.iter().map(|r| r.seq).collect();
    seqs.sort_unstable();
    let expected: Vec<u64> = (1..=24).filter(|s| *s != LINKED_POISON).collect();
    assert_eq!(seqs, expected);
    assert_per_subject_order(&received);
    assert!(
        eventually(Duration::from_secs(10), || async {
            store.stats().await.unwrap().parked == 1
        })
        .await,
        "the poison is parked"
    );
    token.cancel();
    relay.await.unwrap();

    probe.snapshot(|s| {
        assert!(s.violations.is_empty(), "{:?}", s.violations);
        let poison_tries: Vec<usize> = s
            .log
            .iter()
            .enumerate()
            .filter(|(_, (_, seq, _))| *seq == LINKED_POISON)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            poison_tries.len(),
            2,
            "two attempts, then parked: {:?}",
            s.log
        );
        let parked_at = poison_tries[1];
        for (i, (subject, seq, ok)) in s.log.iter().enumerate() {
            if subject.as_deref() == Some("agg-a") && *seq > LINKED_POISON {
                assert!(
                    i > parked_at,
                    "agg-a #{seq} was published before #{LINKED_POISON} was parked: {:?}",
                    s.log
                );
                assert!(*ok, "{:?}", s.log);
            }
        }
    });
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.parked), (0, 1));
}

/// After a migration: the one row written in the old layout (message id `old-row`, the body of
/// `broker.event(_, 1)`) is relayed whole.
pub async fn the_old_row_is_published<S: OutboxStore>(outbox: S, broker: &Broker) {
    let relay = chassis_messaging::sql::outbox::Relay::new(
        outbox,
        broker.publisher.clone(),
        chassis_messaging::sql::outbox::RelayConfig::default(),
    )
    .unwrap();
    assert_eq!(relay.run_until_idle().await.unwrap().sent, 1);
    let received = broker.drain(1, Duration::from_secs(10)).await;
    assert_eq!(received[0].message_id, "old-row");
    assert_eq!(received[0].seq, 1, "the body survived the move");
}

/// The migrated inbox of `consumer` on `pool`, beside an `effects` table (`message_id`) its
/// handlers write to.
pub async fn effects_inbox<DB: InboxDatabase>(pool: sqlx::Pool<DB>, consumer: &str) -> Inbox<DB>
where
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    effects_inbox_with(pool, consumer, "message_id TEXT NOT NULL").await
}

/// Like [`effects_inbox`], the `effects` table created with `columns` (no unique key, so an
/// effect applied twice shows up as two rows).
pub async fn effects_inbox_with<DB: InboxDatabase>(
    pool: sqlx::Pool<DB>,
    consumer: &str,
    columns: &str,
) -> Inbox<DB>
where
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
{
    let inbox = Inbox::new(pool.clone(), consumer);
    inbox.migrate().await.unwrap();
    let create = format!("CREATE TABLE effects ({columns})");
    sqlx::query(sqlx::AssertSqlSafe(create))
        .execute(&pool)
        .await
        .unwrap();
    inbox
}

/// A `counters` table with one row (at 0) per subject; returns the subjects.
pub async fn create_counters<DB: sqlx::Database>(pool: &sqlx::Pool<DB>) -> Vec<String>
where
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
{
    sqlx::raw_sql(
        "CREATE TABLE counters (subject TEXT PRIMARY KEY, n BIGINT NOT NULL); \
         INSERT INTO counters VALUES ('agg-0', 0), ('agg-1', 0), ('agg-2', 0), ('agg-3', 0), \
         ('agg-4', 0)",
    )
    .execute(pool)
    .await
    .unwrap();
    (0..5).map(|i| format!("agg-{i}")).collect()
}

/// Four writers of 50 events each over `subjects` (writer `w` starts at subject `w`), all at
/// once; `write(subject)` commits one event of that subject.
pub async fn run_writers<F, Fut>(subjects: &[String], write: F)
where
    F: Fn(String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (subjects, write) = (subjects.to_vec(), write.clone());
            tokio::spawn(async move {
                for i in 0..50usize {
                    write(subjects[(i + w) % subjects.len()].clone()).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
}

/// One counter writer's transaction: opened with `begin`, the subject's counter incremented by
/// `update` (whose one parameter is the subject, returning the new count), the event carrying
/// that count enqueued, committed as `commit` says.
pub async fn write_counter_event<DB: OutboxDatabase>(
    outbox: &Outbox<DB>,
    exchange: &str,
    subject: String,
    begin: &'static str,
    update: &'static str,
    commit: Commit,
) where
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    (i64,): for<'r> sqlx::FromRow<'r, DB::Row>,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let mut tx = outbox.pool().begin_with(begin).await.unwrap();
    let (seq,): (i64,) = sqlx::query_as(update)
        .bind(subject.clone())
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    let msg = counter_event(exchange, &subject, seq);
    outbox.enqueue(&mut tx, &msg).await.unwrap();
    match commit {
        Commit::Signalled => outbox.commit(tx).await.unwrap(),
        Commit::Plain => tx.commit().await.unwrap(),
    }
}

/// Creates the tables as the first migration left them (PostgreSQL or SQLite, by `DB`) and
/// inserts `event` there as a pending row of subject `agg-1` and message id `old-row`.
pub async fn old_layout_with_a_pending_row<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    event: &OutgoingMessage,
) where
    for<'c> &'c sqlx::Pool<DB>: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    String: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<String>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Vec<u8>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    let (first_migration, insert) = if DB::NAME == "PostgreSQL" {
        (
            include_str!("../../migrations/postgres/20261122000001_chassis_outbox_inbox.sql"),
            "INSERT INTO chassis_outbox (subject, exchange, routing_key, message_id, \
             content_type, headers, body, created_at, available_at) \
             VALUES ($1, $2, $3, 'old-row', $4, $5::jsonb, $6, 1, 1)",
        )
    } else {
        (
            include_str!("../../migrations/sqlite/20261122000001_chassis_outbox_inbox.sql"),
            "INSERT INTO chassis_outbox (subject, exchange, routing_key, message_id, \
             content_type, headers, body, created_at, available_at) \
             VALUES (?1, ?2, ?3, 'old-row', ?4, ?5, ?6, 1, 1)",
        )
    };
    sqlx::raw_sql(first_migration).execute(pool).await.unwrap();
    sqlx::query(insert)
        .bind("agg-1".to_owned())
        .bind(event.exchange.clone())
        .bind(event.routing_key.clone())
        .bind(event.content_type.clone())
        .bind(serde_json::to_string(&event.headers).unwrap())
        .bind(event.body.clone())
        .execute(pool)
        .await
        .unwrap();
}

/// Drains: exactly `expected` arrive, in that order, `rolled_back` never, nothing else.
pub async fn assert_exactly_these_arrive(broker: &Broker, expected: &[&str], rolled_back: &str) {
    let received = broker.drain(expected.len(), Duration::from_secs(10)).await;
    let ids: Vec<&str> = received.iter().map(|r| r.message_id.as_str()).collect();
    assert_eq!(ids, expected);
    assert!(!ids.contains(&rolled_back));
    assert!(
        broker.drain(1, Duration::from_millis(300)).await.is_empty(),
        "nothing else arrives"
    );
}

/// `outbox` migrated (twice: the migrations are idempotent), its health check passing.
pub async fn migrated<DB: OutboxDatabase>(outbox: Outbox<DB>) -> Outbox<DB> {
    outbox.migrate().await.unwrap();
    outbox.migrate().await.expect("migrations are idempotent");
    chassis_core::health::HealthCheck::check(&outbox)
        .await
        .expect("the database health check passes");
    outbox
}

/// How [`enqueue_committed`] commits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Through `Outbox::commit`, which also wakes the relays of this process.
    Signalled,
    /// The transaction's own commit: only the database (PostgreSQL `NOTIFY`) can wake a relay.
    Plain,
}

/// Enqueues `msg` in a transaction of its own and commits it; returns its message id.
pub async fn enqueue_committed<DB: OutboxDatabase>(
    outbox: &Outbox<DB>,
    msg: &OutgoingMessage,
    commit: Commit,
) -> String {
    let mut tx = outbox.pool().begin().await.unwrap();
    let id = outbox.enqueue(&mut tx, msg).await.unwrap();
    match commit {
        Commit::Signalled => outbox.commit(tx).await.unwrap(),
        Commit::Plain => tx.commit().await.unwrap(),
    }
    id
}

/// Enqueues `events` in one transaction; returns their ids, and those without a subject.
pub async fn enqueue_all<DB: OutboxDatabase>(
    outbox: &Outbox<DB>,
    events: &[OutgoingMessage],
) -> (HashSet<String>, HashSet<String>) {
    let mut tx = outbox.pool().begin().await.unwrap();
    let mut ids = Vec::new();
    for msg in events {
        ids.push(outbox.enqueue(&mut tx, msg).await.unwrap());
    }
    tx.commit().await.unwrap();
    split_unordered(ids, events)
}

/// Spawns a relay of `outbox` through `publisher`, running until `token` is cancelled.
pub fn spawn_relay<S: OutboxStore, P: Publish + ?Sized + 'static>(
    outbox: &S,
    publisher: Arc<P>,
    config: RelayConfig,
    token: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    Relay::new(outbox.clone(), publisher, config)
        .unwrap()
        .spawn(token.clone())
}

/// Cancels `token` and waits for each relay to stop.
pub async fn stop_relays(
    token: CancellationToken,
    relays: impl IntoIterator<Item = tokio::task::JoinHandle<()>>,
) {
    token.cancel();
    for relay in relays {
        relay.await.unwrap();
    }
}

/// Asserts that `outbox` has no pending row within 5 s.
pub async fn assert_drained<S: OutboxStore>(outbox: &S) {
    assert!(
        eventually(Duration::from_secs(5), || async {
            outbox.stats().await.unwrap().pending == 0
        })
        .await,
        "every row was published"
    );
}

/// The event the counter writers enqueue: `seq` is the subject's counter after their update.
pub fn counter_event(exchange: &str, subject: &str, seq: i64) -> OutgoingMessage {
    OutgoingMessage::new(
        exchange.to_owned(),
        "event.happened",
        serde_json::to_vec(&serde_json::json!({"subject": subject, "seq": seq})).unwrap(),
    )
    .header("cloudEvents:subject", subject)
}

/// Drains `n` messages within `within`: all arrive, each once, in subject order.
pub async fn assert_each_arrives_once_in_subject_order(
    broker: &Broker,
    n: usize,
    within: Duration,
) {
    let received = broker.drain(n, within).await;
    assert_eq!(received.len(), n);
    let unique: HashSet<_> = received.iter().map(|r| r.message_id.clone()).collect();
    assert_eq!(unique.len(), n);
    assert_per_subject_order(&received);
}

/// `n` mixed events enqueued at once, relayed until idle with two batches of 25 in flight
/// behind a slow publisher: the batches overlap, yet no subject is published ahead of its
/// unconfirmed rows and everything arrives.
pub async fn assert_overlapping_batches_keep_subject_order<DB: OutboxDatabase>(
    outbox: &Outbox<DB>,
    broker: &Broker,
    n: u64,
) {
    let events = mixed_events(broker, n, 3, 2);
    let (ids, unordered) = enqueue_all(outbox, &events).await;

    let probe = Probe::new(broker.publisher.clone(), Duration::from_millis(10));
    let batch = 25;
    let config = RelayConfig::default()
        .batch_size(batch)
        .batches_in_flight(2);
    let relay = Relay::new(outbox.clone(), probe.clone(), config).unwrap();
    let report = relay.run_until_idle().await.unwrap();
    assert_eq!(report.sent, n as usize, "{report:?}");
    assert_eq!(report.transient_error, None);
    probe.assert_overlapped_in_order(batch);
    assert_eq!(outbox.stats().await.unwrap().pending, 0);
    assert_all_arrive_in_subject_order(broker, &ids, &unordered).await;
}

/// Asserts that `control` refuses `action` (with `args`) on the `kind` named `name` as an
/// invalid action.
pub async fn assert_refused(
    control: &chassis_core::control::ControlRegistry,
    kind: &str,
    name: &str,
    action: &str,
    args: serde_json::Value,
) {
    let refused = control
        .act(kind, name, action, &args)
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(
            refused.kind(),
            chassis_core::ErrorKind::InvalidAction { .. }
        ),
        "{action}: {refused}"
    );
}

/// The strings the one-column query `sql` selects from `pool`.
pub async fn strings<C: FromIterator<String>>(pool: &SqlitePool, sql: &'static str) -> C {
    sqlx::query_scalar::<_, String>(sql)
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}
