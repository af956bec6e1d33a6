//! Pins down how lapin 4.12.3's own auto-recovery behaves against this broker when the
//! connection is force-closed, the evidence behind the connection manager's design (see
//! `chassis_messaging::amqp::connection`).

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ConnectionProperties};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lapin_auto_recover_after_forced_close() {
    let name = support::unique("lapin-recovery");
    let conn = lapin::Connection::connect(
        &support::amqp_url(),
        ConnectionProperties::default()
            .with_connection_name(name.clone().into())
            .enable_auto_recover(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queue = format!("{name}.q");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let publish = |body: &'static [u8]| {
        let ch = ch.clone();
        let queue = queue.clone();
        async move {
            ch.basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await
        }
    };
    publish(b"before").await.unwrap();
    let d = consumer.next().await.unwrap().unwrap();
    assert_eq!(d.data, b"before");

    assert_eq!(support::kill_connection(&name).await, 1);
    // The acker of a delivery from before the loss is poisoned: acking it is refused.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = d.acker.ack(BasicAckOptions::default()).await;
    assert!(
        matches!(acked, Ok(false)),
        "pre-loss ack refused: {acked:?}"
    );
    assert!(!d.acker.usable());

    let mut recovered = false;
    for _ in 0..50 {
        match publish(b"after").await {
            Ok(c) => {
                println!("publish after loss: {c:?}");
                recovered = true;
                break;
            }
            Err(e) => {
                println!("publish after loss failed: {e}");
                let _ = tokio::time::timeout(Duration::from_secs(2), ch.wait_for_recovery(e)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "lapin recovered the channel for publishing");
    assert!(conn.status().connected());
    // The recovered consumer gets the unacked message again, then the new one.
    let mut bodies = Vec::new();
    while bodies.len() < 2 {
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("consumer recovered")
            .expect("stream open")
            .expect("delivery");
        d.acker.ack(BasicAckOptions::default()).await.unwrap();
        bodies.push(d.data);
    }
    assert_eq!(bodies, [b"before".to_vec(), b"after".to_vec()]);
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "bye".into()).await;
}
