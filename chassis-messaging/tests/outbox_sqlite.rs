//! Outbox on a real SQLite file, relayed to the real RabbitMQ.

mod outbox_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use chassis_messaging::amqp::consumer::Outcome;
use chassis_messaging::amqp::publisher::{Publish, Publisher};
use chassis_messaging::error::Error;
use chassis_messaging::message::OutgoingMessage;
use chassis_messaging::sql::inbox::idempotent;
use chassis_messaging::sql::outbox::{
    OutboxStore, Relay, RelayConfig, RowOutcome, SentPolicy, SqliteOutbox,
};
use futures_util::future::BoxFuture;
use outbox_support::*;
use tokio_util::sync::CancellationToken;

async fn setup(test: &str) -> (tempfile::TempDir, SqliteOutbox, Broker) {
    let dir = tempfile::tempdir().unwrap();
    let outbox = migrated(SqliteOutbox::new(sqlite_pool(&dir).await)).await;
    (dir, outbox, Broker::new(test).await)
}

/// Committed through the outbox, which wakes the relays of this process.
async fn enqueue_committed(outbox: &SqliteOutbox, msg: &OutgoingMessage) -> String {
    outbox_support::enqueue_committed(outbox, msg, Commit::Signalled).await
}

#[tokio::test]
async fn commit_arrives_rollback_never_and_commit_wakes_the_relay() {
    let (_dir, outbox, broker) = setup("sqlite-commit").await;
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .execute(outbox.pool())
        .await
        .unwrap();
    // Polling is effectively off: only the commit signal can wake the relay in time.
    let config = RelayConfig::default().poll_interval(Duration::from_secs(60));
    let token = CancellationToken::new();
    let relay = spawn_relay(&outbox, broker.publisher.clone(), config, &token);
    tokio::time::sleep(Duration::from_millis(200)).await; // the relay is idle, waiting

    // An order and its event in one transaction.
    let place_order = |id: i64| {
        let (outbox, event) = (outbox.clone(), broker.event(&format!("order-{id}"), 1));
        async move {
            let mut tx = outbox.pool().begin().await.unwrap();
            sqlx::query("INSERT INTO orders (id) VALUES (?1)")
                .bind(id)
                .execute(&mut *tx)
                .await
                .unwrap();
            let message_id = outbox.enqueue(&mut tx, &event).await.unwrap();
            (tx, message_id)
        }
    };
    let (tx, committed) = place_order(1).await;
    outbox.commit(tx).await.unwrap();
    let (tx, rolled_back) = place_order(2).await;
    tx.rollback().await.unwrap();

    // An envelope goes in the same way (its subject orders it, its id is the message id).
    let envelope = chassis_messaging::envelope::Envelope::new(
        "tests/outbox",
        "event.order.placed",
        serde_json::json!({"subject": "order-3", "seq": 1}),
    )
    .subject("order-3");
    let mut tx = outbox.pool().begin().await.unwrap();
    let barrier = outbox
        .enqueue_event(&mut tx, &broker.exchange, &envelope)
        .await
        .unwrap();
    outbox.commit(tx).await.unwrap();
    assert_eq!(barrier, envelope.id.to_string());
    assert_exactly_these_arrive(&broker, &[&committed, &barrier], &rolled_back).await;

    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.parked), (0, 0));
    let (sent,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM chassis_outbox WHERE status = 'sent'")
            .fetch_one(outbox.pool())
            .await
            .unwrap();
    assert_eq!(sent, 2, "confirmed rows are kept as sent until retention");
    assert_eq!(
        outbox.purge_sent(i64::MAX).await.unwrap(),
        2,
        "retention deletes them"
    );
    let (messages,): (i64,) = sqlx::query_as("SELECT count(*) FROM chassis_outbox_messages")
        .fetch_one(outbox.pool())
        .await
        .unwrap();
    assert_eq!(messages, 0, "and their messages with them");

    stop_relays(token, [relay]).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn concurrent_writers_every_event_arrives_in_subject_order() {
    let (_dir, outbox, broker) = setup("sqlite-order").await;
    let subjects = create_counters(outbox.pool()).await;
    // Run as a service would: tracked by the shutdown controller.
    let shutdown = chassis_core::shutdown::Shutdown::new();
    Relay::new(
        outbox.clone(),
        broker.publisher.clone(),
        RelayConfig::default().batch_size(16),
    )
    .unwrap()
    .spawn_with(&shutdown);

    let exchange = broker.exchange.clone();
    run_writers(&subjects, move |subject| {
        let (outbox, exchange) = (outbox.clone(), exchange.clone());
        let update = "UPDATE counters SET n = n + 1 WHERE subject = ?1 RETURNING n";
        async move {
            let begin = "BEGIN IMMEDIATE";
            write_counter_event(
                &outbox,
                &exchange,
                subject,
                begin,
                update,
                Commit::Signalled,
            )
            .await;
        }
    })
    .await;
    assert_each_arrives_once_in_subject_order(&broker, 200, Duration::from_secs(20)).await;
    shutdown.trigger();
    assert!(
        shutdown.drain(Duration::from_secs(5)).await,
        "the relay stopped on shutdown"
    );
    broker.cleanup().await;
}

#[tokio::test]
async fn broker_connection_closed_during_relay_everything_committed_arrives() {
    let (_dir, outbox, broker) = setup("sqlite-conn-kill").await;
    let token = CancellationToken::new();
    let config = RelayConfig::default()
        .backoff_initial(Duration::from_millis(50))
        .backoff_max(Duration::from_millis(500));
    let relay = spawn_relay(&outbox, broker.publisher.clone(), config, &token);

    let writer = {
        let outbox = outbox.clone();
        let events: Vec<_> = (1..=300u64)
            .map(|i| broker.event(&format!("agg-{}", i % 7), i))
            .collect();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for msg in events {
                ids.push(enqueue_committed(&outbox, &msg).await);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            ids
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        kill_connection(&broker.name).await >= 1,
        "the test's connection was closed"
    );
    let ids = writer.await.unwrap();

    let mut received = Vec::new();
    let expected: std::collections::HashSet<_> = ids.iter().cloned().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        received.extend(broker.drain(1000, Duration::from_millis(500)).await);
        let got: std::collections::HashSet<_> =
            received.iter().map(|r| r.message_id.clone()).collect();
        if expected.is_subset(&got) {
            break;
        }
    }
    let got: std::collections::HashSet<_> = received.iter().map(|r| r.message_id.clone()).collect();
    assert!(
        expected.is_subset(&got),
        "{} of {} committed events arrived",
        expected.intersection(&got).count(),
        expected.len()
    );
    assert_per_subject_order(&received);
    assert_drained(&outbox).await;
    stop_relays(token, [relay]).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn relay_killed_between_confirm_and_mark_duplicates_are_absorbed_by_the_inbox() {
    let (_dir, outbox, broker) = setup("sqlite-crash").await;
    let columns = "message_id TEXT NOT NULL, seq INTEGER NOT NULL";
    let inbox = effects_inbox_with(outbox.pool().clone(), "effects", columns).await;
    let deliveries = Arc::new(AtomicUsize::new(0));
    let handler = {
        let deliveries = deliveries.clone();
        idempotent(inbox.clone(), move |msg, tx| {
            deliveries.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                let body: serde_json::Value = serde_json::from_slice(msg.body()).unwrap();
                let done = sqlx::query("INSERT INTO effects (message_id, seq) VALUES (?1, ?2)")
                    .bind(msg.message_id())
                    .bind(body["seq"].as_i64())
                    .execute(&mut **tx)
                    .await;
                match done {
                    Ok(_) => Outcome::Ack,
                    Err(e) => Outcome::retry(e.to_string()),
                }
            })
        })
    };
    // Count every delivery, duplicates included (the inbox skips before the closure runs, so
    // count in a wrapper around the consumer instead): see `deliveries_seen` below.
    let seen = Arc::new(AtomicUsize::new(0));
    let counting = {
        let seen = seen.clone();
        let handler = Arc::new(handler);
        move |msg: chassis_messaging::amqp::incoming::IncomingMessage| {
            seen.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            async move { chassis_messaging::amqp::consumer::Handler::handle(&*handler, msg).await }
        }
    };
    let consumer = broker.consume(counting).await;

    for i in 1..=20u64 {
        enqueue_committed(&outbox, &broker.event(&format!("agg-{i}"), i)).await;
    }
    let crashing = CrashAfterConfirm::new(broker.publisher.clone());
    // Two batches of 10 in flight (the default `batches_in_flight`): all 20 rows are confirmed
    // and none is marked when the relay dies.
    let config = RelayConfig::default()
        .batch_size(10)
        .batches_in_flight(2)
        // Long enough that the doomed relay cannot time out its hung publishes (and release
        // its lease itself) before the test kills it; the next relay takes over after the lease.
        .publish_timeout(Duration::from_secs(3))
        .lease(Duration::from_secs(4));
    let token = CancellationToken::new();
    let doomed = spawn_relay(&outbox, crashing.clone(), config.clone(), &token);
    assert!(
        eventually(Duration::from_secs(10), || async {
            crashing.confirmed_then_hung.load(Ordering::SeqCst) == 20
        })
        .await,
        "both batches in flight (2 x 10 rows) were confirmed by the broker"
    );
    doomed.abort(); // killed before marking
    let _ = doomed.await;
    assert_eq!(
        outbox.stats().await.unwrap().pending,
        20,
        "nothing was marked"
    );

    let relay = spawn_relay(&outbox, broker.publisher.clone(), config, &token);
    let effects_done = eventually(Duration::from_secs(20), || async {
        let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM effects")
            .fetch_one(outbox.pool())
            .await
            .unwrap();
        n == 20 && seen.load(Ordering::SeqCst) >= 40
    })
    .await;
    let (n, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT message_id) FROM effects")
            .fetch_one(outbox.pool())
            .await
            .unwrap();
    assert!(
        effects_done,
        "effects {n}, deliveries {}",
        seen.load(Ordering::SeqCst)
    );
    assert_eq!(
        (n, distinct),
        (20, 20),
        "each event took effect exactly once"
    );
    assert_eq!(
        seen.load(Ordering::SeqCst),
        40,
        "the 20 confirmed-but-unmarked events were delivered twice"
    );
    assert_eq!(
        deliveries.load(Ordering::SeqCst),
        20,
        "duplicates never reached the business handler"
    );

    stop_relays(token, [relay]).await;
    consumer.shutdown().await;
    broker.cleanup().await;
}

