//! Topology that disappears behind the chassis's back comes back.
//!
//! - While connected (the machine's broker, this test's own names): a consumer whose queue is
//!   deleted is cancelled by the broker, declares the topology again and consumes what is
//!   published afterwards; a publisher whose exchange was deleted (404) or whose queue was
//!   deleted (unroutable return) declares it again and its publish succeeds.
//! - A broker that restarts with fresh state (a node of the test's own: stopped, its data
//!   removed, started on the same port): consumers come back with the topology declared again,
//!   both a registered one and a consumer's own queue that no registered topology has.
//!
//! Every message confirmed after the fault is consumed.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chassis_messaging::amqp::connection::{Connection, ConnectionConfig, ConnectionState};
use chassis_messaging::amqp::topology::{ExchangeConfig, QueueConfig, TopologyConfig};
use chassis_messaging::{
    Consumer, ConsumerConfig, IncomingMessage, Outcome, OutgoingMessage, Publish, Publisher,
    PublisherConfig,
};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use support::Fixture;

type Seen = Arc<Mutex<BTreeSet<String>>>;

/// A consumer recording every body it acks.
async fn recording_consumer(conn: &Connection, queue: QueueConfig) -> (Consumer, Seen) {
    let seen: Seen = Arc::default();
    let record = seen.clone();
    let consumer = Consumer::start(
        conn,
        queue,
        ConsumerConfig::default().queue_depth_interval(Duration::from_millis(200)),
        move |msg: IncomingMessage| {
            let record = record.clone();
            async move {
                record
                    .lock()
                    .unwrap()
                    .insert(String::from_utf8_lossy(msg.body()).into_owned());
                Outcome::Ack
            }
        },
    )
    .await
    .expect("consumer");
    (consumer, seen)
}

/// Publishes `body` until the broker confirms it routed (as the outbox relay retries a row);
/// panics after `within`.
async fn publish_confirmed(
    publisher: &Publisher,
    exchange: &str,
    key: &str,
    body: &str,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let msg = OutgoingMessage::new(exchange, key, body.as_bytes().to_vec());
        match publisher.publish(msg).await {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "publish failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{body} not confirmed within {within:?}: {e}"),
        }
    }
}

