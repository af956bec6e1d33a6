//! What every case of the reliability suite shares: a topic (one exchange and its queues) on a
//! broker, the effect database with its inbox, a tally of what consumers were handed, a
//! confirming bulk publisher, the checks every case ends with and the summary line it prints.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chassis_messaging::amqp::connection::{Connection, ConnectionConfig};
use chassis_messaging::amqp::consumer::{Handler, Outcome};
use chassis_messaging::amqp::incoming::IncomingMessage;
use chassis_messaging::amqp::publisher::Publisher;
use chassis_messaging::amqp::topology::{ExchangeConfig, QueueConfig, TopologyConfig};
use chassis_messaging::message::OutgoingMessage;
use chassis_messaging::sql::inbox::{Inbox, idempotent};
use chassis_observability::logging::CaptureWriter;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

/// Messages per volume case: `SUITE_MESSAGES`, 2 000 unless set (the full run sets 10 000).
pub fn messages() -> u64 {
    std::env::var("SUITE_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(2_000)
}

/// The log of the whole test binary, captured (installed as the global subscriber on first
/// use), so a case can show what the chassis warned about on its connections and queues.
pub fn logs() -> &'static CaptureWriter {
    static LOGS: OnceLock<CaptureWriter> = OnceLock::new();
    LOGS.get_or_init(|| {
        let capture = CaptureWriter::new();
        let (dispatch, guard) = chassis_observability::Telemetry::builder(
            chassis_core::ServiceInfo::new("chassis-messaging-suite", "0.1.0"),
        )
        .ignore_env()
        .make_writer(capture.clone())
        .build()
        .expect("telemetry");
        let _ = tracing::dispatcher::set_global_default(dispatch);
        // The subscriber lives as long as the test binary.
        std::mem::forget(guard);
        capture
    })
}

/// What the chassis logged at warning level or above, and the acks it skipped, about names
/// containing `name` (a case's connections and queues), counted by message.
pub fn warnings_about(name: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in logs().lines().iter().filter(|l| l.contains(name)) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let body = v["body"].as_str().unwrap_or_default();
        let severe = matches!(v["severity_text"].as_str(), Some("WARN" | "ERROR"));
        if severe || body.contains("not acking") {
            *out.entry(body.to_owned()).or_default() += 1;
        }
    }
    out
}

/// Settings of a test connection: short operation timeout and quick reconnects.
pub fn connection_config(url: &str, name: &str) -> ConnectionConfig {
    ConnectionConfig::new(url, name)
        .operation_timeout(Duration::from_secs(5))
        .min_backoff(Duration::from_millis(50))
        .max_backoff(Duration::from_millis(500))
}

pub async fn connect_to(url: &str, name: &str) -> Connection {
    Connection::connect(connection_config(url, name))
        .await
        .expect("connect to RabbitMQ")
}

/// The message `seq` of `subject`, with a message id the inbox deduplicates on.
pub fn message(exchange: &str, case: &str, subject: &str, seq: u64) -> OutgoingMessage {
    OutgoingMessage::new(
        exchange,
        format!("suite.{subject}"),
        serde_json::to_vec(&serde_json::json!({ "subject": subject, "seq": seq })).unwrap(),
    )
    .content_type("application/json")
    .message_id(format!("{case}-{subject}-{seq}"))
}

/// `(subject, seq)` from a message body.
pub fn body_of(msg: &IncomingMessage) -> (String, i64) {
    let v: serde_json::Value = serde_json::from_slice(msg.body()).expect("json body");
    (
        v["subject"].as_str().unwrap_or_default().to_owned(),
        v["seq"].as_i64().unwrap_or(-1),
    )
}

/// How a case sets up one of its queues.
pub type Configure = Box<dyn FnOnce(QueueConfig) -> QueueConfig>;

/// One exchange and the queues bound to it (each with the dead-letter queue and retry tiers
/// the chassis declares for it), on a named connection; deleted by [`Topic::cleanup`].
pub struct Topic {
    pub conn: Connection,
    pub name: String,
    pub url: String,
    pub exchange: String,
    pub queues: Vec<QueueConfig>,
}

