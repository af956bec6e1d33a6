//! Behaviour of the RabbitMQ transport against the real broker, in the spirit of Watermill's
//! universal pub/sub test suite. Every test uses its own exchange, queues and named connection
//! and deletes them at the end, so the tests run in parallel.

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chassis_core::health::HealthCheck;
use chassis_messaging::amqp::connection::ConnectionState;
use chassis_messaging::amqp::consumer::{Consumer, ConsumerConfig, Outcome, typed};
use chassis_messaging::amqp::incoming::{ATTEMPT_HEADER, FAILURE_REASON_HEADER, IncomingMessage};
use chassis_messaging::amqp::publisher::{Publish, Publisher, PublisherConfig};
use chassis_messaging::amqp::topology::RetryPolicy;
use chassis_messaging::envelope::Envelope;
use chassis_messaging::error::ErrorKind;
use chassis_messaging::message::{HeaderValue, OutgoingMessage};
use serde::{Deserialize, Serialize};
use support::{Fixture, force_reconnect, header_str};
use tokio::sync::mpsc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Payload {
    seq: u64,
    key: String,
    blob: String,
}

fn event(seq: u64, key: &str) -> Envelope<Payload> {
    Envelope::new(
        "chassis/tests",
        format!("test.{key}"),
        Payload {
            seq,
            key: key.to_owned(),
            blob: "x".repeat((seq % 64) as usize),
        },
    )
    .subject(format!("agg-{key}"))
}

fn short_tiers() -> RetryPolicy {
    RetryPolicy::with_delays([Duration::from_millis(200)])
}

/// Starts a consumer forwarding every decoded event to a channel and acking it.
async fn forwarding_consumer(
    fx: &Fixture,
    config: ConsumerConfig,
) -> (Consumer, mpsc::UnboundedReceiver<Envelope<Payload>>) {
    typed_tap(fx, config, |e| (Some(e), Outcome::Ack)).await
}

/// Starts a consumer of decoded events; `tap` runs inside the handler (so a panic in it is a
/// panicking handler), its `Some` value goes to the channel and its outcome settles the event.
async fn typed_tap<T: Send + 'static>(
    fx: &Fixture,
    config: ConsumerConfig,
    tap: impl Fn(Envelope<Payload>) -> (Option<T>, Outcome) + Send + Sync + 'static,
) -> (Consumer, mpsc::UnboundedReceiver<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let tap = Arc::new(tap);
    let handle = Consumer::start(
        &fx.conn,
        fx.queue.clone(),
        config,
        typed(move |e: Envelope<Payload>| {
            let (tx, tap) = (tx.clone(), Arc::clone(&tap));
            async move {
                let (value, outcome) = tap(e);
                if let Some(v) = value {
                    let _ = tx.send(v);
                }
                outcome
            }
        }),
    )
    .await
    .expect("start consumer");
    (handle, rx)
}

/// Starts a consumer of raw messages sending what `tap` takes from each one to a channel and
/// settling the message with the outcome `tap` chose.
async fn raw_tap<T: Send + 'static>(
    fx: &Fixture,
    tap: impl Fn(IncomingMessage) -> (T, Outcome) + Send + Sync + 'static,
) -> (Consumer, mpsc::UnboundedReceiver<T>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = fx
        .consume(move |m: IncomingMessage| {
            let (value, outcome) = tap(m);
            let _ = tx.send(value);
            async move { outcome }
        })
        .await;
    (handle, rx)
}

fn publisher(fx: &Fixture) -> Publisher {
    Publisher::new(&fx.conn, PublisherConfig::default()).unwrap()
}

/// Publishes `event(seq, key)` to the fixture's exchange and waits for its confirm.
async fn publish_event(publisher: &Publisher, fx: &Fixture, seq: u64, key: &str) {
    publisher
        .publish(event(seq, key).to_message(fx.exchange.clone()).unwrap())
        .await
        .unwrap();
}

/// Publishes a raw message to `exchange` with routing key `key`.
async fn publish_raw(
    publisher: &Publisher,
    exchange: impl Into<String>,
    key: &str,
    body: &[u8],
) -> Result<(), chassis_messaging::error::Error> {
    publisher
        .publish(OutgoingMessage::new(exchange.into(), key, body.to_vec()))
        .await
}

