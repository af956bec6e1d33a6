//! Unroutable (`mandatory`) publishes among many concurrent ones on one confirm channel (real
//! RabbitMQ): each publish learns its own outcome.
//!
//! The broker sends a message's `basic.return` before its `basic.ack`, but a return names no
//! delivery tag, and acks come in batches (`multiple`). lapin hands each return to whichever
//! confirm it resolves next, which under a batch of acks can be another publish's. The
//! publisher matches a return to its message by exchange, routing key and body instead, so a
//! routed message is never reported unroutable (and published again) because of another
//! message's return, and the unroutable one still fails.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use chassis_messaging::amqp::publisher::{Publish, Publisher, PublisherConfig};
use chassis_messaging::error::ErrorKind;
use chassis_messaging::message::OutgoingMessage;
use futures_util::future::join_all;
use support::Fixture;

const ROUNDS: usize = 10;
const PER_ROUND: usize = 200;

fn unroutable(i: usize) -> bool {
    i % 10 == 3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_concurrent_publish_learns_its_own_return() {
    let fx = Fixture::with_binding("returns", "routed", |q| q).await;
    let publisher = Publisher::new(&fx.conn, PublisherConfig::default()).unwrap();
    let mut wrong = Vec::new();
    for round in 0..ROUNDS {
        let results = join_all((0..PER_ROUND).map(|i| {
            let key = if unroutable(i) { "nobody" } else { "routed" };
            let body = format!("{round}-{i}").into_bytes();
            publisher.publish(OutgoingMessage::new(fx.exchange.clone(), key, body))
        }))
        .await;
        for (i, result) in results.into_iter().enumerate() {
            let ok = match &result {
                Ok(()) => !unroutable(i),
                Err(e) => unroutable(i) && matches!(e.kind(), ErrorKind::Unroutable { .. }),
            };
            if !ok {
                wrong.push(format!("{round}-{i}: {result:?}"));
            }
        }
    }
    let routed = ROUNDS * PER_ROUND * 9 / 10;
    let mut got = fx
        .drain_queue(fx.queue.name.as_str(), routed, Duration::from_secs(60))
        .await;
    // Anything beyond them is a copy.
    got.extend(
        fx.drain_queue(fx.queue.name.as_str(), 1, Duration::from_millis(500))
            .await,
    );
    let bodies: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8_lossy(&m.delivery.data).into_owned())
        .collect();
    let distinct: HashSet<&String> = bodies.iter().collect();
    fx.cleanup().await;
    assert!(
        wrong.is_empty(),
        "publishes told the wrong outcome: {wrong:?}"
    );
    assert_eq!(
        (bodies.len(), distinct.len()),
        (routed, routed),
        "every routed message once"
    );
}