impl Topic {
    /// A topic named after `case` with one queue per `(suffix, configure)`, each bound with `#`.
    pub async fn new(url: &str, case: &str, queues: Vec<(&str, Configure)>) -> Self {
        logs();
        let name = format!("chassis-suite.{case}.{}", uuid::Uuid::new_v4().simple());
        let conn = connect_to(url, &name).await;
        let exchange = format!("{name}.ex");
        let queues: Vec<QueueConfig> = queues
            .into_iter()
            .map(|(suffix, f)| f(QueueConfig::new(format!("{name}.{suffix}")).bind(&exchange, "#")))
            .collect();
        conn.declare(topology(&exchange, &queues))
            .await
            .expect("declare topology");
        Self {
            conn,
            name,
            url: url.to_owned(),
            exchange,
            queues,
        }
    }

    pub fn queue(&self) -> &QueueConfig {
        &self.queues[0]
    }

    pub fn topology(&self) -> TopologyConfig {
        topology(&self.exchange, &self.queues)
    }

    /// Another named connection to the same broker, with the topology registered on it.
    pub async fn connection(&self, role: &str) -> Connection {
        let conn = connect_to(&self.url, &format!("{}.{role}", self.name)).await;
        conn.declare(self.topology())
            .await
            .expect("declare topology");
        conn
    }

    /// Messages ready in `queue` (a passive declare; unacked deliveries are not counted, so
    /// call it with no consumer running).
    pub async fn depth(&self, queue: &str) -> u32 {
        let ch = self.conn.create_channel().await.expect("channel");
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("the queue exists");
        let _ = ch.close(200, "depth".into()).await;
        q.message_count()
    }

    /// Depth of every queue of the topic, by name.
    pub async fn depths(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for q in &self.queues {
            for name in q.all_queues() {
                let d = self.depth(&name).await;
                out.push((name, d));
            }
        }
        out
    }

    /// Asserts that every queue of the topic is empty except those listed with their depth.
    pub async fn assert_depths(&self, expected: &[(&str, u32)]) {
        for (name, depth) in self.depths().await {
            let want = expected
                .iter()
                .find(|(q, _)| *q == name)
                .map_or(0, |(_, d)| *d);
            assert_eq!(depth, want, "messages left in {name}");
        }
    }

    /// Deletes every queue and exchange of the topic and closes its connection.
    pub async fn cleanup(self) {
        crate::support::delete_topology(self.conn, &self.exchange, &self.queues).await;
    }
}

pub fn topology(exchange: &str, queues: &[QueueConfig]) -> TopologyConfig {
    queues.iter().cloned().fold(
        TopologyConfig::new().exchange(ExchangeConfig::topic(exchange)),
        TopologyConfig::queue,
    )
}

/// The database a consuming service applies its effects to: a SQLite file in a temp dir with
/// the inbox table and an `effects` table deliberately without a unique key, so an effect
/// applied twice shows up as two rows.
pub struct Effects {
    _dir: tempfile::TempDir,
    pub pool: SqlitePool,
}

