//! Outbox and inbox on the real PostgreSQL (one schema per test), relayed to the real RabbitMQ.
#![cfg(feature = "postgres")]

mod outbox_support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chassis_messaging::amqp::publisher::{Publisher, PublisherConfig};
use chassis_messaging::error::Error;
use chassis_messaging::message::OutgoingMessage;
use chassis_messaging::sql::inbox::{Inbox, Processed};
use chassis_messaging::sql::outbox::{OutboxStore, PgOutbox, RelayConfig};
use outbox_support::*;
use tokio_util::sync::CancellationToken;

async fn setup(test: &str, connections: u32) -> (PgSchema, PgOutbox, Broker) {
    let db = PgSchema::new(connections).await;
    let outbox = migrated(PgOutbox::new(db.pool.clone())).await;
    (db, outbox, Broker::new(test).await)
}

fn default_relay(
    outbox: &PgOutbox,
    broker: &Broker,
    token: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    spawn_relay(
        outbox,
        broker.publisher.clone(),
        RelayConfig::default(),
        token,
    )
}

async fn cleanup(broker: Broker, db: PgSchema) {
    broker.cleanup().await;
    db.drop().await;
}

/// Committed with no in-process signal: relays wake through LISTEN/NOTIFY.
async fn enqueue_committed(outbox: &PgOutbox, msg: &OutgoingMessage) -> String {
    outbox_support::enqueue_committed(outbox, msg, Commit::Plain).await
}