/// Records every publish result in order, publishing through the real publisher.
struct Recording {
    inner: Arc<Publisher>,
    log: Mutex<Vec<(u64, bool)>>,
}

impl Publish for Recording {
    fn publish(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let seq = serde_json::from_slice::<serde_json::Value>(&msg.body).unwrap()["seq"]
                .as_u64()
                .unwrap();
            let result = self.inner.publish(msg).await;
            self.log.lock().unwrap().push((seq, result.is_ok()));
            result
        })
    }
}

#[tokio::test]
async fn unroutable_row_is_parked_after_max_attempts_and_its_subject_moves_on() {
    let (_dir, outbox, broker) = setup("sqlite-park").await;
    let mut poison = broker.event("agg-1", 1);
    poison.routing_key = "nobody.listens".into();
    let poison_id = enqueue_committed(&outbox, &poison).await;
    enqueue_committed(&outbox, &broker.event("agg-1", 2)).await;
    enqueue_committed(&outbox, &broker.event("agg-2", 3)).await;

    let recording = Arc::new(Recording {
        inner: broker.publisher.clone(),
        log: Mutex::new(Vec::new()),
    });
    let config = RelayConfig::default()
        .max_attempts(3)
        .retry_delay(Duration::from_millis(50))
        .poll_interval(Duration::from_millis(50));
    let token = CancellationToken::new();
    let relay = spawn_relay(&outbox, recording.clone(), config, &token);

    let received = broker.drain(2, Duration::from_secs(10)).await;
    let mut seqs: Vec<u64> = received.iter().map(|r| r.seq).collect();
    seqs.sort();
    assert_eq!(seqs, vec![2, 3]);
    stop_relays(token, [relay]).await;

    let parked = outbox.parked(10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].message_id, poison_id);
    assert_eq!(parked[0].attempts, 3);
    assert!(
        parked[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("unroutable"),
        "{:?}",
        parked[0].last_error
    );
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.parked), (0, 1));

    // The subject's next event was published only after its predecessor was parked.
    let log = recording.log.lock().unwrap().clone();
    let poison_tries: Vec<usize> = log
        .iter()
        .enumerate()
        .filter(|(_, (s, _))| *s == 1)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        poison_tries.len(),
        3,
        "exactly max_attempts tries, no hot loop: {log:?}"
    );
    assert!(log.iter().filter(|(s, _)| *s == 1).all(|(_, ok)| !ok));
    let next = log.iter().position(|(s, ok)| *s == 2 && *ok).unwrap();
    assert!(
        next > poison_tries[2],
        "agg-1 #2 published before #1 was parked: {log:?}"
    );

    assert_eq!(outbox.requeue_parked().await.unwrap(), 1);
    assert_eq!(outbox.stats().await.unwrap().pending, 1);
    broker.cleanup().await;
}