impl Effects {
    pub async fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("effects.db").display());
        let pool = chassis_messaging::sql::sqlite_pool(&url).expect("sqlite pool");
        Inbox::new(pool.clone(), "migrate")
            .migrate()
            .await
            .expect("inbox migrations");
        sqlx::query(
            "CREATE TABLE effects (id INTEGER PRIMARY KEY AUTOINCREMENT, consumer TEXT NOT NULL, \
             message_id TEXT NOT NULL, subject TEXT NOT NULL, seq INTEGER NOT NULL, worker TEXT NOT NULL)",
        )
        .execute(&pool)
        .await
        .expect("effects table");
        Self { _dir: dir, pool }
    }

    pub fn inbox(&self, consumer: &str) -> Inbox<sqlx::Sqlite> {
        Inbox::new(self.pool.clone(), consumer)
    }

    /// `(rows, distinct message ids)` applied by `consumer`.
    pub async fn applied(&self, consumer: &str) -> (u64, u64) {
        let (rows, distinct): (i64, i64) = sqlx::query_as(
            "SELECT count(*), count(DISTINCT message_id) FROM effects WHERE consumer = ?1",
        )
        .bind(consumer)
        .fetch_one(&self.pool)
        .await
        .expect("count effects");
        (rows as u64, distinct as u64)
    }

    /// The rows `select` (with `consumer` as its one parameter) returns.
    async fn rows_of<T>(&self, select: &'static str, consumer: &str) -> Vec<T>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow> + Send + Unpin,
    {
        sqlx::query_as(select)
            .bind(consumer)
            .fetch_all(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("{select}: {e}"))
    }

    pub async fn applied_ids(&self, consumer: &str) -> HashSet<String> {
        let select = "SELECT DISTINCT message_id FROM effects WHERE consumer = ?1";
        let ids: Vec<(String,)> = self.rows_of(select, consumer).await;
        ids.into_iter().map(|(id,)| id).collect()
    }

    /// `(worker, rows)` of `consumer`.
    pub async fn by_worker(&self, consumer: &str) -> HashMap<String, u64> {
        let select = "SELECT worker, count(*) FROM effects WHERE consumer = ?1 GROUP BY worker";
        let rows: Vec<(String, i64)> = self.rows_of(select, consumer).await;
        rows.into_iter().map(|(w, n)| (w, n as u64)).collect()
    }

    /// `(subject, seq)` of `consumer` in the order the effects were applied.
    pub async fn in_applied_order(&self, consumer: &str) -> Vec<(String, i64)> {
        let select = "SELECT subject, seq FROM effects WHERE consumer = ?1 ORDER BY id";
        self.rows_of(select, consumer).await
    }

    /// Waits until `consumer` applied `expected` distinct messages (or `within` elapsed);
    /// returns the distinct count reached.
    pub async fn wait_applied(&self, consumer: &str, expected: u64, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let (_, distinct) = self.applied(consumer).await;
            if distinct >= expected || Instant::now() >= deadline {
                return distinct;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// What consumers were handed, counted before the inbox decides: deliveries, broker
/// redeliveries (`redelivered` flag), retries (deliveries coming back from a retry tier) and
/// the attempts of each message id.
#[derive(Default)]
pub struct Tally {
    pub deliveries: AtomicU64,
    pub redelivered: AtomicU64,
    pub retried: AtomicU64,
    pub finished: AtomicU64,
    seen: Mutex<HashMap<String, Seen>>,
}

/// One message id's deliveries.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub deliveries: u32,
    pub redelivered: u32,
    pub attempts: Vec<u32>,
    /// `(worker, redelivered flag)` of each delivery, in order.
    pub by: Vec<(String, bool)>,
}

impl Tally {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    fn record(&self, msg: &IncomingMessage, worker: &str) {
        self.deliveries.fetch_add(1, Ordering::Relaxed);
        if msg.redelivered() {
            self.redelivered.fetch_add(1, Ordering::Relaxed);
        }
        if msg.attempt() > 1 {
            self.retried.fetch_add(1, Ordering::Relaxed);
        }
        let mut seen = self.seen.lock().unwrap();
        let s = seen
            .entry(msg.message_id().unwrap_or_default().to_owned())
            .or_default();
        s.deliveries += 1;
        s.redelivered += u32::from(msg.redelivered());
        s.attempts.push(msg.attempt());
        s.by.push((worker.to_owned(), msg.redelivered()));
    }

    pub fn unique(&self) -> u64 {
        self.seen.lock().unwrap().len() as u64
    }

    pub fn unique_ids(&self) -> HashSet<String> {
        self.seen.lock().unwrap().keys().cloned().collect()
    }

    pub fn seen(&self, id: &str) -> Option<Seen> {
        self.seen.lock().unwrap().get(id).cloned()
    }

    /// Ids delivered with the `redelivered` flag at least once.
    pub fn redelivered_ids(&self) -> HashSet<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|(_, s)| s.redelivered > 0)
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The message ids delivered more than once, with who got each delivery and whether the
    /// broker flagged it redelivered (at most `limit` of them, for a case's output).
    pub fn duplicates(&self, limit: usize) -> Vec<(String, Vec<(String, bool)>)> {
        let seen = self.seen.lock().unwrap();
        let mut out: Vec<_> = seen
            .iter()
            .filter(|(_, s)| s.deliveries > 1)
            .map(|(id, s)| (id.clone(), s.by.clone()))
            .collect();
        out.sort();
        out.truncate(limit);
        out
    }

    /// Deliveries beyond the first of each message id (broker redeliveries, republished
    /// duplicates and retries alike).
    pub fn duplicates_delivered(&self) -> u64 {
        self.deliveries.load(Ordering::Relaxed) - self.unique()
    }

    pub fn count(&self, which: &AtomicU64) -> u64 {
        which.load(Ordering::Relaxed)
    }
}

/// What a handler's business logic decides before it writes its effect: `None` writes it
/// (and acks), `Some(outcome)` rolls back and returns that outcome.
pub type Decide = Arc<dyn Fn(&IncomingMessage) -> Option<Outcome> + Send + Sync>;

pub fn always_apply() -> Decide {
    Arc::new(|_| None)
}

/// A consumer handler: counts the delivery in `tally`, then runs the business logic through
/// the inbox of `consumer` on `effects` (the effect row and the message id commit together;
/// a duplicate is acked without running it).
pub fn applying(
    effects: &Effects,
    consumer: &str,
    worker: &str,
    tally: Arc<Tally>,
    decide: Decide,
) -> Counting<impl Handler> {
    let consumer_name = consumer.to_owned();
    let worker_name = worker.to_owned();
    let worker = worker.to_owned();
    let inner = idempotent(effects.inbox(consumer), move |msg, tx| {
        let consumer = consumer_name.clone();
        let worker = worker.clone();
        let decided = decide(&msg);
        Box::pin(async move {
            if let Some(outcome) = decided {
                return outcome;
            }
            let (subject, seq) = body_of(&msg);
            let res = sqlx::query(
                "INSERT INTO effects (consumer, message_id, subject, seq, worker) VALUES (?1, ?2, ?3, ?4, ?5)",
            )
            .bind(consumer)
            .bind(msg.message_id().unwrap_or_default())
            .bind(subject)
            .bind(seq)
            .bind(worker)
            .execute(&mut **tx)
            .await;
            match res {
                Ok(_) => Outcome::Ack,
                Err(e) => Outcome::retry(format!("effect: {e}")),
            }
        })
    });
    Counting {
        tally,
        inner,
        worker: worker_name,
        gate: None,
    }
}

/// Like [`applying`], but each delivery waits for `gate` to be cancelled before it is handled:
/// a consumer that holds its deliveries without acking them.
pub fn holding(
    effects: &Effects,
    consumer: &str,
    worker: &str,
    tally: Arc<Tally>,
    gate: CancellationToken,
) -> Counting<impl Handler> {
    let mut h = applying(effects, consumer, worker, tally, always_apply());
    h.gate = Some(gate);
    h
}

pub struct Counting<H> {
    tally: Arc<Tally>,
    inner: H,
    worker: String,
    gate: Option<CancellationToken>,
}

impl<H: Handler> Handler for Counting<H> {
    fn handle(&self, msg: IncomingMessage) -> BoxFuture<'static, Outcome> {
        self.tally.record(&msg, &self.worker);
        let tally = self.tally.clone();
        let gate = self.gate.clone();
        let fut = self.inner.handle(msg);
        Box::pin(async move {
            if let Some(gate) = gate {
                gate.cancelled().await;
            }
            let outcome = fut.await;
            tally.finished.fetch_add(1, Ordering::Relaxed);
            outcome
        })
    }
}