async fn row_id(conn: &mut sqlx::PgConnection, message_id: &str) -> i64 {
    sqlx::query_scalar("SELECT id FROM chassis_outbox WHERE message_id = $1")
        .bind(message_id)
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn commit_arrives_rollback_never_and_notify_wakes_the_relay() {
    let (db, outbox, broker) = setup("pg-commit", 4).await;
    let config = RelayConfig::default().poll_interval(Duration::from_secs(60));
    let token = CancellationToken::new();
    let relay = spawn_relay(&outbox, broker.publisher.clone(), config, &token);
    tokio::time::sleep(Duration::from_millis(500)).await; // the relay is idle, LISTENing

    let committed = enqueue_committed(&outbox, &broker.event("order-1", 1)).await;
    let mut tx = outbox.pool().begin().await.unwrap();
    let rolled_back = outbox
        .enqueue(&mut tx, &broker.event("order-2", 1))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    let barrier = enqueue_committed(&outbox, &broker.event("order-3", 1)).await;

    assert_exactly_these_arrive(&broker, &[&committed, &barrier], &rolled_back).await;
    assert_drained(&outbox).await;
    assert_eq!(outbox.purge_sent(i64::MAX).await.unwrap(), 2);
    let messages: i64 = sqlx::query_scalar("SELECT count(*) FROM chassis_outbox_messages")
        .fetch_one(outbox.pool())
        .await
        .unwrap();
    assert_eq!(
        messages, 0,
        "retention deletes the rows' messages with them"
    );

    stop_relays(token, [relay]).await;
    cleanup(broker, db).await;
}

#[tokio::test]
async fn two_relays_concurrent_writers_every_event_arrives_in_subject_order() {
    let (db, outbox, broker) = setup("pg-two-relays", 12).await;
    let subjects = create_counters(outbox.pool()).await;
    let token = CancellationToken::new();
    let config = RelayConfig::default()
        .batch_size(8)
        .poll_interval(Duration::from_millis(100));
    // Two replicas: separate stores and publishers on the same database and broker.
    let second_publisher =
        Arc::new(Publisher::new(&broker.conn, PublisherConfig::default()).unwrap());
    let relays = [
        spawn_relay(
            &PgOutbox::new(db.pool.clone()),
            broker.publisher.clone(),
            config.clone(),
            &token,
        ),
        spawn_relay(
            &PgOutbox::new(db.pool.clone()),
            second_publisher,
            config,
            &token,
        ),
    ];

    let exchange = broker.exchange.clone();
    run_writers(&subjects, move |subject| {
        let (outbox, exchange) = (outbox.clone(), exchange.clone());
        // The business write locks the aggregate's row: seq is commit order.
        let update = "UPDATE counters SET n = n + 1 WHERE subject = $1 RETURNING n";
        async move {
            write_counter_event(&outbox, &exchange, subject, "BEGIN", update, Commit::Plain).await;
        }
    })
    .await;
    assert_each_arrives_once_in_subject_order(&broker, 200, Duration::from_secs(25)).await;
    assert!(
        broker.drain(1, Duration::from_millis(300)).await.is_empty(),
        "no duplicates"
    );
    stop_relays(token, relays).await;
    cleanup(broker, db).await;
}

#[tokio::test]
async fn late_committing_transaction_is_not_skipped() {
    let (db, outbox, broker) = setup("pg-late", 6).await;
    let token = CancellationToken::new();
    let relay = default_relay(&outbox, &broker, &token);

    // T1 writes first (smaller id) but commits last.
    let mut late = outbox.pool().begin().await.unwrap();
    let late_id = outbox
        .enqueue(&mut late, &broker.event("agg-late", 1))
        .await
        .unwrap();
    let late_row = row_id(&mut late, &late_id).await;
    let early_id = enqueue_committed(&outbox, &broker.event("agg-early", 1)).await;
    let early_row = row_id(&mut outbox.pool().acquire().await.unwrap(), &early_id).await;
    assert!(late_row < early_row);

    let first = broker.drain(1, Duration::from_secs(10)).await;
    assert_eq!(
        first[0].message_id, early_id,
        "the committed row is published"
    );
    late.commit().await.unwrap();
    let second = broker.drain(1, Duration::from_secs(10)).await;
    assert_eq!(second.len(), 1, "the late row is published too");
    assert_eq!(second[0].message_id, late_id);

    stop_relays(token, [relay]).await;
    cleanup(broker, db).await;
}

#[tokio::test]
async fn writers_of_one_subject_serialize_so_ids_follow_commit_order() {
    let (db, outbox, broker) = setup("pg-same-subject", 6).await;
    let mut first = outbox.pool().begin().await.unwrap();
    let first_id = outbox
        .enqueue(&mut first, &broker.event("agg-1", 1))
        .await
        .unwrap();

    let second = tokio::spawn({
        let outbox = outbox.clone();
        let msg = broker.event("agg-1", 2);
        async move {
            let mut tx = outbox.pool().begin().await.unwrap();
            let id = outbox.enqueue(&mut tx, &msg).await.unwrap();
            tx.commit().await.unwrap();
            id
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second writer of agg-1 waits for the first"
    );
    // The first writer enqueues again while the second waits: had the second drawn its id
    // before waiting for the subject's lock, that id would sit between the first writer's
    // two, and the relay would publish the second writer's event in the middle of them.
    let first_again_id = outbox
        .enqueue(&mut first, &broker.event("agg-1", 3))
        .await
        .unwrap();
    first.commit().await.unwrap();
    let second_id = second.await.unwrap();
    let mut conn = outbox.pool().acquire().await.unwrap();
    let ids = [
        row_id(&mut conn, &first_id).await,
        row_id(&mut conn, &first_again_id).await,
        row_id(&mut conn, &second_id).await,
    ];
    assert!(ids[0] < ids[1] && ids[1] < ids[2], "ids {ids:?}");
    drop(conn);

    let token = CancellationToken::new();
    let relay = default_relay(&outbox, &broker, &token);
    let received = broker.drain(3, Duration::from_secs(10)).await;
    assert_eq!(
        received
            .iter()
            .map(|r| r.message_id.clone())
            .collect::<Vec<_>>(),
        vec![first_id, first_again_id, second_id]
    );
    stop_relays(token, [relay]).await;
    cleanup(broker, db).await;
}

#[tokio::test]
async fn relay_killed_between_confirm_and_mark_rolls_back_and_the_inbox_absorbs_the_duplicate() {
    let (db, outbox, broker) = setup("pg-crash", 8).await;
    let inbox = Inbox::new(db.pool.clone(), "effects");
    inbox.migrate().await.unwrap();
    sqlx::query("CREATE TABLE effects (message_id TEXT NOT NULL)")
        .execute(&db.pool)
        .await
        .unwrap();
    for i in 1..=10u64 {
        enqueue_committed(&outbox, &broker.event(&format!("agg-{i}"), i)).await;
    }
    let crashing = CrashAfterConfirm::new(broker.publisher.clone());
    let token = CancellationToken::new();
    let doomed = spawn_relay(&outbox, crashing.clone(), RelayConfig::default(), &token);
    assert!(
        eventually(Duration::from_secs(10), || async {
            crashing.confirmed_then_hung.load(Ordering::SeqCst) == 10
        })
        .await
    );
    doomed.abort();
    let _ = doomed.await;

    // The dead relay's transaction rolls back: a new relay republishes at once.
    let relay = default_relay(&outbox, &broker, &token);
    let received = broker.drain(20, Duration::from_secs(15)).await;
    assert_eq!(
        received.len(),
        20,
        "every event twice: once before the crash, once after"
    );

    let mut applied = 0;
    for r in &received {
        let outcome = inbox
            .process(&r.message_id, |tx| {
                let id = r.message_id.clone();
                Box::pin(async move {
                    sqlx::query("INSERT INTO effects (message_id) VALUES ($1)")
                        .bind(id)
                        .execute(&mut **tx)
                        .await
                        .map_err(|e| {
                            Error::with_source(chassis_messaging::error::ErrorKind::Database, e)
                        })?;
                    Ok::<_, Error>(())
                })
            })
            .await
            .unwrap();
        if let Processed::Done(()) = outcome {
            applied += 1;
        }
    }
    let (n, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT message_id) FROM effects")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (applied, n, distinct),
        (10, 10, 10),
        "the business effect happened once per event"
    );
    assert_drained(&outbox).await;

    stop_relays(token, [relay]).await;
    cleanup(broker, db).await;
}

/// Two batches in flight on PostgreSQL: the second claim runs while the first batch's rows are
/// locked by its open transaction; it must skip them and every later row of their subjects.
#[tokio::test]
async fn overlapping_batches_never_publish_a_subject_ahead_of_its_unconfirmed_rows() {
    let (db, outbox, broker) = setup("pg-overlap", 6).await;
    assert_overlapping_batches_keep_subject_order(&outbox, &broker, 300).await;
    cleanup(broker, db).await;
}

/// A later row of a subject claimed while the subject's earlier rows are still in flight (in
/// another open transaction of the same relay) is linked behind them; when one of them fails,
/// the linked rows are left pending and the subject's order holds.
#[tokio::test]
async fn rows_linked_behind_a_failing_row_wait_until_it_is_parked() {
    let (schema, outbox, broker) = setup("pg-linked", 8).await;
    for event in linked_events(&broker) {
        enqueue_committed(&outbox, &event).await;
    }
    assert_linked_rows_wait_for_a_failing_predecessor(outbox, &broker).await;
    cleanup(broker, schema).await;
}

#[tokio::test]
async fn rows_written_before_the_message_table_split_are_migrated_and_published() {
    let db = PgSchema::new(4).await;
    let broker = Broker::new("pg-migrate").await;
    // A schema as the first migration left it, with a pending row in the old layout.
    old_layout_with_a_pending_row(&db.pool, &broker.event("agg-1", 1)).await;

    let outbox = PgOutbox::new(db.pool.clone());
    outbox.migrate().await.expect("the old layout migrates");
    the_old_row_is_published(outbox, &broker).await;
    cleanup(broker, db).await;
}
