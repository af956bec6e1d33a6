//! The transactional outbox under database and process faults, against the real RabbitMQ.
//!
//! Each case commits outbox rows, breaks something while they are relayed, and then checks the
//! outbox's promise end to end, through a real consumer that applies every message through an
//! [`Inbox`] (on a SQLite file of its own) and records one effect row per application:
//!
//! - every committed row was published at least once, and none was lost;
//! - each message was applied exactly once (duplicates delivered are counted and reported);
//! - no row is left unsent at the end (all `sent`, none pending or parked).
//!
//! The cases:
//!
//! - `postgres_restarted_during_drain` (feature `postgres`): 10 000 rows on a PostgreSQL
//!   cluster of the test's own ([`PgCluster`]); while the relay drains them the server is
//!   restarted (`fast` shutdown) at a third of the rows and crashed (SIGKILL to the postmaster,
//!   then crash recovery) at two thirds. The relay must recover by itself.
//! - `sqlite_writer_killed_mid_transaction`: a child process writes business rows and their
//!   outbox rows in transactions in a loop and is SIGKILLed at random points, several times,
//!   while a relay in this process drains the same SQLite file. Exactly the committed
//!   transactions' rows are published (the published message ids are exactly the ones of the
//!   business rows that exist), and `PRAGMA integrity_check` says `ok`.
//! - `relay_killed_9_in_a_loop`: 2 000 rows on SQLite; a child process runs the relay and is
//!   SIGKILLed at random points of the drain 20 times, restarted each time; finally a relay
//!   in this process drains the rest.
//!
//! Child processes are this test binary itself, started with `--exact <child test> --ignored`
//! and the environment variable `OUTBOX_FAULTS_CHILD`; the child tests do nothing without it.
//! A child exits when its parent goes away (its stdin closes), and is killed when the parent's
//! guard drops, so a failing case leaves nothing running; the PostgreSQL cluster is stopped and
//! removed when its handle drops.
//!
//! Each case prints one summary line (rows, faults injected, duplicates delivered, duplicates
//! applied, lost, seconds). Sizes can be scaled by environment variables:
//!
//! - `FAULT_ROWS`: rows of the PostgreSQL case (default 10 000); the relay-kill case uses a
//!   fifth of it (default 2 000);
//! - `FAULT_KILLS`: kills of the relay-kill case (default 20);
//! - `FAULT_WRITER_KILLS`: kills of the writer case (default 8);
//! - `FAULT_SEED`: the seed of the random kill points (printed in each summary line).
//!
//! For example, a longer run:
//! `FAULT_ROWS=50000 FAULT_KILLS=60 FAULT_WRITER_KILLS=30 cargo test -p chassis-messaging
//! --all-features --test outbox_faults`.
//!
//! Measured on 2026-12-06 on a 2-core machine busy with other builds (debug build, the three
//! cases running at once; noisy figures): the defaults take about 35 s (PostgreSQL 20-33 s,
//! relay kills about 21 s, writer kills about 4 s); the longer run above about 190 s.

mod outbox_support;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Command, Stdio};
#[cfg(feature = "postgres")]
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use chassis_messaging::amqp::connection::{Connection, ConnectionConfig};
use chassis_messaging::amqp::consumer::{Consumer, ConsumerConfig, Handler as _, Outcome};
use chassis_messaging::amqp::incoming::IncomingMessage;
#[cfg(feature = "postgres")]
use chassis_messaging::amqp::publisher::{Publish, Routing};
use chassis_messaging::amqp::publisher::{Publisher, PublisherConfig};
#[cfg(feature = "postgres")]
use chassis_messaging::error::Error;
use chassis_messaging::message::OutgoingMessage;
use chassis_messaging::sql::inbox::idempotent;
use chassis_messaging::sql::outbox::{OutboxStore, Relay, RelayConfig, SqliteOutbox};
use chassis_messaging::sql::sqlite_pool;
use chassis_testkit::ChildGuard;
#[cfg(feature = "postgres")]
use futures_util::future::BoxFuture;
use outbox_support::{Broker, amqp_url, strings};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