/// The real publisher behind a switch: while `down`, every publish fails like a lost
/// connection.
struct Switchable {
    inner: Arc<Publisher>,
    down: AtomicBool,
    calls_while_down: AtomicUsize,
}

impl Publish for Switchable {
    fn publish(&self, msg: OutgoingMessage) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                self.calls_while_down.fetch_add(1, Ordering::SeqCst);
                return Err(Error::connection(std::io::Error::other(
                    "broker unreachable",
                )));
            }
            self.inner.publish(msg).await
        })
    }
}

#[tokio::test]
async fn broker_down_rows_stay_pending_relay_backs_off_then_resumes() {
    let (_dir, outbox, broker) = setup("sqlite-down").await;
    for i in 1..=5u64 {
        enqueue_committed(&outbox, &broker.event("agg-1", i)).await;
    }
    let switch = Arc::new(Switchable {
        inner: broker.publisher.clone(),
        down: AtomicBool::new(true),
        calls_while_down: AtomicUsize::new(0),
    });
    let config = RelayConfig::default()
        .backoff_initial(Duration::from_millis(50))
        .backoff_max(Duration::from_millis(400))
        .max_attempts(2);
    let token = CancellationToken::new();
    let relay = spawn_relay(&outbox, switch.clone(), config, &token);
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let calls = switch.calls_while_down.load(Ordering::SeqCst);
    // Backoff 25–50, 50–100, 100–200, 200–400, then ≤400 ms: a handful of tries in 1.5 s, not
    // a hot loop (which would make thousands).
    assert!(
        (2..=20).contains(&calls),
        "{calls} publish attempts while the broker was down"
    );
    let (attempts, parked): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(attempts), 0), coalesce(sum(status = 'parked'), 0) FROM chassis_outbox",
    )
    .fetch_one(outbox.pool())
    .await
    .unwrap();
    assert_eq!(
        (attempts, parked),
        (0, 0),
        "outages neither count attempts nor park rows"
    );
    assert_eq!(outbox.stats().await.unwrap().pending, 5);

    switch.down.store(false, Ordering::SeqCst);
    let received = broker.drain(5, Duration::from_secs(5)).await;
    assert_eq!(
        received.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    stop_relays(token, [relay]).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn health_check_pings_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = SqliteOutbox::new(sqlite_pool(&dir).await);
    let check: &dyn chassis_core::health::HealthCheck = &outbox;
    assert_eq!(check.name(), "outbox-sqlite");
    assert!(check.check().await.is_ok());
    outbox.pool().close().await;
    assert!(
        check.check().await.is_err(),
        "a closed pool fails the check"
    );
}

