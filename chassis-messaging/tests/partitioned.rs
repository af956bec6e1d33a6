//! The partitioned consumer against the real broker: per-key order with concurrency, exactly
//! once, a slow key holding up only its own lane, retries leaving their lane. Every test uses
//! its own exchange, queues and named connection and deletes them at the end.
//!
//! `--nocapture` shows the throughput of the partitioned consumer beside the plain one with the
//! same concurrency and prefetch (`PARTITIONED …` lines).

mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chassis_messaging::amqp::consumer::{Consumer, ConsumerConfig, Outcome, lane_of};
use chassis_messaging::amqp::incoming::IncomingMessage;
use chassis_messaging::amqp::publisher::{Publish, Publisher, PublisherConfig};
use chassis_messaging::amqp::topology::RetryPolicy;
use chassis_messaging::envelope::Envelope;
use rand::Rng;
use support::Fixture;

const LANES: usize = 8;
const PREFETCH: u16 = 64;

fn key(i: usize) -> String {
    format!("order-{i:03}")
}

/// `count` events of each key, each key's published one after the other (confirmed before the
/// next), the keys in parallel: the queue holds every key's events in `seq` order.
async fn publish(fx: &Fixture, keys: &[String], count: u64) {
    let publisher =
        Publisher::new(&fx.conn, PublisherConfig::default().max_in_flight(256)).unwrap();
    let tasks: Vec<_> = keys
        .iter()
        .map(|k| {
            let publisher = publisher.clone();
            let exchange = fx.exchange.clone();
            let k = k.clone();
            tokio::spawn(async move {
                for seq in 0..count {
                    let event = Envelope::new(
                        "chassis/tests",
                        "test.partitioned",
                        serde_json::json!({ "key": k, "seq": seq }),
                    )
                    .subject(k.clone());
                    publisher
                        .publish(event.to_message(exchange.clone()).unwrap())
                        .await
                        .expect("confirmed");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn body_of(msg: &IncomingMessage) -> (String, u64) {
    let v: serde_json::Value = serde_json::from_slice(msg.body()).expect("json body");
    (
        v["key"].as_str().unwrap().to_owned(),
        v["seq"].as_u64().unwrap(),
    )
}

/// What handlers saw: `(key, seq, attempt)` in the order handlers started, `(key, seq)` in the
/// order they finished, and how often a handler started while another of the same key was
/// still running.
#[derive(Default)]
struct Log {
    started: Vec<(String, u64, u32)>,
    finished: Vec<(String, u64)>,
    running: HashMap<String, usize>,
    overlaps: usize,
}

impl Log {
    fn start(&mut self, msg: &IncomingMessage) -> (String, u64) {
        let (k, seq) = body_of(msg);
        self.started.push((k.clone(), seq, msg.attempt()));
        let n = self.running.entry(k.clone()).or_default();
        if *n > 0 {
            self.overlaps += 1;
        }
        *n += 1;
        (k, seq)
    }
    fn finish(&mut self, k: &str, seq: u64) {
        self.finished.push((k.to_owned(), seq));
        if let Some(n) = self.running.get_mut(k) {
            *n -= 1;
        }
    }
    fn per_key(&self) -> BTreeMap<String, Vec<u64>> {
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (k, seq, _) in &self.started {
            out.entry(k.clone()).or_default().push(*seq);
        }
        out
    }
    fn finished_per_key(&self) -> BTreeMap<String, Vec<u64>> {
        let mut out: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for (k, seq) in &self.finished {
            out.entry(k.clone()).or_default().push(*seq);
        }
        out
    }
}

/// Waits until handlers started `n` times (or `within` passed).
async fn wait_started(log: &Mutex<Log>, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while log.lock().unwrap().started.len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fixture named `test` whose queue retries once, after `retry_ms`.
async fn fixture(test: &str, retry_ms: u64) -> Fixture {
    Fixture::new(
        test,
        RetryPolicy::with_delays([Duration::from_millis(retry_ms)]),
    )
    .await
}

/// Starts a consumer of the fixture's queue with `lanes` handlers at once, partitioned by the
/// messages' subject.
async fn partitioned_consumer(
    fx: &Fixture,
    lanes: usize,
    prefetch: u16,
    handler: impl chassis_messaging::amqp::consumer::Handler,
) -> Result<Consumer, chassis_messaging::Error> {
    let config = ConsumerConfig::default()
        .concurrency(lanes)
        .prefetch(prefetch)
        .partition_by_subject();
    Consumer::start(&fx.conn, fx.queue.clone(), config, handler).await
}

/// Consumes the fixture's queue with `config` until `total` messages were handled, each
/// handler sleeping 0–2 ms; returns the log and the time from start to the last handler.
async fn consume_all(fx: &Fixture, config: ConsumerConfig, total: usize) -> (Log, Duration) {
    let log = Arc::new(Mutex::new(Log::default()));
    let done_at = Arc::new(Mutex::new(None::<Instant>));
    let (l, d) = (Arc::clone(&log), Arc::clone(&done_at));
    let started = Instant::now();
    let consumer = Consumer::start(
        &fx.conn,
        fx.queue.clone(),
        config,
        move |msg: IncomingMessage| {
            let (log, done_at) = (Arc::clone(&l), Arc::clone(&d));
            async move {
                let (k, seq) = log.lock().unwrap().start(&msg);
                let pause = rand::rng().random_range(0..=2000u64);
                tokio::time::sleep(Duration::from_micros(pause)).await;
                let mut log = log.lock().unwrap();
                log.finish(&k, seq);
                *done_at.lock().unwrap() = Some(Instant::now());
                Outcome::Ack
            }
        },
    )
    .await
    .expect("start consumer");
    wait_started(&log, total, Duration::from_secs(60)).await;
    consumer.shutdown().await;
    let elapsed = done_at
        .lock()
        .unwrap()
        .map_or(started.elapsed(), |t| t - started);
    let log = Arc::try_unwrap(log)
        .ok()
        .expect("handlers finished")
        .into_inner()
        .unwrap();
    (log, elapsed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_over_a_hundred_keys_keep_per_key_order_exactly_once() {
    const KEYS: usize = 100;
    const PER_KEY: u64 = 100;
    let total = KEYS * PER_KEY as usize;
    let fx = fixture("partitioned", 200).await;
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    let expected: Vec<u64> = (0..PER_KEY).collect();

    publish(&fx, &keys, PER_KEY).await;
    let config = ConsumerConfig::default()
        .concurrency(LANES)
        .prefetch(PREFETCH)
        .partition_by_subject();
    let (log, partitioned) = consume_all(&fx, config, total).await;
    assert_eq!(
        log.started.len(),
        total,
        "every message handled exactly once"
    );
    assert_eq!(log.overlaps, 0, "never two handlers of one key at once");
    let per_key = log.per_key();
    assert_eq!(per_key.len(), KEYS);
    for (k, seqs) in &per_key {
        assert_eq!(seqs, &expected, "order of {k}");
    }
    assert_eq!(
        log.finished_per_key(),
        per_key,
        "each finished before the next started"
    );

    // The same load through the plain consumer, for the comparison (and to show what the
    // lanes are for: its order per key is whatever the handlers' timing made it).
    publish(&fx, &keys, PER_KEY).await;
    let config = ConsumerConfig::default()
        .concurrency(LANES)
        .prefetch(PREFETCH);
    let (log, plain) = consume_all(&fx, config, total).await;
    assert_eq!(log.started.len(), total);
    let out_of_order = log
        .finished_per_key()
        .values()
        .filter(|seqs| **seqs != expected)
        .count();
    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    println!(
        "PARTITIONED messages={total} keys={KEYS} concurrency={LANES} prefetch={PREFETCH} \
         partitioned={:.0}/s ({:.2} s) plain={:.0}/s ({:.2} s) plain_keys_out_of_order={out_of_order} \
         plain_overlaps={}",
        rate(partitioned),
        partitioned.as_secs_f64(),
        rate(plain),
        plain.as_secs_f64(),
        log.overlaps,
    );
    fx.cleanup().await;
}

/// One key's handler takes 200 ms a message; the keys on the other lanes go on meanwhile.
/// Keys sharing the slow key's lane wait for it by design, so they are left out; the slow
/// lane's backlog (its 25 messages) stays well within the prefetch, which is what keeps the
/// broker delivering to the other lanes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_key_holds_up_only_its_own_lane() {
    const SLOW_COUNT: u64 = 25;
    const PER_KEY: u64 = 20;
    let fx = fixture("partitioned-slow", 200).await;
    let slow = key(0);
    let slow_lane = lane_of(slow.as_str(), LANES);
    let others: Vec<String> = (1..100)
        .map(key)
        .filter(|k| lane_of(k.as_str(), LANES) != slow_lane)
        .collect();
    assert!(others.len() > 70, "keys spread over the lanes");
    let total = SLOW_COUNT as usize + others.len() * PER_KEY as usize;
    tokio::join!(
        publish(&fx, &others, PER_KEY),
        publish(&fx, std::slice::from_ref(&slow), SLOW_COUNT)
    );

    // Per key: how many handled; when the others were all done, how far the slow key was.
    #[derive(Default)]
    struct Progress {
        done: HashMap<String, u64>,
        order: HashMap<String, Vec<u64>>,
        others_left: usize,
        slow_done_when_others_finished: Option<u64>,
        others_finished: Option<Instant>,
        slow_finished: Option<Instant>,
    }
    let progress = Arc::new(Mutex::new(Progress {
        others_left: others.len() * PER_KEY as usize,
        ..Default::default()
    }));
    let p = Arc::clone(&progress);
    let slow_key = slow.clone();
    let started = Instant::now();
    let consumer = partitioned_consumer(&fx, LANES, PREFETCH, move |msg: IncomingMessage| {
        let (p, slow_key) = (Arc::clone(&p), slow_key.clone());
        async move {
            let (k, seq) = body_of(&msg);
            let pause = if k == slow_key {
                Duration::from_millis(200)
            } else {
                Duration::from_micros(rand::rng().random_range(0..=2000u64))
            };
            tokio::time::sleep(pause).await;
            let mut p = p.lock().unwrap();
            p.order.entry(k.clone()).or_default().push(seq);
            *p.done.entry(k.clone()).or_default() += 1;
            if k == slow_key {
                if p.done[&k] == SLOW_COUNT {
                    p.slow_finished = Some(Instant::now());
                }
            } else {
                p.others_left -= 1;
                if p.others_left == 0 {
                    p.slow_done_when_others_finished =
                        Some(p.done.get(&slow_key).copied().unwrap_or(0));
                    p.others_finished = Some(Instant::now());
                }
            }
            Outcome::Ack
        }
    })
    .await
    .expect("start consumer");
    let deadline = Instant::now() + Duration::from_secs(60);
    while progress.lock().unwrap().done.values().sum::<u64>() < total as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    consumer.shutdown().await;

    {
        let p = progress.lock().unwrap();
        assert_eq!(
            p.done.values().sum::<u64>(),
            total as u64,
            "everything handled once"
        );
        for (k, seqs) in &p.order {
            let n = if *k == slow { SLOW_COUNT } else { PER_KEY };
            assert_eq!(*seqs, (0..n).collect::<Vec<_>>(), "order of {k}");
        }
        // Progress, not time: the other lanes were through their ~1,700 messages while the slow key
        // had handled at most 15 of its 25 (it needs 5 s in all).
        let slow_then = p
            .slow_done_when_others_finished
            .expect("the other keys finished");
        println!(
            "PARTITIONED slow-lane others={} messages in {:.2} s, slow key {SLOW_COUNT} messages in {:.2} s, \
             slow key had {slow_then} done when the others finished",
            others.len() * PER_KEY as usize,
            (p.others_finished.unwrap() - started).as_secs_f64(),
            (p.slow_finished.unwrap() - started).as_secs_f64(),
        );
        assert!(
            slow_then <= 15,
            "the other keys finished only after the slow key handled {slow_then} of {SLOW_COUNT}"
        );
    }
    fx.cleanup().await;
}

/// A message sent to a retry tier leaves its lane: the key's later messages are handled
/// before it comes back (the documented limit of per-key order), and each message still
/// settles exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_message_leaves_its_lane_and_later_ones_go_ahead() {
    let fx = fixture("partitioned-retry", 300).await;
    let keys = vec![key(1), key(2)];
    publish(&fx, &keys, 10).await;
    let log = Arc::new(Mutex::new(Log::default()));
    let l = Arc::clone(&log);
    let consumer = partitioned_consumer(&fx, 4, 16, move |msg: IncomingMessage| {
        let log = Arc::clone(&l);
        async move {
            let (k, seq) = log.lock().unwrap().start(&msg);
            log.lock().unwrap().finish(&k, seq);
            if k == "order-001" && seq == 3 && msg.attempt() == 1 {
                Outcome::retry("not yet")
            } else {
                Outcome::Ack
            }
        }
    })
    .await
    .expect("start consumer");
    wait_started(&log, 21, Duration::from_secs(20)).await;
    consumer.shutdown().await;
    {
        let log = log.lock().unwrap();
        assert_eq!(log.started.len(), 21, "20 messages, one of them twice");
        let per_key = log.per_key();
        assert_eq!(per_key["order-002"], (0..10).collect::<Vec<_>>());
        // seq 3 first, then 4..9 without waiting for it, then seq 3 again from the retry tier.
        assert_eq!(per_key["order-001"], vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3]);
        let retried: BTreeSet<_> = log
            .started
            .iter()
            .filter(|(_, _, attempt)| *attempt == 2)
            .map(|(k, seq, _)| (k.clone(), *seq))
            .collect();
        assert_eq!(retried, BTreeSet::from([("order-001".to_owned(), 3)]));
    }
    fx.cleanup().await;
}

/// Messages without a key go to the least busy lane: four of them, each handler waiting for
/// all four to have started, only complete if they ran on four lanes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_without_a_key_spread_over_idle_lanes() {
    let fx = fixture("partitioned-keyless", 200).await;
    let publisher = Publisher::new(&fx.conn, PublisherConfig::default()).unwrap();
    for i in 0..4u64 {
        let event = Envelope::new(
            "chassis/tests",
            "test.keyless",
            serde_json::json!({ "key": "", "seq": i }),
        );
        publisher
            .publish(event.to_message(fx.exchange.clone()).unwrap())
            .await
            .unwrap();
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let consumer = partitioned_consumer(&fx, 4, 16, move |msg: IncomingMessage| {
        let (barrier, tx) = (Arc::clone(&barrier), tx.clone());
        async move {
            barrier.wait().await;
            let _ = tx.send(body_of(&msg).1);
            Outcome::Ack
        }
    })
    .await
    .expect("start consumer");
    let mut got = BTreeSet::new();
    while got.len() < 4 {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(seq)) => {
                got.insert(seq);
            }
            _ => break,
        }
    }
    consumer.shutdown().await;
    assert_eq!(got, BTreeSet::from([0, 1, 2, 3]), "all four ran at once");
    fx.cleanup().await;
}