/// Publishing figures.
#[derive(Default)]
pub struct Published {
    pub confirmed: AtomicU64,
    pub failed_attempts: AtomicU64,
}

/// Publishes `msgs` through the confirming `publisher`, `parallel` at a time; returns the ids
/// the broker confirmed. With `retry`, a publish that failed is sent again (same message id)
/// until it is confirmed, as an outbox relay does; without, a failure fails the test.
pub async fn publish_all(
    publisher: &Publisher,
    msgs: Vec<OutgoingMessage>,
    parallel: usize,
    retry: bool,
    stats: &Published,
) -> HashSet<String> {
    publish_paced(
        publisher,
        msgs,
        parallel,
        retry,
        stats,
        Duration::ZERO,
        None,
    )
    .await
}

/// Like [`publish_all`], one message started every `every` at most, so that a run lasts long
/// enough for faults to land in the middle of it. The pace picks up where it was after a
/// stall (no burst to catch up), as a steady stream of requests would. With `hold`, the
/// messages from index `hold.0` on wait until `hold.1` is cancelled: the run cannot end
/// before the faults planned for it were injected, however long they took.
pub async fn publish_paced(
    publisher: &Publisher,
    msgs: Vec<OutgoingMessage>,
    parallel: usize,
    retry: bool,
    stats: &Published,
    every: Duration,
    hold: Option<(usize, CancellationToken)>,
) -> HashSet<String> {
    let ticker = (!every.is_zero()).then(|| {
        let mut t = tokio::time::interval(every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::sync::Mutex::new(t)
    });
    let (ticker, hold) = (&ticker, &hold);
    futures_util::stream::iter(msgs.into_iter().enumerate())
        .map(|(i, msg)| async move {
            if let Some((from, released)) = hold
                && i >= *from
            {
                released.cancelled().await;
            }
            if let Some(t) = ticker {
                t.lock().await.tick().await;
            }
            let id = msg.message_id.clone().expect("message id");
            loop {
                match publisher.publish_message(msg.clone()).await {
                    Ok(()) => {
                        stats.confirmed.fetch_add(1, Ordering::Relaxed);
                        return id;
                    }
                    Err(e) => {
                        assert!(retry, "publish of {id} failed: {e}");
                        stats.failed_attempts.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await
}

/// Keeps the panics a case provokes on purpose (their message contains `marker`) out of the
/// output; every other panic is reported as usual.
pub fn silence_panics(marker: &'static str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let text = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            if !text.contains(marker) {
                previous(info);
            }
        }));
    });
}