/// The relay keeps two batches in flight: the next batch is claimed and published while the
/// previous one still waits for confirms. It must never contain a row whose subject has an
/// earlier row still in flight.
#[tokio::test]
async fn overlapping_batches_never_publish_a_subject_ahead_of_its_unconfirmed_rows() {
    let (_dir, outbox, broker) = setup("sqlite-overlap").await;
    assert_overlapping_batches_keep_subject_order(&outbox, &broker, 400).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn broker_fails_with_two_batches_in_flight_nothing_lost_order_kept() {
    let (_dir, outbox, broker) = setup("sqlite-overlap-kill").await;
    let events = mixed_events(&broker, 600, 7, 3);
    let (ids, unordered) = enqueue_all(&outbox, &events).await;

    // 50 ms per publish keeps the relay busy for about half a second (15 batches, two at a
    // time), so the 20 ms polling below reliably sees two batches in flight before the
    // connection is killed; with a few ms the relay could finish between two polls.
    let probe = Probe::new(broker.publisher.clone(), Duration::from_millis(50));
    let batch = 40;
    let config = RelayConfig::default()
        .batch_size(batch)
        .batches_in_flight(2)
        .backoff_initial(Duration::from_millis(50))
        .backoff_max(Duration::from_millis(500));
    let token = CancellationToken::new();
    let relay = spawn_relay(&outbox, probe.clone(), config, &token);
    // The relay claims its second batch right after the first, so once the first confirms
    // arrive both are in flight: the second's subjectless rows publishing, its other rows
    // linked behind the first batch's rows of their subjects.
    assert!(
        eventually(Duration::from_secs(10), || async {
            probe.snapshot(|s| s.in_flight > 0 && s.confirmed > 0)
        })
        .await,
        "batches in flight, the first confirms arriving"
    );
    assert!(
        kill_connection(&broker.name).await >= 1,
        "the test's connection was closed"
    );

    assert_all_arrive_in_subject_order(&broker, &ids, &unordered).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            outbox.stats().await.unwrap().pending == 0
        })
        .await
    );
    probe.snapshot(|s| assert!(s.violations.is_empty(), "{:?}", s.violations));
    stop_relays(token, [relay]).await;
    broker.cleanup().await;
}

