//! The consumer's lag gauges against the broker: `messaging_queue_messages_ready` follows the
//! queue's ready messages (polled), `messaging_consumer_unacked_messages` the deliveries the
//! consumer has taken in and not settled, down to 0 once they are acked.
//!
//! A binary of its own: it installs a global metrics recorder.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chassis_core::metric_catalogue as names;
use chassis_messaging::{
    Consumer, ConsumerConfig, IncomingMessage, Outcome, OutgoingMessage, Publish, Publisher,
    PublisherConfig,
};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use support::Fixture;
use tokio::sync::Semaphore;

/// A recorder keeping gauges only, readable any number of times (the debugging recorder of
/// metrics-util resets a gauge when it is read).
#[derive(Clone, Default)]
struct Gauges(Arc<Mutex<HashMap<Key, Arc<AtomicU64>>>>);

impl Recorder for Gauges {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let cell = self
            .0
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        Gauge::from_arc(cell)
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// The value of gauge `name` for `queue`, if registered.
fn gauge(gauges: &Gauges, name: &str, queue: &str) -> Option<f64> {
    gauges.0.lock().unwrap().iter().find_map(|(key, cell)| {
        let ours = key.name() == name
            && key.labels().any(|l| {
                l.key() == names::labels::MESSAGING_DESTINATION_NAME && l.value() == queue
            });
        ours.then(|| f64::from_bits(cell.load(Ordering::SeqCst)))
    })
}

/// Waits until both gauges read `(ready, unacked)`; returns what they read last otherwise.
async fn gauges_reach(
    gauges: &Gauges,
    queue: &str,
    want: (f64, f64),
    within: Duration,
) -> Result<(), (Option<f64>, Option<f64>)> {
    let deadline = Instant::now() + within;
    loop {
        let got = (
            gauge(gauges, names::MESSAGING_QUEUE_MESSAGES_READY, queue),
            gauge(gauges, names::MESSAGING_CONSUMER_UNACKED_MESSAGES, queue),
        );
        if got == (Some(want.0), Some(want.1)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(got);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_unacked_gauges_follow_the_backlog() {
    let gauges = Gauges::default();
    metrics::set_global_recorder(gauges.clone()).expect("the only recorder of this binary");

    let fx = Fixture::with_queue("lag", |q| q).await;
    let queue = fx.queue.name.clone();
    // Handlers wait for the gate: two run at a time, the broker pushes four (the prefetch),
    // the rest stays ready in the queue.
    let gate = Arc::new(Semaphore::new(0));
    let handler_gate = gate.clone();
    let consumer = Consumer::start(
        &fx.conn,
        fx.queue.clone(),
        ConsumerConfig::default()
            .prefetch(4)
            .concurrency(2)
            .queue_depth_interval(Duration::from_millis(100)),
        move |_msg: IncomingMessage| {
            let gate = handler_gate.clone();
            async move {
                gate.acquire().await.expect("gate open").forget();
                Outcome::Ack
            }
        },
    )
    .await
    .expect("consumer");
    let initial = gauges_reach(&gauges, &queue, (0.0, 0.0), Duration::from_secs(5)).await;

    let publisher = Publisher::new(&fx.conn, PublisherConfig::default()).unwrap();
    for i in 0..10 {
        publisher
            .publish(OutgoingMessage::new(
                &fx.exchange,
                "k",
                format!("m{i}").into_bytes(),
            ))
            .await
            .expect("published");
    }
    // Two handlers hold a delivery each; two more wait in the channel for a handler slot.
    let backlog = gauges_reach(&gauges, &queue, (6.0, 2.0), Duration::from_secs(10)).await;

    gate.add_permits(10);
    let drained = gauges_reach(&gauges, &queue, (0.0, 0.0), Duration::from_secs(10)).await;
    consumer.shutdown().await;
    fx.cleanup().await;
    initial.expect("(ready, unacked) at 0 before any message");
    backlog.expect("(ready, unacked) = (6, 2) with the handlers blocked");
    drained.expect("(ready, unacked) back at 0 once everything was acked");
}
