//! Outbox relay against the local RabbitMQ, SQLite and PostgreSQL.
//!
//! 1. Throughput: N committed outbox rows drained by one relay (chassis `Publisher`, confirms;
//!    `Relay::run_until_idle`, the pipelined loop `Relay::run` uses)
//!    on SQLite and on PostgreSQL, beside raw lapin confirmed publishing (`RawMode::Concurrent`,
//!    the faster raw mode of the `messaging` bench) with a pipelined
//!    window of 1000 in the same run (same exchange, same durable queue, 256-byte bodies,
//!    persistent, mandatory), twice: bare messages (no property but persistence), and the same
//!    events the relay publishes (message id, content type, the subject header: the broker
//!    parses and stores them, which costs it 15-24 % of its rate here). Events carry 1000 distinct
//!    subjects (aggregates).
//!    A third relay run drains the same events from an in-memory store (no database: claims
//!    hand out prebuilt rows, records are dropped): the relay's own ceiling on this broker,
//!    which separates what the database costs from what ordered, confirmed publishing of
//!    these events costs.
//!    A round runs raw, in memory, SQLite, PostgreSQL; every other round the other way round,
//!    so the broker's drift over a run favours no side (use an even `OUTBOX_BENCH_ROUNDS`).
//! 2. Latency: a writer commits events at a steady rate (default 1000/s) while the relay runs;
//!    commit-to-confirm latency p50/p99 per database.
//!
//! Run: `cargo bench -p chassis-benches --bench outbox` (env: `AMQP_URL`, `DATABASE_URL`,
//! `OUTBOX_BENCH_N` rows per throughput run (default 20000), `OUTBOX_BENCH_RATE` events/s
//! (default 1000), `OUTBOX_BENCH_SECS` latency run length (default 10), `OUTBOX_BENCH_ROUNDS`
//! (default 2), `OUTBOX_BENCH_BATCH` relay batch size (default 500), `OUTBOX_BENCH_IN_FLIGHT`
//! batches in flight (default 4, the relay's default), `OUTBOX_BENCH_ONLY`
//! `raw`|`memory`|`sqlite`|`postgres` to run (and profile) that side's throughput runs only,
//! without the latency runs). Besides the rates it prints each side's CPU per message in this
//! process (`/proc/self/stat`: the relay's task, lapin's and sqlx's threads; not the PostgreSQL
//! server's): what the relay takes away from the broker on a shared machine, and steadier than
//! the rates. See benches/README.md "Outbox" for recorded figures.

use std::collections::{HashMap, HashSet, VecDeque};
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chassis_benches::process_cpu_secs;
use chassis_benches::raw_lapin::{self, RawMode};
use chassis_messaging::amqp::connection::{Connection, ConnectionConfig};
use chassis_messaging::amqp::publisher::{Publish, Publisher, PublisherConfig};
use chassis_messaging::amqp::topology::{
    ExchangeConfig, QueueConfig, QueueType, RetryPolicy, TopologyConfig,
};
use chassis_messaging::error::Error;
use chassis_messaging::message::OutgoingMessage;
use chassis_messaging::sql::outbox::{
    OutboxStats, OutboxStore, PendingRow, PgOutbox, Relay, RelayConfig, RowOutcome, SentPolicy,
    SqliteOutbox,
};
use futures_util::future::BoxFuture;
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions, QueuePurgeOptions};
use sqlx::ConnectOptions;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const WINDOW: usize = 1000;
const SUBJECTS: usize = 1000;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn event(exchange: &str, i: usize, body: &[u8]) -> OutgoingMessage {
    OutgoingMessage::new(exchange, "bench.event", body.to_vec())
        .content_type("application/json")
        .header("cloudEvents:subject", format!("agg-{}", i % SUBJECTS))
}

/// The runs of one round.
#[derive(Debug, Clone, Copy)]
enum Side {
    Raw,
    Memory,
    Sqlite,
    Postgres,
}

impl Side {
    /// Its name for `OUTBOX_BENCH_ONLY`.
    fn name(self) -> &'static str {
        match self {
            Side::Raw => "raw",
            Side::Memory => "memory",
            Side::Sqlite => "sqlite",
            Side::Postgres => "postgres",
        }
    }
}

/// Each round's (rate, CPU µs per message) of one side.
type Runs = Vec<(f64, f64)>;

/// The properties of the `i`-th message of a raw baseline run.
type Properties = fn(usize) -> lapin::BasicProperties;