/// A later row of a subject claimed while the subject's earlier rows are still in flight is
/// linked behind them; when one of them fails, the linked rows are left pending and the
/// subject's order holds.
#[tokio::test]
async fn rows_linked_behind_a_failing_row_wait_until_it_is_parked() {
    let (_dir, outbox, broker) = setup("sqlite-linked").await;
    for event in linked_events(&broker) {
        enqueue_committed(&outbox, &event).await;
    }
    assert_linked_rows_wait_for_a_failing_predecessor(outbox, &broker).await;
    broker.cleanup().await;
}

#[tokio::test]
async fn undecodable_row_is_parked_at_once_and_the_rest_of_the_batch_is_published() {
    let (_dir, outbox, broker) = setup("sqlite-undecodable").await;
    let broken_headers = enqueue_committed(&outbox, &broker.event("agg-1", 1)).await;
    enqueue_committed(&outbox, &broker.event("agg-1", 2)).await;
    let broken_body = enqueue_committed(&outbox, &broker.event("agg-2", 3)).await;
    enqueue_committed(&outbox, &broker.event("agg-3", 4)).await;
    // Damage two stored rows the way a hand-edited or foreign row could be: headers that are
    // not JSON, a timestamp no AMQP message can carry.
    sqlx::query(
        "UPDATE chassis_outbox_messages SET headers = '{not json' \
         WHERE id = (SELECT id FROM chassis_outbox WHERE message_id = ?1)",
    )
    .bind(&broken_headers)
    .execute(outbox.pool())
    .await
    .unwrap();
    sqlx::query(
        "UPDATE chassis_outbox_messages SET amqp_timestamp = -1 \
         WHERE id = (SELECT id FROM chassis_outbox WHERE message_id = ?1)",
    )
    .bind(&broken_body)
    .execute(outbox.pool())
    .await
    .unwrap();

    let relay = Relay::new(
        outbox.clone(),
        broker.publisher.clone(),
        RelayConfig::default(),
    )
    .unwrap();
    let report = relay
        .run_until_idle()
        .await
        .expect("a damaged row is no database error");
    assert_eq!((report.sent, report.parked), (2, 2), "{report:?}");

    let received = broker.drain(2, Duration::from_secs(10)).await;
    let mut seqs: Vec<u64> = received.iter().map(|r| r.seq).collect();
    seqs.sort();
    assert_eq!(
        seqs,
        vec![2, 4],
        "agg-1 #2 follows its parked head; agg-3 is untouched"
    );
    let parked = outbox.parked(10).await.unwrap();
    let parked_ids: HashSet<&str> = parked.iter().map(|p| p.message_id.as_str()).collect();
    assert_eq!(
        parked_ids,
        HashSet::from([broken_headers.as_str(), broken_body.as_str()])
    );
    for row in &parked {
        let error = row.last_error.as_deref().unwrap_or_default();
        assert!(
            error.contains("headers") || error.contains("timestamp"),
            "the error says what is wrong: {error}"
        );
    }
    broker.cleanup().await;
}

