//! A consumer's queues in the control registry, on the real RabbitMQ: dead-lettered messages
//! moved back to the work queue (one by id, then all), each processed once through the inbox,
//! and the action idempotent; the state lists the dead-lettered messages without moving them.

mod outbox_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chassis_core::control::ControlRegistry;
use chassis_messaging::amqp::consumer::Outcome;
use chassis_messaging::amqp::control::{QueueControl, counted};
use chassis_messaging::amqp::publisher::{Publish, Publisher, PublisherConfig};
use chassis_messaging::message::OutgoingMessage;
use chassis_messaging::sql::inbox::idempotent;
use outbox_support::*;
use serde_json::{Value, json};

async fn effects(pool: &sqlx::SqlitePool, message_id: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM effects WHERE message_id = ?1")
        .bind(message_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn state(control: &ControlRegistry, queue: &str) -> Value {
    control.component("consumer", queue).await.unwrap()["state"].clone()
}

#[tokio::test]
async fn dead_lettered_messages_move_back_and_are_processed_once() {
    let fx = Fixture::with_queue("consumer-control", |q| q).await;
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(&dir).await;
    let inbox = effects_inbox(pool.clone(), "effects").await;

    // Rejected (to the DLQ) until the "fix" is deployed.
    let broken = Arc::new(AtomicBool::new(true));
    let handler = {
        let broken = broken.clone();
        idempotent(inbox.clone(), move |msg, tx| {
            let broken = broken.load(Ordering::SeqCst);
            Box::pin(async move {
                if broken {
                    return Outcome::reject("cannot handle it yet");
                }
                match sqlx::query("INSERT INTO effects (message_id) VALUES (?1)")
                    .bind(msg.message_id())
                    .execute(&mut **tx)
                    .await
                {
                    Ok(_) => Outcome::Ack,
                    Err(e) => Outcome::retry(e.to_string()),
                }
            })
        })
    };
    let (handler, stats) = counted(handler);
    let consumer = fx.consume(handler).await;
    let publisher = Publisher::new(&fx.conn, PublisherConfig::default()).unwrap();
    for id in ["m-1", "m-2"] {
        let msg = OutgoingMessage::new(fx.exchange.clone(), "orders.created", b"{}".to_vec())
            .message_id(id);
        publisher.publish(msg).await.unwrap();
    }

    let control = ControlRegistry::new("orders");
    let queue = fx.queue.name.clone();
    control.register(
        queue.clone(),
        QueueControl::new(fx.conn.clone(), fx.queue.clone()).stats(stats),
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            state(&control, &queue).await["dlq_depth"] == 2
        })
        .await,
        "{}",
        state(&control, &queue).await
    );
    let before = state(&control, &queue).await;
    assert_eq!(before["counters"]["failed"], 2, "{before}");
    assert_eq!(before["in_flight"], 0, "{before}");
    assert_eq!(before["retry_depth"], 0, "{before}");
    // Listed by id with the reason, and given back: reading them moved nothing.
    let mut listed: Vec<&str> = before["dlq_messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    listed.sort_unstable();
    assert_eq!(listed, ["m-1", "m-2"], "{before}");
    assert_eq!(
        before["dlq_messages"][0]["reason"], "cannot handle it yet",
        "{before}"
    );
    assert_eq!(state(&control, &queue).await["dlq_depth"], 2);

    broken.store(false, Ordering::SeqCst);
    for _ in 0..2 {
        let after = control
            .act("consumer", &queue, "requeue_dlq", &json!({ "id": "m-1" }))
            .await
            .unwrap()
            .unwrap();
        assert!(
            after["state"]["dlq_depth"].as_u64().unwrap() <= 1,
            "{after}"
        );
        assert!(
            eventually(Duration::from_secs(10), || async {
                effects(&pool, "m-1").await == 1
            })
            .await
        );
    }
    assert_eq!(effects(&pool, "m-2").await, 0, "m-2 stays in the DLQ");
    let one_left = state(&control, &queue).await;
    assert_eq!(one_left["dlq_depth"], 1);
    assert_eq!(one_left["dlq_messages"][0]["id"], "m-2", "{one_left}");

    control
        .act("consumer", &queue, "requeue_dlq", &json!({}))
        .await
        .unwrap()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            effects(&pool, "m-2").await == 1
        })
        .await
    );
    let after = state(&control, &queue).await;
    assert_eq!(after["dlq_depth"], 0, "{after}");
    assert_eq!(after["counters"]["handled"], 2, "{after}");
    assert_eq!(effects(&pool, "m-1").await, 1, "processed once");

    assert_refused(
        &control,
        "consumer",
        &queue,
        "requeue_dlq",
        json!({ "id": 7 }),
    )
    .await;

    consumer.shutdown().await;
    fx.cleanup().await;
}