/// Set (to the child test's name) in a child process's environment.
const CHILD_ENV: &str = "OUTBOX_FAULTS_CHILD";
/// What a child's lines to its parent start with (the test harness prints its own lines too).
const CHILD_SAYS: &str = "outbox-faults-child: ";
/// Outbox rows each business transaction of the writer child commits.
const EVENTS_PER_ORDER: usize = 3;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The seed of this run's random kill points: `FAULT_SEED`, or drawn (and printed).
fn seed() -> u64 {
    std::env::var("FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| rand::rng().random())
}

fn sqlite_url(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

/// The event the writers commit: routed to the test's queue (`event.#`), with its own message
/// id and an ordering subject (`None`: no ordering constraint).
fn event(exchange: &str, message_id: &str, subject: Option<&str>) -> OutgoingMessage {
    let body = serde_json::json!({ "subject": subject, "id": message_id });
    let msg = OutgoingMessage::new(
        exchange,
        "event.happened",
        serde_json::to_vec(&body).unwrap(),
    )
    .content_type("application/json")
    .message_id(message_id);
    match subject {
        Some(subject) => msg.header("cloudEvents:subject", subject),
        None => msg,
    }
}

// ---------------------------------------------------------------------------------------------
// The consumer side: a real consumer applying each message through an inbox.

/// A consumer on the test's queue that applies every message through an [`Inbox`] on a SQLite
/// file of its own: the effect is one row in `effects` (no unique key, so applying a message
/// twice would show as two rows). Deliveries are counted per message id before the inbox.
struct Applier {
    _dir: tempfile::TempDir,
    pool: SqlitePool,
    deliveries: Arc<Mutex<HashMap<String, u32>>>,
    consumer: Consumer,
}

impl Applier {
    async fn start(broker: &Broker) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pool = sqlite_pool(&sqlite_url(&dir.path().join("inbox.db"))).unwrap();
        let inbox = outbox_support::effects_inbox(pool.clone(), "outbox-faults").await;
        let apply = Arc::new(idempotent(inbox, |msg: IncomingMessage, tx| {
            Box::pin(async move {
                let applied = sqlx::query("INSERT INTO effects (message_id) VALUES (?1)")
                    .bind(msg.message_id())
                    .execute(&mut **tx)
                    .await;
                match applied {
                    Ok(_) => Outcome::Ack,
                    Err(e) => Outcome::retry(e.to_string()),
                }
            })
        }));
        let deliveries = Arc::new(Mutex::new(HashMap::new()));
        let handler = {
            let deliveries = deliveries.clone();
            move |msg: IncomingMessage| {
                let apply = apply.clone();
                if let Some(id) = msg.message_id() {
                    *deliveries
                        .lock()
                        .unwrap()
                        .entry(id.to_owned())
                        .or_insert(0u32) += 1;
                }
                async move { apply.handle(msg).await }
            }
        };
        let consumer = Consumer::start(
            &broker.conn,
            broker.queue.clone(),
            ConsumerConfig::default().concurrency(4),
            handler,
        )
        .await
        .expect("consumer starts");
        Self {
            _dir: dir,
            pool,
            deliveries,
            consumer,
        }
    }

    /// Effect rows per message id.
    async fn applied(&self) -> HashMap<String, i64> {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT message_id, count(*) FROM effects GROUP BY message_id",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
    }

    async fn applied_distinct(&self) -> usize {
        let n: i64 = sqlx::query_scalar("SELECT count(DISTINCT message_id) FROM effects")
            .fetch_one(&self.pool)
            .await
            .unwrap();
        usize::try_from(n).unwrap()
    }

    /// Waits until `n` distinct messages were applied (or `within` elapsed); whether they were.
    async fn wait_applied(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.applied_distinct().await >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deliveries beyond the first of each message.
    fn duplicates_delivered(&self) -> u64 {
        self.deliveries
            .lock()
            .unwrap()
            .values()
            .map(|n| u64::from(n.saturating_sub(1)))
            .sum()
    }

    async fn stop(self) {
        self.consumer.shutdown().await;
        self.pool.close().await;
    }
}

/// What a case found, compared with the message ids it committed.
#[derive(Debug)]
struct Tally {
    rows: usize,
    faults: usize,
    duplicates_delivered: u64,
    /// Messages applied more than once.
    duplicates_applied: usize,
    /// Committed messages never applied.
    lost: usize,
    /// Applied messages nobody committed.
    unexpected: Vec<String>,
    seconds: f64,
}

impl Tally {
    async fn of(
        expected: &HashSet<String>,
        applier: &Applier,
        faults: usize,
        started: Instant,
    ) -> Self {
        let applied = applier.applied().await;
        let mut unexpected: Vec<String> = applied
            .keys()
            .filter(|id| !expected.contains(*id))
            .cloned()
            .collect();
        unexpected.sort();
        Self {
            rows: expected.len(),
            faults,
            duplicates_delivered: applier.duplicates_delivered(),
            duplicates_applied: applied.values().filter(|n| **n > 1).count(),
            lost: expected
                .iter()
                .filter(|id| !applied.contains_key(*id))
                .count(),
            unexpected,
            seconds: started.elapsed().as_secs_f64(),
        }
    }

    /// Prints the case's summary line, then asserts the outbox's promise.
    fn report_and_check(&self, case: &str, seed: Option<u64>, extra: &str) {
        println!(
            "outbox_faults {case}: rows={} faults={} duplicates_delivered={} \
             duplicates_applied={} lost={} unexpected={} seconds={:.1}{}{extra}",
            self.rows,
            self.faults,
            self.duplicates_delivered,
            self.duplicates_applied,
            self.lost,
            self.unexpected.len(),
            self.seconds,
            seed.map(|s| format!(" seed={s}")).unwrap_or_default(),
        );
        assert_eq!(self.lost, 0, "{case}: committed rows never applied");
        assert_eq!(self.duplicates_applied, 0, "{case}: applied twice");
        assert!(
            self.unexpected.is_empty(),
            "{case}: applied but never committed: {:?}",
            &self.unexpected[..self.unexpected.len().min(10)]
        );
    }
}

/// The real publisher, counting confirmed publishes (to inject faults at a point of the drain).
#[cfg(feature = "postgres")]
struct Counting {
    inner: Arc<Publisher>,
    confirmed: AtomicUsize,
}

#[cfg(feature = "postgres")]
impl Publish for Counting {
    fn publish(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move { self.publish_routed(msg).await.map(|_| ()) })
    }

    fn publish_routed(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<Routing, Error>> {
        Box::pin(async move {
            let routed = self.inner.publish_routed(msg).await?;
            self.confirmed.fetch_add(1, Ordering::SeqCst);
            Ok(routed)
        })
    }
}

/// Outbox rows by status.
/// The outbox holds `rows` rows, every one `sent` (none pending or parked).
fn assert_all_sent(status: &HashMap<String, i64>, rows: usize) {
    let expected = HashMap::from([("sent".to_owned(), i64::try_from(rows).unwrap())]);
    assert_eq!(*status, expected, "every row sent, none pending or parked");
}

/// A migrated SQLite outbox in file `name` of a new temp dir: the dir, the file, its pool and
/// the outbox.
async fn outbox_file(
    name: &str,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    SqlitePool,
    SqliteOutbox,
) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(name);
    let pool = sqlite_pool(&sqlite_url(&db)).unwrap();
    let outbox = SqliteOutbox::new(pool.clone());
    outbox.migrate().await.unwrap();
    (dir, db, pool, outbox)
}

async fn teardown(applier: Applier, broker: Broker, pool: SqlitePool) {
    applier.stop().await;
    broker.cleanup().await;
    pool.close().await;
}

/// Runs `body` on a runtime of its own if this process is the child `name`; else nothing.
fn run_child(name: &str, body: impl std::future::Future<Output = ()>) {
    if let Some(rt) = child_runtime(name) {
        rt.block_on(body);
    }
}

async fn statuses(pool: &SqlitePool) -> HashMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>("SELECT status, count(*) FROM chassis_outbox GROUP BY 1")
        .fetch_all(pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Child processes.

/// A child process: this test binary running one child test, killed (SIGKILL) when dropped.
struct Child {
    guard: ChildGuard,
    lines: mpsc::Receiver<String>,
}

impl Child {
    /// Starts the child test `name` with `envs`.
    fn spawn(name: &str, envs: &[(&str, String)]) -> Self {
        let mut child = Command::new(std::env::current_exe().expect("the test binary"))
            .args([
                "--exact",
                name,
                "--nocapture",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, name)
            .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the test binary starts again as a child");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                // The harness's `test <name> ... ` has no line end of its own: it may come
                // first on the child's first line.
                if let Some((_, said)) = line.split_once(CHILD_SAYS)
                    && tx.send(said.to_owned()).is_err()
                {
                    break;
                }
            }
        });
        Self {
            guard: ChildGuard::new(child),
            lines,
        }
    }

    /// Waits for the child's next line (`None` if it exited or `within` elapsed).
    async fn next_line(&self, within: Duration) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            match self.lines.try_recv() {
                Ok(line) => return Some(line),
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) if Instant::now() >= deadline => return None,
                Err(mpsc::TryRecvError::Empty) => {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        }
    }

    /// SIGKILLs the child and returns the lines it printed that were not read yet.
    fn kill(mut self) -> Vec<String> {
        self.guard.kill();
        // The reader thread ends at the pipe's end of file, closing the channel.
        self.lines.iter().collect()
    }
}