/// The AMQP properties the relay publishes an [`event`] with (message id, content type, the
/// subject header), for the raw baseline that sends the same messages.
fn raw_event_properties(i: usize) -> lapin::BasicProperties {
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        "cloudEvents:subject".into(),
        lapin::types::AMQPValue::LongString(format!("agg-{}", i % SUBJECTS).as_bytes().into()),
    );
    lapin::BasicProperties::default()
        .with_message_id(uuid::Uuid::now_v7().to_string().as_str().into())
        .with_content_type("application/json".into())
        .with_headers(headers)
}

/// A store with no database behind it: claims hand out prebuilt rows in id order, records
/// are dropped. Draining it measures the relay and the publisher alone.
#[derive(Debug, Clone)]
struct InMemoryStore {
    rows: Arc<Mutex<VecDeque<PendingRow>>>,
    notify: Arc<Notify>,
}

impl InMemoryStore {
    /// The rows `prefill!` would write: the same events, with their message ids assigned.
    fn with_events(exchange: &str, n: usize, body: &[u8]) -> Self {
        let rows = (0..n)
            .map(|i| PendingRow {
                id: i as i64 + 1,
                subject: Some(format!("agg-{}", i % SUBJECTS)),
                message: Ok(event(exchange, i, body).message_id(uuid::Uuid::now_v7().to_string())),
                created_at_ms: 0,
                attempts: 0,
            })
            .collect();
        Self {
            rows: Arc::new(Mutex::new(rows)),
            notify: Arc::default(),
        }
    }
}

impl OutboxStore for InMemoryStore {
    type Claim = ();

    async fn claim(
        &self,
        limit: usize,
        _lease: Duration,
        _held: &HashSet<i64>,
    ) -> Result<((), Vec<PendingRow>), Error> {
        let mut rows = self.rows.lock().unwrap();
        let n = limit.min(rows.len());
        Ok(((), rows.drain(..n).collect()))
    }

    async fn finish(
        &self,
        _claim: (),
        _outcomes: Vec<(i64, RowOutcome)>,
        _sent: SentPolicy,
    ) -> Result<(), Error> {
        Ok(())
    }

    async fn stats(&self) -> Result<OutboxStats, Error> {
        Ok(OutboxStats::default())
    }

    async fn purge_sent(&self, _sent_before_ms: i64) -> Result<u64, Error> {
        Ok(0)
    }

    fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    async fn watch(&self, _notify: Arc<Notify>, _token: CancellationToken) {}
}

/// Drains `n` prefilled rows with one relay; returns rows/s and this process's CPU µs per row.
async fn relay_throughput<S: OutboxStore>(
    store: S,
    publisher: Arc<Publisher>,
    n: usize,
) -> (f64, f64) {
    let config = RelayConfig::default()
        .batch_size(env_usize("OUTBOX_BENCH_BATCH", 500))
        .batches_in_flight(env_usize("OUTBOX_BENCH_IN_FLIGHT", 4));
    let relay = Relay::new(store.clone(), publisher, config).unwrap();
    let cpu = process_cpu_secs();
    let start = Instant::now();
    let mut sent = 0;
    while sent < n {
        // What `Relay::run` does while rows are due: batches pipelined, up to
        // `batches_in_flight` at once.
        let report = relay.run_until_idle().await.expect("drain");
        assert!(
            report.transient_error.is_none(),
            "{:?}",
            report.transient_error
        );
        sent += report.sent;
    }
    (
        n as f64 / start.elapsed().as_secs_f64(),
        (process_cpu_secs() - cpu) * 1e6 / n as f64,
    )
}

/// Records when the broker confirmed each message id.
struct Timed {
    inner: Arc<Publisher>,
    confirmed: Mutex<HashMap<String, Instant>>,
}

impl Publish for Timed {
    fn publish(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let id = msg.message_id.clone().unwrap_or_default();
            self.inner.publish(msg).await?;
            self.confirmed.lock().unwrap().insert(id, Instant::now());
            Ok(())
        })
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

macro_rules! steady_writer {
    ($outbox:expr, $exchange:expr, $rate:expr, $secs:expr, $body:expr) => {{
        let total = $rate * $secs;
        let mut committed: Vec<(String, Instant)> = Vec::with_capacity(total);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let per_tick = ($rate / 100).max(1);
        let mut i = 0;
        while i < total {
            tick.tick().await;
            for _ in 0..per_tick {
                let mut tx = $outbox.pool().begin().await.unwrap();
                let id = $outbox
                    .enqueue(&mut tx, &event($exchange, i, $body))
                    .await
                    .unwrap();
                $outbox.commit(tx).await.unwrap();
                committed.push((id, Instant::now()));
                i += 1;
            }
        }
        committed
    }};
}