/// One case's figures, printed as one line (`SUITE case=… messages=…`).
#[derive(Debug, Default)]
pub struct Summary {
    pub case: &'static str,
    pub messages: u64,
    pub faults: u64,
    pub publish_retries: u64,
    pub redeliveries: u64,
    pub retries: u64,
    pub duplicates_delivered: u64,
    pub applied: u64,
    pub duplicates_applied: u64,
    pub lost: u64,
    pub seconds: f64,
}

impl Summary {
    /// Prints the summary line, and below it what the chassis warned about on the case's
    /// connections and queues (names containing `name`).
    pub fn print_with_log(&self, name: &str) {
        self.print();
        for (body, n) in warnings_about(name) {
            println!("SUITE case={} log: {n} x {body}", self.case);
        }
    }

    pub fn print(&self) {
        println!(
            "SUITE case={} messages={} faults={} publish_retries={} redeliveries={} retries={} \
             duplicates_delivered={} applied={} duplicates_applied={} lost={} seconds={:.1}",
            self.case,
            self.messages,
            self.faults,
            self.publish_retries,
            self.redeliveries,
            self.retries,
            self.duplicates_delivered,
            self.applied,
            self.duplicates_applied,
            self.lost,
            self.seconds
        );
    }
}

/// The checks every case ends with, for the messages that should have been applied: each
/// confirmed id was consumed and applied exactly once (none lost, no effect twice). Fills in
/// `applied`, `duplicates_applied` and `lost`.
pub async fn assert_applied_once(
    summary: &mut Summary,
    effects: &Effects,
    consumer: &str,
    expected: &HashSet<String>,
) {
    let (rows, distinct) = effects.applied(consumer).await;
    let applied = effects.applied_ids(consumer).await;
    summary.applied = distinct;
    summary.duplicates_applied = rows - distinct;
    summary.lost = expected.difference(&applied).count() as u64;
    let unexpected = applied.difference(expected).count();
    assert_eq!(
        summary.lost, 0,
        "{}: confirmed but never applied",
        summary.case
    );
    assert_eq!(unexpected, 0, "{}: applied but not expected", summary.case);
    assert_eq!(
        summary.duplicates_applied, 0,
        "{}: effects applied twice",
        summary.case
    );
    assert_eq!(distinct, expected.len() as u64);
}
