//! Event versions against the real broker: a consumer reading version 2 takes version-2 events
//! as they are and version-1 events (with the attribute, or from before versions) through the
//! upcaster, and dead-letters a version it does not know with the reason, while the others
//! flow.

mod support;

use std::time::Duration;

use chassis_messaging::amqp::consumer::Outcome;
use chassis_messaging::amqp::incoming::FAILURE_REASON_HEADER;
use chassis_messaging::amqp::publisher::{Publish, Publisher, PublisherConfig};
use chassis_messaging::amqp::topology::RetryPolicy;
use chassis_messaging::envelope::{EVENTVERSION, Envelope};
use chassis_messaging::version::{Versioned, versioned};
use serde::{Deserialize, Serialize};
use support::{Fixture, header_str, recv_n};
use tokio::sync::mpsc;

/// Version 1: the name in two fields.
#[derive(Debug, Serialize, Deserialize)]
struct NamedV1 {
    seq: u64,
    first: String,
    last: String,
}

/// Version 2: one display name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Named {
    seq: u64,
    name: String,
}

impl Versioned for Named {
    const VERSION: u32 = 2;
    const UPCASTS_FROM: &'static [u32] = &[1];
    fn upcast(from: u32, data: serde_json::Value) -> Result<Self, serde_json::Error> {
        assert_eq!(from, 1);
        let v1: NamedV1 = serde_json::from_value(data)?;
        Ok(Named {
            seq: v1.seq,
            name: format!("{} {}", v1.first, v1.last),
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v2_consumer_reads_v1_and_v2_and_dead_letters_v3_with_the_reason() {
    let fx = Fixture::new(
        "versions",
        RetryPolicy::with_delays([Duration::from_millis(100)]),
    )
    .await;
    let publisher = Publisher::new(&fx.conn, PublisherConfig::default()).unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let consumer = fx
        .consume(versioned(move |e: Envelope<Named>| {
            let tx = tx.clone();
            async move {
                tx.send((e.version, e.data)).unwrap();
                Outcome::Ack
            }
        }))
        .await;

    let v1 = Envelope::new(
        "test/old",
        "person.named",
        NamedV1 {
            seq: 1,
            first: "Ada".into(),
            last: "Lovelace".into(),
        },
    )
    .version(1);
    let mut legacy = Envelope::new(
        "test/older",
        "person.named",
        NamedV1 {
            seq: 2,
            first: "Grace".into(),
            last: "Hopper".into(),
        },
    )
    .to_message(fx.exchange.clone())
    .unwrap();
    legacy.headers.remove(EVENTVERSION); // published before events had versions
    let v2 = Envelope::new(
        "test/new",
        "person.named",
        Named {
            seq: 3,
            name: "Alan Turing".into(),
        },
    )
    .version(2);
    let v3 = Envelope::new("test/future", "person.named", serde_json::json!({"seq": 4})).version(3);

    publisher
        .publish(v1.to_message(fx.exchange.clone()).unwrap())
        .await
        .unwrap();
    publisher.publish(legacy).await.unwrap();
    publisher
        .publish(v3.to_message(fx.exchange.clone()).unwrap())
        .await
        .unwrap();
    publisher
        .publish(v2.to_message(fx.exchange.clone()).unwrap())
        .await
        .unwrap();

    let mut read = recv_n(&mut rx, 3, "the readable versions").await;
    read.sort_by_key(|(_, n)| n.seq);
    let names: Vec<(u32, &str)> = read.iter().map(|(v, n)| (*v, n.name.as_str())).collect();
    assert_eq!(
        names,
        [(1, "Ada Lovelace"), (1, "Grace Hopper"), (2, "Alan Turing")]
    );

    let dead = fx
        .drain_queue(&fx.queue.dead_letter_queue(), 1, Duration::from_secs(10))
        .await;
    assert_eq!(dead.len(), 1, "only the unknown version is dead-lettered");
    assert_eq!(
        header_str(&dead[0], "cloudEvents:id").as_deref(),
        Some(v3.id.to_string().as_str())
    );
    assert_eq!(header_str(&dead[0], EVENTVERSION).as_deref(), Some("3"));
    let reason = header_str(&dead[0], FAILURE_REASON_HEADER).unwrap();
    assert!(
        reason.contains("unsupported event version: person.named version 3")
            && reason.contains("reads versions [1, 2]"),
        "{reason}"
    );
    // Rejected at once, not retried: the reason is the version's, on the first attempt.
    assert_eq!(
        header_str(&dead[0], "x-chassis-attempt").as_deref(),
        Some("1")
    );
    assert!(rx.try_recv().is_err(), "the handler never saw version 3");

    consumer.shutdown().await;
    fx.cleanup().await;
}
