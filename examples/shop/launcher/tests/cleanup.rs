//! `cleanup::delete_namespace` against the real RabbitMQ (`AMQP_URL`): it deletes every queue
//! and exchange of the namespace, the kinds the chassis declares (a quorum work queue with its
//! dead-letter exchange, a classic dead-letter queue holding a message, a TTL retry tier, a
//! topic exchange with bindings), and nothing of a neighbour whose names share all but the
//! namespace's final `.`.

mod support;

use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions};
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, ExchangeKind};
use shop_launcher::{cleanup, default_amqp_url};
use support::listed;

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}

#[tokio::test]
async fn every_queue_and_exchange_of_the_namespace_goes_and_nothing_else() {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let ns = format!("cleanup-{id}.");
    let neighbour = format!("cleanup-{id}x.");
    let conn = lapin::Connection::connect(&default_amqp_url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let exchange = |name: String, kind: ExchangeKind| {
        let ch = ch.clone();
        async move {
            ch.exchange_declare(
                name.as_str().into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        }
    };
    let (events, q) = (format!("{ns}shop.events"), format!("{ns}orders.saga"));
    let (dlx, dlq, retry) = (
        format!("{q}.dlx"),
        format!("{q}.dlq"),
        format!("{q}.retry.1000ms"),
    );
    exchange(events.clone(), ExchangeKind::Topic).await;
    exchange(dlx.clone(), ExchangeKind::Direct).await;
    exchange(format!("{neighbour}shop.events"), ExchangeKind::Topic).await;
    ch.queue_declare(
        q.as_str().into(),
        durable,
        args(&[
            ("x-queue-type", text("quorum")),
            ("x-dead-letter-exchange", text(&dlx)),
            ("x-dead-letter-routing-key", text(&q)),
            ("x-delivery-limit", AMQPValue::LongLongInt(3)),
        ]),
    )
    .await
    .unwrap();
    ch.queue_declare(
        dlq.as_str().into(),
        durable,
        args(&[("x-queue-type", text("classic"))]),
    )
    .await
    .unwrap();
    ch.queue_declare(
        retry.as_str().into(),
        durable,
        args(&[
            ("x-queue-type", text("classic")),
            ("x-message-ttl", AMQPValue::LongLongInt(1000)),
            ("x-dead-letter-exchange", text("")),
            ("x-dead-letter-routing-key", text(&q)),
        ]),
    )
    .await
    .unwrap();
    let other = format!("{neighbour}orders.saga");
    ch.queue_declare(other.as_str().into(), durable, FieldTable::default())
        .await
        .unwrap();
    for (queue, exchange, key) in [(&q, &events, "shop.order.*"), (&dlq, &dlx, q.as_str())] {
        ch.queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    // A parked message: a non-empty queue goes too.
    ch.basic_publish(
        "".into(),
        dlq.as_str().into(),
        BasicPublishOptions::default(),
        b"dead",
        BasicProperties::default(),
    )
    .await
    .unwrap();

    let mut queues = vec![q.clone(), dlq.clone(), retry.clone()];
    queues.sort();
    let mut exchanges = vec![events.clone(), dlx.clone()];
    exchanges.sort();
    assert_eq!(listed("queues", &ns), queues);
    assert_eq!(listed("exchanges", &ns), exchanges);

    let mut deleted = cleanup::delete_namespace(&default_amqp_url(), &ns)
        .await
        .unwrap();
    deleted.queues.sort();
    deleted.exchanges.sort();
    assert_eq!((deleted.queues, deleted.exchanges), (queues, exchanges));
    assert_eq!(listed("queues", &ns), Vec::<String>::new());
    assert_eq!(listed("exchanges", &ns), Vec::<String>::new());
    // The neighbour is untouched.
    assert_eq!(listed("queues", &neighbour), vec![other.clone()]);
    assert_eq!(
        listed("exchanges", &neighbour),
        [format!("{neighbour}shop.events")]
    );
    // Nothing left: a second run deletes nothing and succeeds.
    assert_eq!(
        cleanup::delete_namespace(&default_amqp_url(), &ns)
            .await
            .unwrap(),
        cleanup::Deleted::default()
    );

    ch.queue_delete(other.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ch.exchange_delete(
        format!("{neighbour}shop.events").as_str().into(),
        ExchangeDeleteOptions::default(),
    )
    .await
    .unwrap();
    conn.close(200, "done".into()).await.unwrap();
}