/// The child side: `Some(runtime)` when this process was started as the child `name`.
fn child_runtime(name: &str) -> Option<tokio::runtime::Runtime> {
    if std::env::var(CHILD_ENV).ok().as_deref() != Some(name) {
        return None;
    }
    // Exit when the parent goes away (its end of our stdin closes), whatever it was doing.
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    // And never outlive a stuck parent by long.
    std::thread::spawn(|| {
        std::thread::sleep(Duration::from_secs(300));
        std::process::exit(3);
    });
    Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    )
}

fn say(line: &str) {
    println!("{CHILD_SAYS}{line}");
}

fn child_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child without {name}"))
}

// ---------------------------------------------------------------------------------------------
// Case 1: PostgreSQL restarted and crashed while the relay drains.

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_during_drain() {
    use chassis_messaging::sql::outbox::PgOutbox;
    use chassis_testkit::PgCluster;

    let rows = env_usize("FAULT_ROWS", 10_000);
    let started = Instant::now();
    let pg = Arc::new(
        tokio::task::spawn_blocking(|| PgCluster::start_new("outbox-faults"))
            .await
            .unwrap(),
    );
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(10)
        .connect(&pg.url())
        .await
        .expect("connect to the test's cluster");
    let outbox = PgOutbox::new(pool.clone());
    outbox.migrate().await.unwrap();
    let broker = Broker::new("faults-pg").await;
    let applier = Applier::start(&broker).await;

    // Four writers commit the rows, 100 per transaction: 200 subjects, every tenth row
    // without one.
    let mut writers = Vec::new();
    for w in 0..4 {
        let (outbox, exchange) = (outbox.clone(), broker.exchange.clone());
        writers.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for chunk in (0..rows)
                .filter(|i| i % 4 == w)
                .collect::<Vec<_>>()
                .chunks(100)
            {
                let mut tx = outbox.pool().begin().await.unwrap();
                for &i in chunk {
                    let id = format!("pg-{i}");
                    let subject = (i % 10 != 0).then(|| format!("agg-{}", i % 200));
                    let msg = event(&exchange, &id, subject.as_deref());
                    outbox.enqueue(&mut tx, &msg).await.unwrap();
                    ids.push(id);
                }
                tx.commit().await.unwrap();
            }
            ids
        }));
    }
    let mut expected = HashSet::new();
    for w in writers {
        expected.extend(w.await.unwrap());
    }
    assert_eq!(expected.len(), rows);
    let committed_in = started.elapsed();

    let publisher = Arc::new(Counting {
        inner: broker.publisher.clone(),
        confirmed: AtomicUsize::new(0),
    });
    let token = CancellationToken::new();
    let relay = Relay::new(
        outbox.clone(),
        publisher.clone(),
        // A minute: a backlog is drained batch after batch without polling, and the rows
        // committed after the last fault must be found through LISTEN/NOTIFY, which has to
        // come back by itself after every restart.
        RelayConfig::default().poll_interval(Duration::from_secs(60)),
    )
    .unwrap()
    .spawn(token.clone());

    // The faults, each once the relay confirmed a share of the rows.
    let mut faults = Vec::new();
    for (share, crash) in [(1, false), (2, true)] {
        let at = rows * share / 3;
        let deadline = Instant::now() + Duration::from_secs(120);
        while publisher.confirmed.load(Ordering::SeqCst) < at {
            assert!(
                Instant::now() < deadline,
                "the relay confirmed {} of {rows} rows in 120 s",
                publisher.confirmed.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let before = publisher.confirmed.load(Ordering::SeqCst);
        let down = Instant::now();
        let cluster = pg.clone();
        tokio::task::spawn_blocking(move || {
            if crash {
                cluster.kill();
                cluster.start();
            } else {
                cluster.restart();
            }
        })
        .await
        .unwrap();
        let after = publisher.confirmed.load(Ordering::SeqCst);
        faults.push(format!(
            "{} at {before} confirmed ({:.1} s down, {after} confirmed when back)",
            if crash { "crash" } else { "restart" },
            down.elapsed().as_secs_f64()
        ));
        assert!(
            before < rows,
            "the drain was over before the {} (raise FAULT_ROWS)",
            if crash { "crash" } else { "restart" }
        );
    }

    // The relay recovers by itself: everything is applied and nothing stays pending.
    let all_applied = applier.wait_applied(rows, Duration::from_secs(180)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut drained = outbox.stats().await;
    while !matches!(&drained, Ok(s) if s.pending == 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drained = outbox.stats().await;
    }
    let drained_in = started.elapsed();

    // A third fault while the relay idles on LISTEN: a restart, then a commit. The relay must
    // find the new rows without its minute-long poll: its listener has to reconnect and
    // LISTEN again by itself (it also wakes the relay once when it does).
    let late = 100;
    let cluster = pg.clone();
    tokio::task::spawn_blocking(move || cluster.restart())
        .await
        .unwrap();
    faults.push("restart while idle".to_owned());
    let committed_late = Instant::now();
    let mut tx = outbox.pool().begin().await.unwrap();
    for i in 0..late {
        let id = format!("pg-late-{i}");
        let msg = event(&broker.exchange, &id, Some("late"));
        outbox.enqueue(&mut tx, &msg).await.unwrap();
        expected.insert(id);
    }
    tx.commit().await.unwrap();
    let late_applied = applier
        .wait_applied(rows + late, Duration::from_secs(20))
        .await;
    let late_seconds = committed_late.elapsed().as_secs_f64();
    let stats = outbox.stats().await;

    token.cancel();
    tokio::time::timeout(Duration::from_secs(30), relay)
        .await
        .expect("the relay stops when cancelled")
        .unwrap();
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM chassis_outbox WHERE status = 'sent'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let tally = Tally::of(&expected, &applier, faults.len(), started).await;
    tally.report_and_check(
        "postgres_restarted_during_drain",
        None,
        &format!(
            " committed_in={:.1}s drained_at={:.1}s late_rows_applied_in={late_seconds:.1}s confirmed={} \
             faults=[{}]",
            committed_in.as_secs_f64(),
            drained_in.as_secs_f64(),
            publisher.confirmed.load(Ordering::SeqCst),
            faults.join("; ")
        ),
    );
    assert!(all_applied, "every row applied");
    assert!(
        matches!(&drained, Ok(s) if s.pending == 0),
        "the relay drained the backlog after the faults: {drained:?}"
    );
    assert!(
        late_applied,
        "rows committed after a restart of the idle relay's database arrive within 20 s \
         (its poll interval is a minute)"
    );
    let stats = stats.expect("the outbox answers after the faults");
    assert_eq!((stats.pending, stats.parked), (0, 0), "nothing left unsent");
    assert_eq!(
        sent,
        i64::try_from(rows + late).unwrap(),
        "every row marked sent"
    );

    applier.stop().await;
    broker.cleanup().await;
    pool.close().await;
    drop(pg);
}

// ---------------------------------------------------------------------------------------------
// Case 2: the SQLite writer killed in the middle of its transactions.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_writer_killed_mid_transaction() {
    let kills = env_usize("FAULT_WRITER_KILLS", 8);
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let (_dir, db, pool, outbox) = outbox_file("orders.db").await;
    sqlx::query("CREATE TABLE orders (id TEXT PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let broker = Broker::new("faults-writer").await;
    let applier = Applier::start(&broker).await;
    // The relay drains while the writer works and dies: the writer's process holds SQLite's
    // write lock at times, and its death must not wedge the relay either.
    let token = CancellationToken::new();
    let relay = Relay::new(
        outbox.clone(),
        broker.publisher.clone(),
        RelayConfig::default().poll_interval(Duration::from_millis(50)),
    )
    .unwrap()
    .spawn(token.clone());

    let mut torn = 0;
    let mut committed_seen = 0;
    for run in 0..kills {
        let child = Child::spawn(
            "child_sqlite_writer",
            &[
                ("FAULT_DB", sqlite_url(&db)),
                ("FAULT_RUN", run.to_string()),
                ("FAULT_EXCHANGE", broker.exchange.clone()),
                ("FAULT_SEED", rng.random::<u64>().to_string()),
            ],
        );
        assert_eq!(
            child.next_line(Duration::from_secs(30)).await.as_deref(),
            Some("ready"),
            "the writer child starts"
        );
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..400))).await;
        let lines = child.kill();
        committed_seen += lines.iter().filter(|l| l.starts_with("commit ")).count();
        // Killed between "begin" and "commit": that transaction must have left nothing.
        if let Some(order) = lines.last().and_then(|l| l.strip_prefix("begin ")) {
            let found: i64 = sqlx::query_scalar("SELECT count(*) FROM orders WHERE id = ?1")
                .bind(order)
                .fetch_one(&pool)
                .await
                .unwrap();
            let outbox_rows: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM chassis_outbox WHERE message_id LIKE ?1 || '-e%'",
            )
            .bind(order)
            .fetch_one(&pool)
            .await
            .unwrap();
            if found == 0 {
                torn += 1;
                assert_eq!(
                    outbox_rows, 0,
                    "{order}: rolled back, yet outbox rows remain"
                );
            } else {
                // Killed after the commit, before it said so.
                assert_eq!(outbox_rows, EVENTS_PER_ORDER as i64);
            }
        }
    }

    // What committed: the business rows, and the outbox rows they must have produced.
    let orders: Vec<String> = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_all(&pool)
        .await
        .unwrap();
    let expected: HashSet<String> = orders
        .iter()
        .flat_map(|o| (0..EVENTS_PER_ORDER).map(move |k| format!("{o}-e{k}")))
        .collect();
    let in_outbox: HashSet<String> = strings(&pool, "SELECT message_id FROM chassis_outbox").await;
    let integrity: String = sqlx::query_scalar("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .unwrap();

    let all_applied = applier
        .wait_applied(expected.len(), Duration::from_secs(120))
        .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while statuses(&pool).await.get("pending").copied().unwrap_or(0) > 0
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A duplicate that is still on its way would be counted late: give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel();
    relay.await.unwrap();
    let status = statuses(&pool).await;
    let tally = Tally::of(&expected, &applier, kills, started).await;
    tally.report_and_check(
        "sqlite_writer_killed_mid_transaction",
        Some(seed),
        &format!(
            " business_rows={} killed_mid_transaction={torn} commits_reported={committed_seen} \
             integrity={integrity}",
            orders.len()
        ),
    );
    assert_eq!(integrity, "ok", "PRAGMA integrity_check");
    assert_eq!(
        in_outbox, expected,
        "the outbox holds exactly the committed transactions' rows"
    );
    assert!(!orders.is_empty(), "the writer committed something");
    assert!(
        torn > 0,
        "at least one kill landed inside a transaction (else nothing was proven)"
    );
    assert!(all_applied, "every committed row applied");
    assert_all_sent(&status, expected.len());
    teardown(applier, broker, pool).await;
}

