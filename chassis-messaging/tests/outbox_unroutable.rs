//! Events nobody subscribes to, relayed from the outbox (real RabbitMQ; SQLite and, with the
//! `postgres` feature, PostgreSQL): on an exchange declared `Unroutable::Accept` the broker's
//! return marks the row sent and counts it; on a `Retry` exchange (the default) the row is
//! retried and parked as before.

mod outbox_support;

use std::collections::HashMap;
use std::time::Duration;

use chassis_messaging::amqp::topology::{ExchangeConfig, TopologyConfig, Unroutable};
use chassis_messaging::message::OutgoingMessage;
use chassis_messaging::sql::metrics as names;
use chassis_messaging::sql::outbox::{
    BatchReport, Outbox, OutboxDatabase, OutboxStore, Relay, RelayConfig,
};
use lapin::options::ExchangeDeleteOptions;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use outbox_support::*;

/// The fixture's connection also declares two exchanges without any queue: one accepting
/// unroutable messages, one (by default) treating them as errors.
struct Exchanges {
    accept: String,
    retry: String,
}

async fn declare_unbound_exchanges(broker: &Broker) -> Exchanges {
    let accept = format!("{}.accept", broker.name);
    let retry = format!("{}.retry", broker.name);
    broker
        .conn
        .declare(
            TopologyConfig::new()
                .exchange(ExchangeConfig::topic(accept.clone()).unroutable(Unroutable::Accept))
                .exchange(ExchangeConfig::topic(retry.clone())),
        )
        .await
        .expect("declare the exchanges");
    assert_eq!(broker.conn.unroutable_policy(&accept), Unroutable::Accept);
    assert_eq!(broker.conn.unroutable_policy(&retry), Unroutable::Retry);
    Exchanges { accept, retry }
}

async fn delete_exchanges(broker: &Broker, exchanges: &Exchanges) {
    let ch = broker.conn.create_channel().await.expect("channel");
    for e in [&exchanges.accept, &exchanges.retry] {
        let _ = ch
            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = ch.close(200, "cleanup".into()).await;
}

/// Every counter's total, by name (one snapshot: taking one resets the counters).
fn counters(snapshotter: &Snapshotter) -> HashMap<String, u64> {
    let mut totals = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        if let DebugValue::Counter(c) = value {
            *totals.entry(key.key().name().to_owned()).or_default() += c;
        }
    }
    totals
}

/// Enqueues, per subject, an event to an unbound exchange followed by a routed one:
/// subject `accepted` to the accepting exchange, subject `refused` to the retrying one.
/// Returns the message ids of the two unbound events.
async fn enqueue_events<DB: OutboxDatabase>(
    outbox: &Outbox<DB>,
    broker: &Broker,
    exchanges: &Exchanges,
) -> (String, String) {
    let unbound = |exchange: &str, subject: &str, seq: u64| {
        let mut event = broker.event(subject, seq);
        event.exchange = exchange.to_owned();
        event.routing_key = "inventory.released".into();
        event
    };
    let events: [OutgoingMessage; 4] = [
        unbound(&exchanges.accept, "accepted", 1),
        broker.event("accepted", 2),
        unbound(&exchanges.retry, "refused", 3),
        broker.event("refused", 4),
    ];
    let mut tx = outbox.pool().begin().await.unwrap();
    let mut ids = Vec::new();
    for event in &events {
        ids.push(outbox.enqueue(&mut *tx, event).await.unwrap());
    }
    outbox.commit(tx).await.unwrap();
    (ids[0].clone(), ids[2].clone())
}

/// Relays until the retrying exchange's row is parked (its third try) and nothing is pending,
/// then checks what happened to each row and what was counted.
async fn accepted_is_sent_and_counted_refused_is_parked<DB: OutboxDatabase>(
    outbox: Outbox<DB>,
    broker: &Broker,
) {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _local = metrics::set_default_local_recorder(&recorder);
    let exchanges = declare_unbound_exchanges(broker).await;
    let (accepted_id, refused_id) = enqueue_events(&outbox, broker, &exchanges).await;

    let relay = Relay::new(
        outbox.clone(),
        broker.publisher.clone(),
        RelayConfig::default()
            .max_attempts(3)
            .retry_delay(Duration::from_millis(20))
            .backoff_initial(Duration::from_millis(10))
            .backoff_max(Duration::from_millis(50)),
    )
    .unwrap();
    let mut total = BatchReport::default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let report = relay.run_until_idle().await.unwrap();
        assert!(report.transient_error.is_none(), "{report:?}");
        total.claimed += report.claimed;
        total.sent += report.sent;
        total.unrouted += report.unrouted;
        total.failed += report.failed;
        total.parked += report.parked;
        let stats = outbox.stats().await.unwrap();
        if stats.pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rows still pending: {stats:?}, so far {total:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The accepted event was published once and marked sent; the refused one was tried
    // `max_attempts` times and parked; both subjects then moved on.
    assert_eq!(total.unrouted, 1, "{total:?}");
    assert_eq!(total.sent, 3, "accepted + the two routed events: {total:?}");
    assert_eq!((total.failed, total.parked), (2, 1), "{total:?}");
    let parked = outbox.parked(10).await.unwrap();
    let parked_ids: Vec<&str> = parked.iter().map(|p| p.message_id.as_str()).collect();
    assert_eq!(
        parked_ids,
        [refused_id.as_str()],
        "{accepted_id} is not parked"
    );
    assert_eq!(parked[0].attempts, 3);
    assert!(
        parked[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("unroutable")),
        "{:?}",
        parked[0].last_error
    );
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.parked), (0, 1));
    let mut seqs: Vec<u64> = broker
        .drain(2, Duration::from_secs(5))
        .await
        .iter()
        .map(|r| r.seq)
        .collect();
    seqs.sort_unstable();
    assert_eq!(seqs, [2, 4], "the routed events arrive");

    let counted = counters(&snapshotter);
    let count = |name: &str| counted.get(name).copied().unwrap_or_default();
    assert_eq!(count(names::OUTBOX_UNROUTABLE), 1, "{counted:?}");
    assert_eq!(count(names::OUTBOX_PARKED_MESSAGES), 1, "{counted:?}");
    assert_eq!(count(names::OUTBOX_PUBLISHED), 3, "{counted:?}");
    delete_exchanges(broker, &exchanges).await;
}

#[tokio::test(flavor = "current_thread")]
async fn sqlite_accepting_exchange_marks_unrouted_rows_sent_retrying_exchange_parks_them() {
    let dir = tempfile::tempdir().unwrap();
    let outbox = chassis_messaging::sql::outbox::SqliteOutbox::new(sqlite_pool(&dir).await);
    outbox.migrate().await.unwrap();
    let broker = Broker::new("sqlite-unroutable").await;
    accepted_is_sent_and_counted_refused_is_parked(outbox, &broker).await;
    broker.cleanup().await;
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "current_thread")]
async fn postgres_accepting_exchange_marks_unrouted_rows_sent_retrying_exchange_parks_them() {
    let db = PgSchema::new(4).await;
    let outbox = chassis_messaging::sql::outbox::PgOutbox::new(db.pool.clone());
    outbox.migrate().await.unwrap();
    let broker = Broker::new("pg-unroutable").await;
    accepted_is_sent_and_counted_refused_is_parked(outbox, &broker).await;
    broker.cleanup().await;
    db.drop().await;
}