/// Runs a relay on `$outbox` as a service does while `steady_writer!` commits events, and
/// prints the commit-to-confirm percentiles.
macro_rules! steady_latency {
    ($name:expr, $outbox:expr, $publisher:expr, $exchange:expr, $rate:expr, $secs:expr, $body:expr) => {{
        let timed = Arc::new(Timed {
            inner: $publisher.clone(),
            confirmed: Mutex::new(HashMap::new()),
        });
        let token = CancellationToken::new();
        let relay = Relay::new($outbox.clone(), timed.clone(), RelayConfig::default())
            .unwrap()
            .spawn(token.clone());
        let committed = steady_writer!($outbox, $exchange, $rate, $secs, $body);
        let (p50, p99, got) = latencies(&timed, &committed).await;
        println!(
            "  {} p50 {p50:.2} ms, p99 {p99:.2} ms ({got}/{} confirmed)",
            $name,
            committed.len()
        );
        token.cancel();
        relay.await.unwrap();
    }};
}

async fn latencies(timed: &Timed, committed: &[(String, Instant)]) -> (f64, f64, usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = timed.confirmed.lock().unwrap().len();
        if done >= committed.len() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let confirmed = timed.confirmed.lock().unwrap();
    let mut ms: Vec<f64> = committed
        .iter()
        .filter_map(|(id, at)| {
            confirmed
                .get(id)
                .map(|c| c.saturating_duration_since(*at).as_secs_f64() * 1000.0)
        })
        .collect();
    ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (percentile(&ms, 0.5), percentile(&ms, 0.99), ms.len())
}

async fn pg_pool(url: &str, schema: &str) -> sqlx::PgPool {
    let options = sqlx::postgres::PgConnectOptions::from_str(url).expect("DATABASE_URL");
    let mut admin = options.connect().await.expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options.options([("search_path", schema)]))
        .await
        .unwrap()
}

async fn drop_schema(url: &str, schema: &str) {
    let options = sqlx::postgres::PgConnectOptions::from_str(url).expect("DATABASE_URL");
    let mut admin = options.connect().await.expect("connect to PostgreSQL");
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await;
}