/// Waits until `seen` holds every one of `bodies`; says which are missing otherwise.
async fn consumed(seen: &Seen, bodies: &[String], within: Duration) -> Result<(), Vec<String>> {
    let deadline = Instant::now() + within;
    loop {
        let missing: Vec<String> = {
            let seen = seen.lock().unwrap();
            bodies
                .iter()
                .filter(|b| !seen.contains(*b))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(missing);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes a queue the way an operator would, from another channel.
async fn delete_queue(conn: &Connection, queue: &str) {
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_delete(queue.into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
    let _ = ch.close(200, "deleted".into()).await;
}

/// Whether `queue` exists (a passive declare, on a channel of its own: a 404 closes it).
async fn queue_exists(conn: &Connection, queue: &str) -> bool {
    let ch = conn.create_channel().await.expect("channel");
    let passive = lapin::options::QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let exists = ch
        .queue_declare(queue.into(), passive, lapin::types::FieldTable::default())
        .await
        .is_ok();
    let _ = ch.close(200, "checked".into()).await;
    exists
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_whose_queue_is_deleted_declares_it_again_and_consumes() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("chassis_messaging=info")
        .with_test_writer()
        .try_init();
    let fx = Fixture::with_queue("recovery-consumer", |q| q).await;
    let (consumer, seen) = recording_consumer(&fx.conn, fx.queue.clone()).await;
    let publisher = Publisher::new(&fx.conn, PublisherConfig::default()).unwrap();
    publish_confirmed(
        &publisher,
        &fx.exchange,
        "k",
        "before",
        Duration::from_secs(5),
    )
    .await;
    consumed(&seen, &["before".to_owned()], Duration::from_secs(10))
        .await
        .expect("consumed before the deletion");

    delete_queue(&fx.conn, &fx.queue.name).await;
    // Nobody publishes until the queue is back: the consumer notices on its own (a classic
    // queue cancels it, a quorum queue is found missing by its depth poll) and declares it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !queue_exists(&fx.conn, &fx.queue.name).await {
        assert!(
            Instant::now() < deadline,
            "the consumer declared its queue again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after: Vec<String> = (0..20).map(|i| format!("after-{i}")).collect();
    for body in &after {
        publish_confirmed(&publisher, &fx.exchange, "k", body, Duration::from_secs(20)).await;
    }
    let res = consumed(&seen, &after, Duration::from_secs(20)).await;
    assert!(!consumer.is_finished(), "the consumer is still running");
    consumer.shutdown().await;
    fx.cleanup().await;
    res.unwrap_or_else(|missing| panic!("confirmed but never consumed: {missing:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_to_a_deleted_exchange_declares_it_again_and_succeeds() {
    let fx = Fixture::with_queue("recovery-exchange", |q| q).await;
    let publisher = Publisher::new(&fx.conn, PublisherConfig::default()).unwrap();
    publisher
        .publish(OutgoingMessage::new(&fx.exchange, "k", b"before".to_vec()))
        .await
        .expect("published before the deletion");

    let ch = fx.conn.create_channel().await.unwrap();
    ch.exchange_delete(
        fx.exchange.as_str().into(),
        ExchangeDeleteOptions::default(),
    )
    .await
    .expect("exchange.delete");
    let _ = ch.close(200, "deleted".into()).await;
    // The broker answers 404; the publisher declares the topology (exchange and binding)
    // again and publishes once more: the caller sees one successful publish.
    let res = publisher
        .publish(OutgoingMessage::new(&fx.exchange, "k", b"after".to_vec()))
        .await;
    let got = fx
        .drain_queue(&fx.queue.name, 2, Duration::from_secs(5))
        .await;
    fx.cleanup().await;
    res.expect("published after the exchange was deleted");
    let bodies: Vec<&[u8]> = got.iter().map(|m| m.delivery.data.as_slice()).collect();
    assert_eq!(bodies, [b"before".as_slice(), b"after"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_return_declares_the_deleted_queue_again() {
    let fx = Fixture::with_queue("recovery-unroutable", |q| q).await;
    let publisher = Publisher::new(&fx.conn, PublisherConfig::default()).unwrap();
    delete_queue(&fx.conn, &fx.queue.name).await;
    let res = publisher
        .publish(OutgoingMessage::new(&fx.exchange, "k", b"after".to_vec()))
        .await;
    let got = fx
        .drain_queue(&fx.queue.name, 1, Duration::from_secs(5))
        .await;
    fx.cleanup().await;
    res.expect("published after the queue was deleted");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].delivery.data, b"after");
}

/// A node of the test's own, stopped, wiped and started again on the same port: a broker
/// replaced by a fresh one. The consumer of the registered topology and the consumer of a
/// queue declared outside it both come back; what is confirmed afterwards is consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_come_back_after_the_broker_restarts_with_fresh_state() {
    support::on_own_node("topology-fresh", fresh_state_on).await;
}

async fn fresh_state_on(node: Arc<chassis_testkit::RabbitNode>) {
    let name = support::unique("fresh");
    let conn = Connection::connect(
        ConnectionConfig::new(node.url(), &name)
            .operation_timeout(Duration::from_secs(5))
            .min_backoff(Duration::from_millis(50))
            .max_backoff(Duration::from_millis(500)),
    )
    .await
    .expect("connect to the node");
    let exchange = format!("{name}.ex");
    let registered = QueueConfig::new(format!("{name}.registered")).bind(&exchange, "a.#");
    conn.declare(
        TopologyConfig::new()
            .exchange(ExchangeConfig::topic(&exchange))
            .queue(registered.clone()),
    )
    .await
    .expect("declare");
    // Declared once on a channel, not registered with the connection: only its consumer
    // knows it.
    let own = QueueConfig::new(format!("{name}.own")).bind(&exchange, "b.#");
    let ch = conn.create_channel().await.unwrap();
    TopologyConfig::new()
        .queue(own.clone())
        .declare(&ch, Duration::from_secs(5))
        .await
        .expect("declare the consumer's own queue");
    let _ = ch.close(200, "declared".into()).await;

    let (consumer_a, seen_a) = recording_consumer(&conn, registered.clone()).await;
    let (consumer_b, seen_b) = recording_consumer(&conn, own.clone()).await;
    let publisher = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    publish_confirmed(
        &publisher,
        &exchange,
        "a.1",
        "a-before",
        Duration::from_secs(5),
    )
    .await;
    publish_confirmed(
        &publisher,
        &exchange,
        "b.1",
        "b-before",
        Duration::from_secs(5),
    )
    .await;
    consumed(&seen_a, &["a-before".to_owned()], Duration::from_secs(10))
        .await
        .expect("a consumed before the restart");
    consumed(&seen_b, &["b-before".to_owned()], Duration::from_secs(10))
        .await
        .expect("b consumed before the restart");

    let mut state = conn.subscribe();
    {
        let node = node.clone();
        tokio::task::spawn_blocking(move || {
            node.stop();
            node.wipe();
            node.start();
        })
        .await
        .expect("node restarted fresh");
    }
    tokio::time::timeout(Duration::from_secs(60), async {
        while conn.generation() < 2 || *state.borrow() != ConnectionState::Connected {
            state.changed().await.expect("connection alive");
        }
    })
    .await
    .expect("reconnected to the fresh node");

    let a_after: Vec<String> = (0..10).map(|i| format!("a-after-{i}")).collect();
    let b_after: Vec<String> = (0..10).map(|i| format!("b-after-{i}")).collect();
    for (a, b) in a_after.iter().zip(&b_after) {
        publish_confirmed(&publisher, &exchange, "a.1", a, Duration::from_secs(30)).await;
        publish_confirmed(&publisher, &exchange, "b.1", b, Duration::from_secs(30)).await;
    }
    let res_a = consumed(&seen_a, &a_after, Duration::from_secs(30)).await;
    let res_b = consumed(&seen_b, &b_after, Duration::from_secs(30)).await;
    assert!(!consumer_a.is_finished() && !consumer_b.is_finished());
    consumer_a.shutdown().await;
    consumer_b.shutdown().await;
    conn.close().await;
    res_a.unwrap_or_else(|missing| panic!("registered queue: never consumed {missing:?}"));
    res_b.unwrap_or_else(|missing| panic!("consumer's own queue: never consumed {missing:?}"));
}