#[tokio::test]
async fn rows_written_before_the_message_table_split_are_migrated_and_published() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(&dir).await;
    let broker = Broker::new("sqlite-migrate").await;
    // A database as the first migration left it, with a pending row in the old layout.
    old_layout_with_a_pending_row(&pool, &broker.event("agg-1", 1)).await;

    let outbox = SqliteOutbox::new(pool);
    outbox.migrate().await.expect("the old layout migrates");
    the_old_row_is_published(outbox, &broker).await;
    broker.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relays_concurrent_claims_and_records_queue_for_the_write_lock() {
    // With no busy timeout, a write that finds SQLite's lock taken fails at once instead of
    // sleeping and retrying: any two of the store's own writes meeting there would show.
    let dir = tempfile::tempdir().unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("outbox.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::ZERO);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(8)
        .connect_with(options)
        .await
        .unwrap();
    let outbox = SqliteOutbox::new(pool);
    outbox.migrate().await.unwrap();
    let events: Vec<OutgoingMessage> = (0..400)
        .map(|i| {
            OutgoingMessage::new("ex", "rk", vec![1]).header("cloudEvents:subject", format!("s{i}"))
        })
        .collect();
    let mut tx = outbox.pool().begin().await.unwrap();
    for event in &events {
        outbox.enqueue(&mut tx, event).await.unwrap();
    }
    tx.commit().await.unwrap();

    // Batches claimed and recorded concurrently, as a relay's pipelined batches are.
    let workers = (0..8).map(|_| {
        let outbox = outbox.clone();
        tokio::spawn(async move {
            let mut recorded = 0;
            loop {
                let (claim, rows) = outbox
                    .claim(10, Duration::from_secs(30), &HashSet::new())
                    .await?;
                if rows.is_empty() {
                    return Ok::<_, Error>(recorded);
                }
                recorded += rows.len();
                let outcomes = rows.iter().map(|r| (r.id, RowOutcome::Sent)).collect();
                outbox.finish(claim, outcomes, SentPolicy::Mark).await?;
            }
        })
    });
    let mut recorded = 0;
    for worker in futures_util::future::join_all(workers).await {
        recorded += worker
            .unwrap()
            .expect("no write met another at SQLite's lock");
    }
    assert_eq!(recorded, 400);
    assert_eq!(outbox.stats().await.unwrap().pending, 0);
}

#[tokio::test]
async fn a_claim_stops_at_claim_bytes_but_always_takes_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = SqliteOutbox::new(sqlite_pool(&dir).await).claim_bytes(1000);
    outbox.migrate().await.unwrap();
    // Messages of 402 bytes (a 400-byte body, headers `{}`), then one larger than the cap.
    let mut tx = outbox.pool().begin().await.unwrap();
    for _ in 0..5 {
        outbox
            .enqueue(&mut tx, &OutgoingMessage::new("ex", "rk", vec![7; 400]))
            .await
            .unwrap();
    }
    outbox
        .enqueue(&mut tx, &OutgoingMessage::new("ex", "rk", vec![8; 5000]))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let lease = Duration::from_secs(30);
    let mut held = HashSet::new();
    let mut batches = Vec::new();
    loop {
        let ((), rows) = outbox.claim(100, lease, &held).await.unwrap();
        if rows.is_empty() {
            break;
        }
        batches.push(
            rows.iter()
                .map(|r| r.message.as_ref().unwrap().body.len())
                .collect::<Vec<_>>(),
        );
        held.extend(rows.iter().map(|r| r.id));
    }
    // A batch takes rows while the ones before them add up to less than 1000 bytes.
    assert_eq!(
        batches,
        vec![vec![400, 400, 400], vec![400, 400, 5000]],
        "rows in id order, capped by bytes, none lost"
    );

    // A cap below any message: one row per batch, never none.
    let tight = SqliteOutbox::new(outbox.pool().clone()).claim_bytes(1);
    let mut tx = outbox.pool().begin().await.unwrap();
    for body in [vec![1; 10], vec![2; 10]] {
        outbox
            .enqueue(&mut tx, &OutgoingMessage::new("ex", "rk", body))
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
    let mut held = HashSet::new();
    for expected in [1u8, 2] {
        let ((), rows) = tight.claim(100, lease, &held).await.unwrap();
        assert_eq!(rows.len(), 1, "one row per batch");
        assert_eq!(rows[0].message.as_ref().unwrap().body, vec![expected; 10]);
        held.extend(rows.iter().map(|r| r.id));
    }
    let ((), rows) = tight.claim(100, lease, &held).await.unwrap();
    assert!(rows.is_empty(), "the first outbox's leases are left alone");
}