async fn sqlite_outbox(dir: &tempfile::TempDir) -> SqliteOutbox {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("bench.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let outbox = SqliteOutbox::new(pool);
    outbox.migrate().await.unwrap();
    outbox
}

macro_rules! prefill {
    ($outbox:expr, $exchange:expr, $n:expr, $body:expr) => {{
        let mut i = 0;
        while i < $n {
            let mut tx = $outbox.pool().begin().await.unwrap();
            for _ in 0..1000.min($n - i) {
                $outbox
                    .enqueue(&mut tx, &event($exchange, i, $body))
                    .await
                    .unwrap();
                i += 1;
            }
            tx.commit().await.unwrap();
        }
    }};
}

#[tokio::main]
async fn main() {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let db_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let n = env_usize("OUTBOX_BENCH_N", 20_000);
    let rate = env_usize("OUTBOX_BENCH_RATE", 1000);
    let secs = env_usize("OUTBOX_BENCH_SECS", 10);
    let rounds = env_usize("OUTBOX_BENCH_ROUNDS", 2);
    let only = std::env::var("OUTBOX_BENCH_ONLY").ok();
    let runs_side = |side: &str| only.as_deref().is_none_or(|o| o == side);
    let body = vec![b'x'; 256];
    let conn = Connection::connect(ConnectionConfig::new(url.clone(), "bench-outbox"))
        .await
        .expect("connect");
    let publisher =
        Arc::new(Publisher::new(&conn, PublisherConfig::default().max_in_flight(WINDOW)).unwrap());
    let id = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("bench.{id}.ex");
    let queue = QueueConfig::new(format!("bench.{id}.q"))
        .queue_type(QueueType::Classic)
        .bind(exchange.clone(), "#")
        .retry(RetryPolicy::with_delays([Duration::from_secs(1)]));
    conn.declare(
        TopologyConfig::new()
            .exchange(ExchangeConfig::topic(exchange.clone()))
            .queue(queue.clone()),
    )
    .await
    .expect("declare");
    let admin = conn.create_channel().await.unwrap();
    let purge = || async {
        admin
            .queue_purge(queue.name.as_str().into(), QueuePurgeOptions::default())
            .await
            .unwrap();
    };
    println!(
        "rows per run: {n}, body: 256 B, persistent, mandatory, durable classic queue, window {WINDOW}, relay batch {} x {} in flight, {SUBJECTS} subjects, rounds: {rounds}",
        env_usize("OUTBOX_BENCH_BATCH", 500),
        env_usize("OUTBOX_BENCH_IN_FLIGHT", 4)
    );

    // Per side: (rate, CPU µs per message) of each round.
    let (mut raw, mut raw_events, mut memory, mut lite, mut pg): (Runs, Runs, Runs, Runs, Runs) =
        Default::default();
    let mut order = [Side::Raw, Side::Memory, Side::Sqlite, Side::Postgres];
    for round in 0..rounds {
        for side in order.into_iter().filter(|s| runs_side(s.name())) {
            match side {
                Side::Raw => {
                    // Bare messages, then the same events the relay publishes.
                    let runs: [(&mut Runs, Properties); 2] = [
                        (&mut raw, raw_lapin::bare),
                        (&mut raw_events, raw_event_properties),
                    ];
                    for (rates, properties) in runs {
                        let cpu = process_cpu_secs();
                        let rate = raw_lapin::publish(
                            &url,
                            &exchange,
                            "bench.event",
                            n,
                            WINDOW,
                            &body,
                            RawMode::Concurrent,
                            properties,
                        )
                        .await;
                        rates.push((rate, (process_cpu_secs() - cpu) * 1e6 / n as f64));
                        purge().await;
                    }
                }
                Side::Memory => {
                    let store = InMemoryStore::with_events(&exchange, n, &body);
                    memory.push(relay_throughput(store, publisher.clone(), n).await);
                    purge().await;
                }
                Side::Sqlite => {
                    let dir = tempfile::tempdir().unwrap();
                    let outbox = sqlite_outbox(&dir).await;
                    prefill!(outbox, &exchange, n, &body);
                    lite.push(relay_throughput(outbox, publisher.clone(), n).await);
                    purge().await;
                }
                Side::Postgres => {
                    let schema = format!("bench_outbox_{round}_{id}");
                    let pool = pg_pool(&db_url, &schema).await;
                    let outbox = PgOutbox::new(pool.clone());
                    outbox.migrate().await.unwrap();
                    prefill!(outbox, &exchange, n, &body);
                    pg.push(relay_throughput(outbox, publisher.clone(), n).await);
                    purge().await;
                    pool.close().await;
                    drop_schema(&db_url, &schema).await;
                }
            }
        }
        // Every other round runs the sides in the opposite order, so the broker's drift
        // during a run (its rate moves by 10-20 % between runs here) favours none of them.
        order.reverse();
    }
    let mean = |v: &Runs, f: fn(&(f64, f64)) -> f64| v.iter().map(f).sum::<f64>() / v.len() as f64;
    let rate_of = |v: &Runs| mean(v, |r| r.0);
    let cpu_of = |v: &Runs| mean(v, |r| r.1);
    let rates = |v: &Runs| v.iter().map(|r| r.0.round()).collect::<Vec<_>>();
    let (r, re) = (rate_of(&raw), rate_of(&raw_events));
    for (name, v) in [("bare messages:", &raw), ("the same events:", &raw_events)] {
        println!(
            "raw lapin confirmed publish, {name} {:.0} msg/s {:?}, {:.1} µs CPU/msg",
            rate_of(v),
            rates(v),
            cpu_of(v)
        );
    }
    for (name, v) in [
        ("in memory: ", &memory),
        ("SQLite:    ", &lite),
        ("PostgreSQL:", &pg),
    ] {
        println!(
            "relay {name} {:.0} rows/s {:?} = {:.1}% of raw bare, {:.1}% of raw same events; {:.1} µs CPU/row",
            rate_of(v),
            rates(v),
            100.0 * rate_of(v) / r,
            100.0 * rate_of(v) / re,
            cpu_of(v)
        );
    }

    // Latency at a steady rate, relay running as in a service.
    if only.is_none() {
        println!("steady {rate} events/s for {secs} s, commit-to-confirm latency:");
        {
            let dir = tempfile::tempdir().unwrap();
            let outbox = sqlite_outbox(&dir).await;
            steady_latency!(
                "SQLite:    ",
                outbox,
                publisher,
                &exchange,
                rate,
                secs,
                &body
            );
            purge().await;
        }
        {
            let schema = format!("bench_outbox_lat_{id}");
            let pool = pg_pool(&db_url, &schema).await;
            let outbox = PgOutbox::new(pool.clone());
            outbox.migrate().await.unwrap();
            steady_latency!(
                "PostgreSQL:",
                outbox,
                publisher,
                &exchange,
                rate,
                secs,
                &body
            );
            purge().await;
            pool.close().await;
            drop_schema(&db_url, &schema).await;
        }
    }

    for q in queue.all_queues() {
        let _ = admin
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = admin
        .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    let _ = admin
        .exchange_delete(
            queue.dead_letter_exchange().as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await;
    conn.close().await;
}