/// The writer child: business rows and their outbox rows in one transaction each, until it is
/// killed. Says `begin <order>` once its transaction holds the write lock and `commit <order>`
/// once the commit returned.
#[test]
#[ignore = "a child process of sqlite_writer_killed_mid_transaction; does nothing on its own"]
fn child_sqlite_writer() {
    run_child("child_sqlite_writer", async {
        let pool = sqlite_pool(&child_env("FAULT_DB")).unwrap();
        let outbox = SqliteOutbox::new(pool.clone());
        let run = child_env("FAULT_RUN");
        let exchange = child_env("FAULT_EXCHANGE");
        let mut rng = StdRng::seed_from_u64(child_env("FAULT_SEED").parse().unwrap());
        // Warm the pool up, so the parent's clock starts with transactions, not with opening.
        sqlx::query("SELECT 1").execute(&pool).await.unwrap();
        say("ready");
        for n in 0u64.. {
            let order = format!("w{run}-o{n}");
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
            say(&format!("begin {order}"));
            sqlx::query("INSERT INTO orders (id) VALUES (?1)")
                .bind(&order)
                .execute(&mut *tx)
                .await
                .unwrap();
            for k in 0..EVENTS_PER_ORDER {
                // Some work between the writes: most of the time is spent inside the
                // transaction, so most kills land there.
                tokio::time::sleep(Duration::from_micros(rng.random_range(0..1500))).await;
                let subject = (k != 1).then(|| format!("order-{}", n % 16));
                let msg = event(&exchange, &format!("{order}-e{k}"), subject.as_deref());
                outbox.enqueue(&mut tx, &msg).await.unwrap();
            }
            outbox.commit(tx).await.unwrap();
            say(&format!("commit {order}"));
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Case 3: the relay killed -9 in a loop.

/// The relay of the kill loop (child and final drain): short leases, so rows a killed relay
/// had reserved are taken over quickly, and short backoffs.
fn loop_relay_config() -> RelayConfig {
    RelayConfig::default()
        .batch_size(50)
        .publish_timeout(Duration::from_millis(800))
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(50))
        .backoff_initial(Duration::from_millis(50))
        .backoff_max(Duration::from_secs(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_9_in_a_loop() {
    let rows = env_usize("FAULT_ROWS", 10_000) / 5;
    let kills = env_usize("FAULT_KILLS", 20);
    let seed = seed();
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let (_dir, db, pool, outbox) = outbox_file("outbox.db").await;
    let broker = Broker::new("faults-relay").await;
    let applier = Applier::start(&broker).await;

    let mut expected = HashSet::new();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(200) {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        for &i in chunk {
            let id = format!("relay-{i}");
            let subject = (i % 10 != 0).then(|| format!("agg-{}", i % 50));
            outbox
                .enqueue(&mut tx, &event(&broker.exchange, &id, subject.as_deref()))
                .await
                .unwrap();
            expected.insert(id);
        }
        tx.commit().await.unwrap();
    }

    let sent = |pool: SqlitePool| async move {
        statuses(&pool).await.get("sent").copied().unwrap_or(0) as usize
    };
    let mut killed_at = Vec::new();
    for _ in 0..kills {
        let child = Child::spawn(
            "child_relay",
            &[
                ("FAULT_DB", sqlite_url(&db)),
                ("FAULT_AMQP_URL", amqp_url()),
            ],
        );
        assert_eq!(
            child.next_line(Duration::from_secs(30)).await.as_deref(),
            Some("ready"),
            "the relay child starts"
        );
        // A random point of the drain: after it recorded a random number of rows (up to an
        // even share, so about half the rows go before the last kill; zero kills it while it
        // starts up or reclaims the rows its predecessor leased), plus up to 20 ms.
        let from = sent(pool.clone()).await;
        let more = rng.random_range(0..=(rows / kills.max(1)).max(1));
        let deadline = Instant::now() + Duration::from_secs(10);
        while sent(pool.clone()).await < (from + more).min(rows) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..20))).await;
        child.kill();
        killed_at.push(sent(pool.clone()).await);
    }
    let sent_by_children = sent(pool.clone()).await;

    // A last relay, here, drains the rest (once the dead relays' leases ran out).
    let token = CancellationToken::new();
    let relay = Relay::new(
        outbox.clone(),
        broker.publisher.clone(),
        loop_relay_config(),
    )
    .unwrap()
    .spawn(token.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    while sent(pool.clone()).await < rows && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_applied = applier.wait_applied(rows, Duration::from_secs(60)).await;
    // Duplicates still on their way would be counted late: give them a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    token.cancel();
    relay.await.unwrap();
    let status = statuses(&pool).await;
    let stats = outbox.stats().await.unwrap();
    let tally = Tally::of(&expected, &applier, kills, started).await;
    tally.report_and_check(
        "relay_killed_9_in_a_loop",
        Some(seed),
        &format!(" sent_before_final_relay={sent_by_children} sent_at_kills={killed_at:?}"),
    );
    assert!(all_applied, "every row applied");
    assert_eq!((stats.pending, stats.parked), (0, 0), "nothing left unsent");
    assert_all_sent(&status, rows);
    teardown(applier, broker, pool).await;
}

/// The relay child: runs a relay over the SQLite outbox until it is killed.
#[test]
#[ignore = "a child process of relay_killed_9_in_a_loop; does nothing on its own"]
fn child_relay() {
    run_child("child_relay", async {
        let conn = Connection::connect(ConnectionConfig::new(
            child_env("FAULT_AMQP_URL"),
            "outbox-faults-relay-child",
        ))
        .await
        .expect("the child connects to RabbitMQ");
        let publisher = Arc::new(
            Publisher::new(
                &conn,
                PublisherConfig::default().confirm_timeout(Duration::from_millis(800)),
            )
            .unwrap(),
        );
        let outbox = SqliteOutbox::new(sqlite_pool(&child_env("FAULT_DB")).unwrap());
        sqlx::query("SELECT 1")
            .execute(outbox.pool())
            .await
            .unwrap();
        let relay = Relay::new(outbox, publisher, loop_relay_config()).unwrap();
        say("ready");
        relay.run(CancellationToken::new()).await;
    });
}