/// A recorder installed for this thread (the test runs on a current-thread runtime); it lives
/// for the rest of the test process.
fn local_recorder() -> (
    metrics_util::debugging::Snapshotter,
    metrics::LocalRecorderGuard<'static>,
) {
    let recorder: &'static _ =
        Box::leak(Box::new(metrics_util::debugging::DebuggingRecorder::new()));
    (
        recorder.snapshotter(),
        metrics::set_default_local_recorder(recorder),
    )
}

/// Every metric of the recorder: name, labels, value.
fn metric_entries(
    snapshotter: &metrics_util::debugging::Snapshotter,
) -> Vec<(
    String,
    BTreeMap<String, String>,
    metrics_util::debugging::DebugValue,
)> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let labels = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.key().name().to_owned(), labels, value)
        })
        .collect()
}

async fn recv_n<T>(rx: &mut mpsc::UnboundedReceiver<T>, n: usize, within: Duration) -> Vec<T> {
    let mut out = Vec::with_capacity(n);
    let deadline = tokio::time::Instant::now() + within;
    while out.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(v)) => out.push(v),
            _ => break,
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_many_with_payloads_and_headers_intact() {
    let fx = Fixture::new("pubsub", short_tiers()).await;
    assert_eq!(fx.conn.state(), ConnectionState::Connected);
    assert!(fx.conn.health_check().check().await.is_ok());
    let publisher = publisher(&fx);
    let (consumer, mut rx) = forwarding_consumer(&fx, ConsumerConfig::default()).await;

    let sent: Vec<Envelope<Payload>> = (0..300)
        .map(|i| event(i, ["a", "b", "c"][(i % 3) as usize]).correlation_id(format!("corr-{i}")))
        .collect();
    let publishes = sent.iter().map(|e| {
        let msg = e
            .to_message(fx.exchange.clone())
            .unwrap()
            .header("x-custom", e.data.seq as i64);
        publisher.publish(msg)
    });
    for r in futures_util::future::join_all(publishes).await {
        r.expect("confirmed");
    }
    let got = recv_n(&mut rx, sent.len(), Duration::from_secs(20)).await;
    assert_eq!(got.len(), sent.len());
    let by_id: HashMap<_, _> = got.into_iter().map(|e| (e.id, e)).collect();
    for e in &sent {
        let r = by_id.get(&e.id).expect("every event arrives");
        assert_eq!(r, e, "attributes and payload survive the broker");
    }
    consumer.shutdown().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_headers_and_properties_survive() {
    let fx = Fixture::new("headers", short_tiers()).await;
    let publisher = publisher(&fx);
    let (consumer, mut rx) = raw_tap(&fx, |m| (m, Outcome::Ack)).await;
    let mut msg = OutgoingMessage::new(fx.exchange.clone(), "k.1", b"\x00\x01binary".to_vec())
        .content_type("application/octet-stream")
        .message_id("m-1")
        .header("s", "v")
        .header("i", -5_i64)
        .header("b", true);
    msg.correlation_id = Some("c-1".into());
    msg.timestamp = Some(1_700_000_000);
    msg.kind = Some("raw".into());
    publisher.publish(msg.clone()).await.unwrap();
    let got = recv_n(&mut rx, 1, Duration::from_secs(10))
        .await
        .pop()
        .expect("delivered");
    assert_eq!(got.body(), msg.body.as_slice());
    assert_eq!(got.message_id(), Some("m-1"));
    assert_eq!(got.correlation_id(), Some("c-1"));
    assert_eq!(got.timestamp(), Some(1_700_000_000));
    assert_eq!(got.kind(), Some("raw"));
    assert_eq!(got.content_type(), Some("application/octet-stream"));
    assert_eq!(got.routing_key(), "k.1");
    assert_eq!(got.exchange(), fx.exchange);
    assert_eq!(got.attempt(), 1);
    for k in ["s", "i", "b"] {
        assert_eq!(got.header(k), msg.headers.get(k), "header {k}");
    }
    consumer.shutdown().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_short_strings_are_refused_and_the_publisher_lives_on() {
    let fx = Fixture::new("shortstr", short_tiers()).await;
    let publisher = publisher(&fx);
    let long = "x".repeat(256);
    let base = OutgoingMessage::new(fx.exchange.clone(), "k.1", b"{}".to_vec());
    let mut cases = vec![
        base.clone().message_id(long.as_str()),
        OutgoingMessage::new(fx.exchange.clone(), long.as_str(), b"{}".to_vec()),
    ];
    let mut correlated = base.clone();
    correlated.correlation_id = Some(long.clone());
    cases.push(correlated);
    let mut typed_msg = base.clone();
    typed_msg.kind = Some(long.clone());
    cases.push(typed_msg);
    for msg in cases {
        let err = publisher.publish(msg).await.unwrap_err();
        assert!(matches!(err.kind(), ErrorKind::Validation { .. }), "{err}");
        assert!(err.to_string().contains("256 bytes"), "{err}");
    }
    // 255 bytes is the limit, not over it; and the publisher still works.
    let mut at_limit = base.clone();
    at_limit.correlation_id = Some("y".repeat(255));
    publisher.publish(at_limit).await.unwrap();
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_and_consumers_lose_nothing() {
    let fx = Fixture::new("concurrent", short_tiers()).await;
    let (c1, mut rx1) = forwarding_consumer(&fx, ConsumerConfig::default().concurrency(4)).await;
    let (c2, mut rx2) = forwarding_consumer(&fx, ConsumerConfig::default().concurrency(4)).await;
    let mut tasks = Vec::new();
    for p in 0..4u64 {
        let publisher =
            Publisher::new(&fx.conn, PublisherConfig::default().max_in_flight(64)).unwrap();
        let exchange = fx.exchange.clone();
        tasks.push(tokio::spawn(async move {
            let futs = (0..250u64).map(|i| {
                let msg = event(p * 1000 + i, "k")
                    .to_message(exchange.clone())
                    .unwrap();
                let publisher = publisher.clone();
                async move { publisher.publish(msg).await }
            });
            for r in futures_util::future::join_all(futs).await {
                r.expect("confirmed");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < 1000 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            Some(e) = rx1.recv() => { seen.insert(e.data.seq); }
            Some(e) = rx2.recv() => { seen.insert(e.data.seq); }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
    }
    let expected: BTreeSet<u64> = (0..4u64)
        .flat_map(|p| (0..250).map(move |i| p * 1000 + i))
        .collect();
    assert_eq!(seen, expected);
    c1.shutdown().await;
    c2.shutdown().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_leads_to_redelivery_through_the_delay_tier() {
    let fx = Fixture::new("retry", short_tiers()).await;
    let publisher = publisher(&fx);
    let (consumer, mut rx) = raw_tap(&fx, |m| {
        let outcome = if m.attempt() == 1 {
            Outcome::retry("not yet")
        } else {
            Outcome::Ack
        };
        let seen = (m.attempt(), Instant::now(), m.routing_key().to_owned());
        (seen, outcome)
    })
    .await;
    publish_event(&publisher, &fx, 1, "retry").await;
    let got = recv_n(&mut rx, 2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2, "delivered twice");
    assert_eq!((got[0].0, got[1].0), (1, 2));
    assert!(
        got[1].1 - got[0].1 >= Duration::from_millis(190),
        "waited for the tier: {:?}",
        got[1].1 - got[0].1
    );
    assert_eq!(
        got[1].2, "test.retry",
        "the retried copy keeps its original routing key"
    );
    // Nothing more: acked on the second attempt, nothing dead-lettered.
    assert!(
        recv_n(&mut rx, 1, Duration::from_millis(500))
            .await
            .is_empty()
    );
    assert!(
        fx.drain_queue(&fx.queue.dead_letter_queue(), 1, Duration::from_millis(300))
            .await
            .is_empty()
    );
    consumer.shutdown().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_closed_and_reopened_resumes_with_nothing_lost() {
    let fx = Fixture::new("reopen", short_tiers()).await;
    let publisher = publisher(&fx);
    let publish_range = |range: std::ops::Range<u64>| {
        let publisher = publisher.clone();
        let exchange = fx.exchange.clone();
        async move {
            for r in
                futures_util::future::join_all(range.map(|i| {
                    publisher.publish(event(i, "r").to_message(exchange.clone()).unwrap())
                }))
                .await
            {
                r.unwrap();
            }
        }
    };
    publish_range(0..100).await;
    let (consumer, mut rx) =
        forwarding_consumer(&fx, ConsumerConfig::default().prefetch(10).concurrency(2)).await;
    let first = recv_n(&mut rx, 40, Duration::from_secs(10)).await;
    assert_eq!(first.len(), 40);
    consumer.shutdown().await;
    let mut seen: BTreeSet<u64> = first.iter().map(|e| e.data.seq).collect();
    // Whatever was handled before shutdown completed still counts.
    while let Ok(e) = rx.try_recv() {
        seen.insert(e.data.seq);
    }
    publish_range(100..200).await;
    let (consumer, mut rx) = forwarding_consumer(&fx, ConsumerConfig::default()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < 200 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => {
                seen.insert(e.data.seq);
            }
            _ => break,
        }
    }
    assert_eq!(seen, (0..200).collect::<BTreeSet<_>>());
    consumer.shutdown().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_routing_key_order_under_a_single_consumer() {
    let fx = Fixture::new("order", short_tiers()).await;
    let publisher = publisher(&fx);
    // Published in order (each awaited), interleaving three keys.
    for i in 0..150u64 {
        let key = ["x", "y", "z"][(i % 3) as usize];
        publish_event(&publisher, &fx, i, key).await;
    }
    let (consumer, mut rx) =
        forwarding_consumer(&fx, ConsumerConfig::default().prefetch(1).concurrency(1)).await;
    let got = recv_n(&mut rx, 150, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 150);
    let mut per_key: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for e in got {
        per_key.entry(e.data.key).or_default().push(e.data.seq);
    }
    for (key, seqs) in per_key {
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, sorted, "order of key {key}");
    }
    consumer.shutdown().await;
    fx.cleanup().await;
}

/// On an exchange declared `Unroutable::Accept` the broker's return is an outcome: the publish
/// succeeds as `Routing::Unrouted`, recorded with the `unrouted` outcome; a message that does
/// reach a queue there is `Queued`, and the fixture's own (retrying) exchange still fails.
#[tokio::test(flavor = "current_thread")]
async fn accepting_exchange_turns_a_return_into_unrouted() {
    use chassis_messaging::amqp::publisher::Routing;
    use chassis_messaging::amqp::topology::{ExchangeConfig, TopologyConfig, Unroutable};
    use chassis_observability::metrics::names;
    use metrics_util::debugging::DebugValue;

    let (snapshotter, _local) = local_recorder();
    let fx = Fixture::with_binding("accept-unroutable", "only.this", |q| q).await;
    let audit = format!("{}.audit", fx.name);
    fx.conn
        .declare(
            TopologyConfig::new()
                .exchange(ExchangeConfig::topic(audit.clone()).unroutable(Unroutable::Accept)),
        )
        .await
        .unwrap();
    let publisher = publisher(&fx);
    let routed = publisher
        .publish_routed(OutgoingMessage::new(
            audit.clone(),
            "nobody.listens",
            vec![1],
        ))
        .await
        .unwrap();
    assert_eq!(routed, Routing::Unrouted);
    publisher
        .publish(OutgoingMessage::new(
            audit.clone(),
            "nobody.listens",
            vec![2],
        ))
        .await
        .expect("publish succeeds too");
    let err = publisher
        .publish_routed(OutgoingMessage::new(
            fx.exchange.clone(),
            "something.else",
            vec![3],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unroutable { .. }), "{err}");
    let routed = publisher
        .publish_routed(OutgoingMessage::new(
            fx.exchange.clone(),
            "only.this",
            vec![4],
        ))
        .await
        .unwrap();
    assert_eq!(routed, Routing::Queued);

    let mut unrouted = 0;
    for (name, labels, value) in metric_entries(&snapshotter) {
        let outcome = labels.get(names::labels::OUTCOME);
        let dest = labels.get(names::labels::MESSAGING_DESTINATION_NAME);
        if let (true, Some("unrouted"), DebugValue::Histogram(h)) = (
            name == names::MESSAGING_PUBLISH_DURATION,
            outcome.map(String::as_str),
            value,
        ) {
            assert_eq!(dest.map(String::as_str), Some(audit.as_str()));
            unrouted += h.len();
        }
    }
    assert_eq!(unrouted, 2);
    let ch = fx.conn.create_channel().await.unwrap();
    let _ = ch
        .exchange_delete(audit.as_str().into(), Default::default())
        .await;
    let _ = ch.close(200, "cleanup".into()).await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_and_missing_exchange_are_typed_errors() {
    // Only one binding key, so other keys are unroutable.
    let fx = Fixture::with_binding("unroutable", "only.this", |q| q).await;
    let publisher = publisher(&fx);
    let err = publish_raw(&publisher, &fx.exchange, "something.else", b"{}")
        .await
        .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Unroutable { exchange, routing_key } if *exchange == fx.exchange && routing_key == "something.else"),
        "{err:?}"
    );
    // The publisher keeps working after the return.
    publish_raw(&publisher, &fx.exchange, "only.this", b"{}")
        .await
        .unwrap();
    let err = publish_raw(&publisher, format!("{}.missing", fx.name), "k", b"{}")
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Topology), "{err:?}");
    // ... and after the broker closed its channel for the missing exchange.
    publish_raw(&publisher, &fx.exchange, "only.this", b"{}")
        .await
        .unwrap();
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nacked_publish_is_published_again_until_the_queue_takes_it() {
    use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
    use lapin::types::{AMQPValue, FieldTable, LongString};

    // A queue that takes one message and nacks every further publish while it is full.
    let full = support::unique("nacked");
    let raw = lapin::Connection::connect(&support::amqp_url(), Default::default())
        .await
        .unwrap();
    let ch = raw.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString(LongString::from("reject-publish".as_bytes())),
    );
    ch.queue_declare(full.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .unwrap();
    let conn = support::connect("nacked").await;
    let short = PublisherConfig::default().confirm_timeout(Duration::from_millis(800));
    let publisher = Publisher::new(&conn, short).unwrap();
    publish_raw(&publisher, "", &full, b"first").await.unwrap();
    // Still full when the confirm timeout has passed: the nack is the answer.
    let err = publish_raw(&publisher, "", &full, b"refused")
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Nacked), "{err:?}");

    // Room is made while a publish is being nacked: one of its next attempts gets in.
    let patient = Publisher::new(&conn, PublisherConfig::default()).unwrap();
    let pending = {
        let full = full.clone();
        tokio::spawn(async move { publish_raw(&patient, "", &full, b"second").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let get = |ch: lapin::Channel, q: String| async move {
        ch.basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .map(|m| m.delivery.data)
    };
    assert_eq!(
        get(ch.clone(), full.clone()).await.as_deref(),
        Some(&b"first"[..])
    );
    pending
        .await
        .unwrap()
        .expect("published once the queue had room");
    assert_eq!(
        get(ch.clone(), full.clone()).await.as_deref(),
        Some(&b"second"[..])
    );
    let _ = ch
        .queue_delete(full.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = raw.close(200, "done".into()).await;
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_message_goes_to_dlq_after_configured_attempts_while_others_flow() {
    let fx = Fixture::new(
        "poison",
        RetryPolicy::with_delays([Duration::from_millis(100), Duration::from_millis(200)])
            .max_attempts(3),
    )
    .await;
    let publisher = publisher(&fx);
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a = Arc::clone(&attempts);
    let (consumer, mut rx) = typed_tap(&fx, ConsumerConfig::default().concurrency(4), move |e| {
        if e.data.key == "poison" {
            a.lock().unwrap().push(Instant::now());
            (None, Outcome::retry("cannot process poison"))
        } else {
            (Some(e.data.seq), Outcome::Ack)
        }
    })
    .await;
    let poison = event(999, "poison");
    publisher
        .publish(poison.to_message(fx.exchange.clone()).unwrap())
        .await
        .unwrap();
    for i in 0..50 {
        publish_event(&publisher, &fx, i, "good").await;
    }
    let good = recv_n(&mut rx, 50, Duration::from_secs(10)).await;
    assert_eq!(good.len(), 50, "other messages keep flowing");
    let dead = fx
        .drain_queue(&fx.queue.dead_letter_queue(), 1, Duration::from_secs(10))
        .await;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(
        header_str(d, "cloudEvents:id").as_deref(),
        Some(poison.id.to_string().as_str())
    );
    assert_eq!(header_str(d, ATTEMPT_HEADER).as_deref(), Some("3"));
    let reason = header_str(d, FAILURE_REASON_HEADER).unwrap();
    assert!(
        reason.contains("cannot process poison") && reason.contains("3 attempt"),
        "{reason}"
    );
    let times = attempts.lock().unwrap().clone();
    assert_eq!(times.len(), 3, "exactly the configured attempts");
    assert!(times[1] - times[0] >= Duration::from_millis(90));
    assert!(
        times[2] - times[1] >= Duration::from_millis(190),
        "second tier is longer"
    );
    consumer.shutdown().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_message_is_dead_lettered_with_reason_and_consumer_continues() {
    let fx = Fixture::new("undecodable", short_tiers()).await;
    let publisher = publisher(&fx);
    let (consumer, mut rx) = forwarding_consumer(&fx, ConsumerConfig::default()).await;
    // Not an event: no CloudEvents headers.
    publish_raw(&publisher, &fx.exchange, "junk", b"not json")
        .await
        .unwrap();
    // An event whose payload has the wrong shape.
    let mut wrong = event(1, "bad").to_message(fx.exchange.clone()).unwrap();
    wrong.body = br#"{"seq":"NaN"}"#.to_vec();
    publisher.publish(wrong).await.unwrap();
    let ok = event(2, "fine");
    publisher
        .publish(ok.to_message(fx.exchange.clone()).unwrap())
        .await
        .unwrap();
    let got = recv_n(&mut rx, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].id, ok.id, "the consumer keeps going");
    let dead = fx
        .drain_queue(&fx.queue.dead_letter_queue(), 2, Duration::from_secs(10))
        .await;
    assert_eq!(dead.len(), 2);
    let reasons: Vec<String> = dead
        .iter()
        .map(|d| header_str(d, FAILURE_REASON_HEADER).unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("specversion")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("cannot decode")),
        "{reasons:?}"
    );
    consumer.shutdown().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_handler_does_not_kill_the_consumer() {
    let fx = Fixture::new(
        "panic",
        RetryPolicy::with_delays([Duration::from_millis(100)]).max_attempts(2),
    )
    .await;
    let publisher = publisher(&fx);
    let (consumer, mut rx) = typed_tap(&fx, ConsumerConfig::default(), |e| {
        assert_ne!(e.data.key, "boom", "handler bug");
        (Some(e.data.seq), Outcome::Ack)
    })
    .await;
    publish_event(&publisher, &fx, 0, "boom").await;
    for i in 1..=20 {
        publish_event(&publisher, &fx, i, "ok").await;
    }
    assert_eq!(recv_n(&mut rx, 20, Duration::from_secs(10)).await.len(), 20);
    let dead = fx
        .drain_queue(&fx.queue.dead_letter_queue(), 1, Duration::from_secs(10))
        .await;
    assert_eq!(dead.len(), 1);
    assert!(
        header_str(&dead[0], FAILURE_REASON_HEADER)
            .unwrap()
            .contains("handler panicked")
    );
    assert!(!consumer.is_finished());
    consumer.shutdown().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_id_crosses_the_broker() {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    let fx = Fixture::new("trace", short_tiers()).await;
    let publisher = publisher(&fx);
    let (consumer, mut rx) = raw_tap(&fx, |m| {
        let trace_id = m.trace_context().span().span_context().trace_id();
        ((trace_id, m.header("traceparent").cloned()), Outcome::Ack)
    })
    .await;
    let trace_id = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
    let sc = SpanContext::new(
        trace_id,
        SpanId::from_hex("b7ad6b7169203331").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let cx = opentelemetry::Context::new().with_remote_span_context(sc);
    {
        // The publisher injects the current context (here an attached remote parent; in a
        // service, the current tracing span's) when the publish starts.
        let msg = event(1, "t").to_message(fx.exchange.clone()).unwrap();
        let _guard = cx.attach();
        publisher.publish(msg).await.unwrap();
    }
    let (got, header) = recv_n(&mut rx, 1, Duration::from_secs(10))
        .await
        .pop()
        .expect("delivered");
    assert_eq!(got, trace_id);
    match header {
        Some(HeaderValue::String(tp)) => {
            assert!(tp.contains("0af7651916cd43dd8448eb211c80319c"), "{tp}")
        }
        other => panic!("no traceparent header: {other:?}"),
    }
    consumer.shutdown().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_force_closed_mid_stream_loses_no_confirmed_message() {
    let fx = Fixture::new("killconn", short_tiers()).await;
    let publisher = Publisher::new(
        &fx.conn,
        PublisherConfig::default().confirm_timeout(Duration::from_secs(5)),
    )
    .unwrap();
    let (consumer, mut rx) =
        forwarding_consumer(&fx, ConsumerConfig::default().prefetch(50).concurrency(8)).await;

    let confirmed = Arc::new(Mutex::new(BTreeSet::new()));
    let failed = Arc::new(Mutex::new(0usize));
    let total = 1500u64;
    let producer = {
        let publisher = publisher.clone();
        let exchange = fx.exchange.clone();
        let confirmed = Arc::clone(&confirmed);
        let failed = Arc::clone(&failed);
        tokio::spawn(async move {
            for chunk in (0..total).collect::<Vec<_>>().chunks(25) {
                let futs = chunk.iter().map(|&i| {
                    let publisher = publisher.clone();
                    let msg = event(i, "k").to_message(exchange.clone()).unwrap();
                    async move { (i, publisher.publish(msg).await) }
                });
                for (i, r) in futures_util::future::join_all(futs).await {
                    match r {
                        Ok(()) => {
                            confirmed.lock().unwrap().insert(i);
                        }
                        Err(e) => {
                            assert!(
                                e.is_transient(),
                                "only transient failures during the outage: {e}"
                            );
                            *failed.lock().unwrap() += 1;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // Let the stream get going, then kill our (and only our) connection.
    let mut seen = BTreeSet::new();
    for e in recv_n(&mut rx, 200, Duration::from_secs(10)).await {
        seen.insert(e.data.seq);
    }
    force_reconnect(&fx).await;
    producer.await.unwrap();
    let confirmed = confirmed.lock().unwrap().clone();
    assert!(
        confirmed.len() as u64 > total / 2,
        "most publishes succeed: {}",
        confirmed.len()
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !confirmed.is_subset(&seen) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => {
                seen.insert(e.data.seq);
            }
            _ => break,
        }
    }
    let missing: Vec<_> = confirmed.difference(&seen).take(10).collect();
    assert!(
        missing.is_empty(),
        "confirmed but never consumed: {missing:?} (failed publishes: {})",
        failed.lock().unwrap()
    );
    // The publisher works again after the outage.
    publish_event(&publisher, &fx, total, "k").await;
    consumer.shutdown().await;
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_handlers_finish_and_state_is_closed() {
    let fx = Fixture::new("shutdown", short_tiers()).await;
    let publisher = publisher(&fx);
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    let finished = Arc::new(Mutex::new(0));
    let f = Arc::clone(&finished);
    let consumer = Consumer::start(
        &fx.conn,
        fx.queue.clone(),
        ConsumerConfig::default().concurrency(2),
        move |_m: IncomingMessage| {
            let started_tx = started_tx.clone();
            let f = Arc::clone(&f);
            async move {
                let _ = started_tx.send(());
                tokio::time::sleep(Duration::from_millis(300)).await;
                *f.lock().unwrap() += 1;
                Outcome::Ack
            }
        },
    )
    .await
    .unwrap();
    for i in 0..2 {
        publish_event(&publisher, &fx, i, "s").await;
    }
    assert_eq!(
        recv_n(&mut started_rx, 2, Duration::from_secs(10))
            .await
            .len(),
        2
    );
    consumer.shutdown().await;
    assert_eq!(
        *finished.lock().unwrap(),
        2,
        "in-flight handlers completed before shutdown returned"
    );
    // Acked: nothing comes back for a new consumer.
    let (c2, mut rx) = forwarding_consumer(&fx, ConsumerConfig::default()).await;
    assert!(
        recv_n(&mut rx, 1, Duration::from_millis(500))
            .await
            .is_empty()
    );
    c2.shutdown().await;
    let conn = fx.conn.clone();
    let health = conn.health_check();
    fx.cleanup().await;
    assert_eq!(conn.state(), ConnectionState::Closed);
    assert!(health.check().await.is_err());
    let err = publisher
        .publish(event(9, "s").to_message("x").unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Shutdown), "{err:?}");
}

/// An acknowledgement is never sent on a channel that has since been recovered. A
/// handler still running when the connection is replaced finishes with `Ack` afterwards: that
/// ack must not go out on the new channel, where the delivery tag means something else (an
/// unknown or already-acked tag makes the broker close the channel with PRECONDITION_FAILED,
/// which would requeue everything unacked on it). The broker redelivers the message instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_of_a_delivery_from_before_a_reconnect_never_goes_out_on_the_new_channel() {
    async fn next(rx: &mut mpsc::UnboundedReceiver<(u64, bool)>) -> (u64, bool) {
        tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("a delivery")
            .expect("consumer alive")
    }
    let fx = Fixture::new("stale-ack", short_tiers()).await;
    let publisher = publisher(&fx);
    let (release_stale, stale_gate) = tokio::sync::watch::channel(false);
    let (release_second, second_gate) = tokio::sync::watch::channel(false);
    let (tx, mut rx) = mpsc::unbounded_channel::<(u64, bool)>();
    let consumer = Consumer::start(
        &fx.conn,
        fx.queue.clone(),
        ConsumerConfig::default().concurrency(4),
        move |m: IncomingMessage| {
            let tx = tx.clone();
            let (mut stale_gate, mut second_gate) = (stale_gate.clone(), second_gate.clone());
            async move {
                let seq = m.decode::<Payload>().unwrap().data.seq;
                let _ = tx.send((seq, m.redelivered()));
                if seq == 1 && !m.redelivered() {
                    // Held across the reconnect: this delivery's channel dies meanwhile.
                    let _ = stale_gate.wait_for(|open| *open).await;
                }
                if seq == 2 {
                    // Unacked on the new channel while the stale ack is attempted: a channel
                    // closed by the broker would requeue and redeliver it.
                    let _ = second_gate.wait_for(|open| *open).await;
                }
                Outcome::Ack
            }
        },
    )
    .await
    .unwrap();
    let publish = |seq: u64| {
        let msg = event(seq, "k").to_message(fx.exchange.clone()).unwrap();
        let publisher = publisher.clone();
        async move {
            // Retried: the first publish after the reconnect may still meet the dead channel.
            for _ in 0..50 {
                match publisher.publish(msg.clone()).await {
                    Ok(()) => return,
                    Err(e) if e.is_transient() => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("publish {seq}: {e}"),
                }
            }
            panic!("publish {seq}: the broker never confirmed");
        }
    };

    publish(1).await;
    assert_eq!(next(&mut rx).await, (1, false));
    force_reconnect(&fx).await;
    // The broker requeued the unacked message; the re-subscribed consumer gets it again on the
    // new channel and acks it there.
    assert_eq!(
        next(&mut rx).await,
        (1, true),
        "redelivered after the reconnect"
    );

    publish(2).await;
    assert_eq!(next(&mut rx).await, (2, false));
    // Now the handler of the pre-reconnect delivery returns `Ack`.
    release_stale.send(true).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        rx.try_recv().is_err(),
        "nothing redelivered: the new channel was not closed by a stale ack"
    );
    release_second.send(true).unwrap();

    publish(3).await;
    assert_eq!(
        next(&mut rx).await,
        (3, false),
        "the consumer keeps consuming"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        rx.try_recv().is_err(),
        "every message handled exactly as expected"
    );
    assert!(!consumer.is_finished());
    consumer.shutdown().await;
    let left = fx
        .drain_queue(&fx.queue.name, 1, Duration::from_millis(500))
        .await;
    assert!(
        left.is_empty(),
        "every message was acked once: {} left",
        left.len()
    );
    fx.cleanup().await;
}

/// The publisher's metrics (handles cached per destination on the success path, looked up per
/// outcome on failures) land on the recorder with the right labels and counts.
#[tokio::test(flavor = "current_thread")]
async fn publisher_metrics_per_destination_and_outcome() {
    use chassis_observability::metrics::names;
    use metrics_util::debugging::DebugValue;

    let (snapshotter, _local) = local_recorder();
    let fx = Fixture::new("pub-metrics", short_tiers()).await;
    let publisher = publisher(&fx);
    for seq in 0..3 {
        let msg = event(seq, "k").to_message(fx.exchange.clone()).unwrap();
        publisher.publish(msg).await.unwrap();
    }
    let unroutable = OutgoingMessage::new("amq.direct", format!("{}.nobody", fx.name), vec![1]);
    let err = publisher.publish(unroutable).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unroutable { .. }), "{err}");

    let mut sent = HashMap::new();
    let mut durations = HashMap::new();
    for (name, labels, value) in metric_entries(&snapshotter) {
        let dest = labels
            .get(names::labels::MESSAGING_DESTINATION_NAME)
            .cloned()
            .unwrap_or_default();
        match (name.as_str(), value) {
            (n, DebugValue::Counter(c)) if n == names::MESSAGING_CLIENT_SENT_MESSAGES => {
                sent.insert(dest, c);
            }
            (n, DebugValue::Histogram(h)) if n == names::MESSAGING_PUBLISH_DURATION => {
                let outcome = labels[names::labels::OUTCOME].clone();
                durations.insert((dest, outcome), h.len());
            }
            _ => {}
        }
    }
    assert_eq!(sent.get(&fx.exchange), Some(&3), "{sent:?}");
    assert_eq!(
        sent.get("amq.direct"),
        None,
        "a failed publish is not counted as sent"
    );
    assert_eq!(
        durations.get(&(fx.exchange.clone(), "ok".to_owned())),
        Some(&3),
        "{durations:?}"
    );
    assert_eq!(
        durations.get(&("amq.direct".to_owned(), "unroutable".to_owned())),
        Some(&1),
        "{durations:?}"
    );
    fx.cleanup().await;
}
