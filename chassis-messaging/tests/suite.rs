//! The messaging reliability suite: Watermill's universal Pub/Sub scenarios
//! (`pubsub/tests/test_pubsub.go`), each test named after the scenario it mirrors, run through
//! the chassis's real confirming [`Publisher`] and [`Consumer`] against RabbitMQ, with every
//! effect applied through the idempotent [`Inbox`](chassis_messaging::Inbox) on a SQLite file.
//!
//! It checks the at-least-once recipe of RabbitMQ's reliability guide end to end: publisher
//! confirms (a message counts as sent only once the broker confirmed it), manual acks (a
//! delivery is acked only after its effect committed) and an idempotent consumer (the inbox
//! records the message id in the effect's own transaction), which together give an
//! exactly-once *effect*. The effect table has no unique key on purpose, so an effect applied
//! twice would be two rows. Every case asserts, from the database:
//!
//! - every confirmed message was consumed and applied (`lost = 0`);
//! - no effect was applied twice (`duplicates_applied = 0`), however many duplicates the
//!   broker delivered;
//! - no messages are left in queues the case did not expect to hold any (work queue,
//!   dead-letter queue, retry tiers).
//!
//! Each case prints one line, `SUITE case=… messages=… faults=… publish_retries=…
//! redeliveries=… retries=… duplicates_delivered=… applied=… duplicates_applied=… lost=…
//! seconds=…`, where `redeliveries` counts deliveries the broker flagged as redelivered,
//! `retries` deliveries coming back from a retry tier, and `duplicates_delivered` every delivery
//! beyond the first of a message id. Below it, `SUITE case=… log: <n> x <message>` lines count
//! what the chassis logged at warning level (and the acks it skipped) about the case's
//! connections and queues: expected in the fault cases, a lead to follow anywhere else. Shown
//! with `--nocapture`.
//!
//! Cases 1 to 9 run on the shared broker (`AMQP_URL`, default the local one), each on its own
//! exchange and queues, deleted at the end (also when the case fails). `reconnect` restarts a
//! broker, so it starts a RabbitMQ node of its own (`chassis_testkit::RabbitNode`) and never
//! touches the shared one.
//!
//! Volume: `SUITE_MESSAGES` messages per volume case, 2 000 unless set: the short run that
//! `cargo test` (and so CI) makes. The full run, at 10 000 per case:
//!
//! ```text
//! SUITE_MESSAGES=10000 cargo test -p chassis-messaging --test suite -- --test-threads 1 --nocapture
//! ```
//!
//! Time on a busy 2-core machine (2026-12-06, other builds running, so noisy), 10 000 messages
//! per case: the full run above took 182 s of test time (the in-order case, one handler at a
//! time with prefetch 1, about 30 s of it; the broker-restart case about 38 s); two cases at a
//! time, as `cargo test` runs them, 137-186 s. The short run keeps every case and fault, at a
//! fifth of the volume, so the test suite's whole run stays short.

#[path = "suite/harness.rs"]
mod harness;
#[path = "suite/proxy.rs"]
mod proxy;
#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chassis_messaging::amqp::consumer::{Consumer, ConsumerConfig, Outcome};
use chassis_messaging::amqp::incoming::{ATTEMPT_HEADER, FAILURE_REASON_HEADER};
use chassis_messaging::amqp::publisher::{Publisher, PublisherConfig};
use chassis_messaging::amqp::topology::{QueueConfig, RetryPolicy};
use futures_util::FutureExt;
use harness::*;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::AMQPValue;
use rand::Rng;
use support::amqp_url;
use tokio_util::sync::CancellationToken;

fn plain() -> Configure {
    Box::new(|q| q.retry(RetryPolicy::with_delays([Duration::from_millis(200)])))
}

/// How long a case may take to apply `n` messages before it fails.
fn within(n: u64) -> Duration {
    Duration::from_secs(60 + n / 50)
}

/// Runs `body` on a fresh topic and deletes the topic afterwards, also when `body` panicked.
async fn on_topic(case: &str, queues: Vec<(&str, Configure)>, body: impl AsyncFnOnce(&Topic)) {
    let topic = Topic::new(&amqp_url(), case, queues).await;
    let res = AssertUnwindSafe(body(&topic)).catch_unwind().await;
    topic.cleanup().await;
    if let Err(panic) = res {
        std::panic::resume_unwind(panic);
    }
}

async fn start_consumer(
    conn: &chassis_messaging::Connection,
    queue: &QueueConfig,
    config: ConsumerConfig,
    handler: impl chassis_messaging::amqp::consumer::Handler,
) -> Consumer {
    Consumer::start(conn, queue.clone(), config, handler)
        .await
        .expect("start consumer")
}

fn publisher(topic: &Topic) -> Publisher {
    Publisher::new(&topic.conn, PublisherConfig::default()).expect("publisher")
}

fn batch(topic: &Topic, case: &str, n: u64) -> Vec<chassis_messaging::OutgoingMessage> {
    (0..n)
        .map(|i| message(&topic.exchange, case, "s", i))
        .collect()
}

/// Publishes `n` messages with ids prefixed `prefix` on the topic's exchange, 500 at a time,
/// none retried; returns the ids the broker confirmed.
async fn publish_confirmed(topic: &Topic, prefix: &str, n: u64) -> HashSet<String> {
    let stats = Published::default();
    publish_all(
        &publisher(topic),
        batch(topic, prefix, n),
        500,
        false,
        &stats,
    )
    .await
}

fn fill(summary: &mut Summary, tally: &Tally, started: Instant) {
    summary.redeliveries = tally.count(&tally.redelivered);
    summary.retries = tally.count(&tally.retried);
    summary.duplicates_delivered = tally.duplicates_delivered();
    summary.seconds = started.elapsed().as_secs_f64();
}

/// One case on its topic with one consuming service (`svc`): the effect database and the
/// tally its consumers share, and what the case's summary line needs.
struct Run<'t> {
    topic: &'t Topic,
    case: &'static str,
    n: u64,
    started: Instant,
    effects: Effects,
    tally: Arc<Tally>,
}

impl<'t> Run<'t> {
    async fn new(topic: &'t Topic, case: &'static str, n: u64, started: Instant) -> Self {
        Self {
            topic,
            case,
            n,
            started,
            effects: Effects::new().await,
            tally: Tally::new(),
        }
    }

    /// A consumer of the topic's first queue on `conn`, applying each message to `svc`'s
    /// effects as `worker` unless `decide` says otherwise.
    async fn consumer_on(
        &self,
        conn: &chassis_messaging::Connection,
        worker: &str,
        config: ConsumerConfig,
        decide: Decide,
    ) -> Consumer {
        let handler = applying(&self.effects, "svc", worker, self.tally.clone(), decide);
        start_consumer(conn, self.topic.queue(), config, handler).await
    }

    /// [`Run::consumer_on`] the topic's own connection.
    async fn consumer(&self, worker: &str, config: ConsumerConfig, decide: Decide) -> Consumer {
        self.consumer_on(&self.topic.conn, worker, config, decide)
            .await
    }

    /// The case's `n` messages, ids prefixed `prefix`, published and confirmed.
    async fn publish(&self, prefix: &str) -> HashSet<String> {
        publish_confirmed(self.topic, prefix, self.n).await
    }

    /// Waits until `count` effects of `svc` were applied, within the case's time limit.
    async fn wait_applied(&self, count: u64) -> u64 {
        self.effects
            .wait_applied("svc", count, within(self.n))
            .await
    }

    /// Checks that exactly `expected` were applied, once each, and returns the case's summary
    /// with `faults` and the tally's delivery figures.
    async fn applied_once(&self, faults: u64, expected: &HashSet<String>) -> Summary {
        let mut s = Summary {
            case: self.case,
            messages: self.n,
            faults,
            ..Default::default()
        };
        fill(&mut s, &self.tally, self.started);
        assert_applied_once(&mut s, &self.effects, "svc", expected).await;
        s
    }

    /// How every case ends: no queue of the topic holds a message; the summary line printed.
    async fn finish(&self, s: &Summary) {
        self.topic.assert_depths(&[]).await;
        s.print_with_log(&self.topic.name);
    }
}

/// TestPublishSubscribe: every confirmed message is consumed and its effect applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe() {
    let n = messages();
    let started = Instant::now();
    on_topic("publish-subscribe", vec![("q", plain())], async |topic| {
        let run = Run::new(topic, "publish_subscribe", n, started).await;
        let consumer = run
            .consumer("w1", ConsumerConfig::default(), always_apply())
            .await;
        let confirmed = run.publish("pubsub").await;
        assert_eq!(confirmed.len() as u64, n);
        run.wait_applied(n).await;
        consumer.shutdown().await;

        let s = run.applied_once(0, &confirmed).await;
        let consumed = run.tally.unique_ids();
        assert_eq!(consumed, confirmed, "consumed-unique == confirmed");
        run.finish(&s).await;
    })
    .await;
}

/// TestConcurrentSubscribe: three consumers, each on its own connection, compete for one
/// queue; every message is applied once and every consumer did part of the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_subscribe() {
    let n = messages();
    let started = Instant::now();
    on_topic(
        "concurrent-subscribe",
        vec![("q", plain())],
        async |topic| {
            let run = Run::new(topic, "concurrent_subscribe", n, started).await;
            let mut consumers = Vec::new();
            let mut conns = Vec::new();
            for w in ["w1", "w2", "w3"] {
                let conn = topic.connection(w).await;
                let config = ConsumerConfig::default().prefetch(50).concurrency(8);
                consumers.push(run.consumer_on(&conn, w, config, always_apply()).await);
                conns.push(conn);
            }
            let confirmed = run.publish("concurrent").await;
            run.wait_applied(n).await;
            for c in consumers {
                c.shutdown().await;
            }
            for c in conns {
                c.close().await;
            }

            let s = run.applied_once(0, &confirmed).await;
            assert_eq!(run.tally.unique_ids(), confirmed);
            let by_worker = run.effects.by_worker("svc").await;
            for w in ["w1", "w2", "w3"] {
                assert!(
                    by_worker.get(w).copied().unwrap_or(0) > 0,
                    "consumer {w} applied nothing: {by_worker:?}"
                );
            }
            run.finish(&s).await;
        },
    )
    .await;
}

/// TestResendOnError: the handler fails every third message on its first attempt
/// ([`Outcome::Retry`], its writes rolled back); the message comes back through the retry
/// tier and is applied once on its second attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_on_error() {
    let n = messages();
    let started = Instant::now();
    let tiers: Configure = Box::new(|q| {
        q.retry(RetryPolicy::with_delays([Duration::from_millis(200)]).max_attempts(3))
    });
    on_topic("resend-on-error", vec![("q", tiers)], async |topic| {
        let run = Run::new(topic, "resend_on_error", n, started).await;
        let fails = |seq: i64| seq % 3 == 0;
        let decide: Decide = Arc::new(move |msg| {
            let (_, seq) = body_of(msg);
            (fails(seq) && msg.attempt() == 1)
                .then(|| Outcome::retry(format!("transient failure of seq {seq}")))
        });
        let consumer = run.consumer("w1", ConsumerConfig::default(), decide).await;
        let confirmed = run.publish("resend").await;
        run.wait_applied(n).await;
        consumer.shutdown().await;

        let faults = (0..n as i64).filter(|i| fails(*i)).count() as u64;
        let s = run.applied_once(faults, &confirmed).await;
        for seq in 0..n as i64 {
            let id = format!("resend-s-{seq}");
            let seen = run.tally.seen(&id).expect("delivered");
            let want: &[u32] = if fails(seq) { &[1, 2] } else { &[1] };
            assert_eq!(seen.attempts, want, "attempts of {id}");
        }
        assert_eq!(s.retries, s.faults, "one retry per failed first attempt");
        run.finish(&s).await;
    })
    .await;
}

/// The messages on `queue`, taken off it one by one (each acked), as `(message id, headers)`.
async fn drain(topic: &Topic, queue: &str) -> Vec<(String, lapin::types::FieldTable)> {
    let ch = topic.conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        let headers = m.delivery.properties.headers().clone().unwrap_or_default();
        let id = m
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default();
        m.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
        out.push((id, headers));
    }
    let _ = ch.close(200, "done".into()).await;
    out
}

/// TestContinueAfterErrors, with a poison queue: one message in ten always fails (an error
/// outcome, or a panic for one in a hundred). Each is tried exactly `max_attempts` times, then
/// dead-lettered with the reason; the dead-letter queue holds exactly those messages, and the
/// consumer goes on with the others, which are applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_after_errors() {
    let n = messages();
    let started = Instant::now();
    const MAX_ATTEMPTS: u32 = 3;
    let tiers: Configure = Box::new(|q| {
        q.retry(
            RetryPolicy::with_delays([Duration::from_millis(100), Duration::from_millis(200)])
                .max_attempts(MAX_ATTEMPTS),
        )
    });
    silence_panics("provoked: poison seq");
    on_topic("continue-after-errors", vec![("q", tiers)], async |topic| {
        let run = Run::new(topic, "continue_after_errors", n, started).await;
        let poison = |seq: i64| seq % 10 == 0;
        let decide: Decide = Arc::new(move |msg| {
            let (_, seq) = body_of(msg);
            if seq % 100 == 50 {
                panic!("provoked: poison seq {seq}");
            }
            poison(seq).then(|| Outcome::retry(format!("poison seq {seq}")))
        });
        let consumer = run.consumer("w1", ConsumerConfig::default(), decide).await;
        let confirmed = run.publish("errors").await;
        let is_poison = |seq: i64| poison(seq) || seq % 100 == 50;
        let poisoned: HashSet<String> = (0..n as i64)
            .filter(|s| is_poison(*s))
            .map(|s| format!("errors-s-{s}"))
            .collect();
        let healthy: HashSet<String> = confirmed.difference(&poisoned).cloned().collect();
        run.wait_applied(healthy.len() as u64).await;
        let dlq = topic.queue().dead_letter_queue();
        let deadline = Instant::now() + within(n);
        while topic.depth(&dlq).await < poisoned.len() as u32 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        consumer.shutdown().await;

        let s = run.applied_once(poisoned.len() as u64, &healthy).await;
        assert_eq!(
            run.tally.unique_ids(),
            confirmed,
            "every message was consumed"
        );
        for id in &poisoned {
            let seen = run.tally.seen(id).expect("delivered");
            assert_eq!(seen.attempts, [1, 2, 3], "attempts of {id}");
        }
        topic
            .assert_depths(&[(dlq.as_str(), poisoned.len() as u32)])
            .await;

        // The dead-letter queue holds exactly the poison messages, each with its reason.
        let mut dead = HashSet::new();
        for (id, headers) in drain(topic, &dlq).await {
            let reason = match headers.inner().get(FAILURE_REASON_HEADER) {
                Some(AMQPValue::LongString(s)) => {
                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                }
                other => panic!("{id}: no failure reason: {other:?}"),
            };
            let seq = id.rsplit('-').next().unwrap();
            assert!(
                reason.starts_with(&format!("gave up after {MAX_ATTEMPTS} attempt(s):"))
                    && reason.contains(&format!("poison seq {seq}")),
                "{id}: {reason}"
            );
            assert_eq!(
                headers.inner().get(ATTEMPT_HEADER),
                Some(&AMQPValue::LongLongInt(i64::from(MAX_ATTEMPTS)))
            );
            assert!(dead.insert(id), "dead-lettered twice");
        }
        assert_eq!(dead, poisoned, "the DLQ holds exactly the poison messages");
        run.finish(&s).await;
    })
    .await;
}

/// The broker's address as a socket address (`localhost` as `127.0.0.1`), for a proxy to it.
fn broker_addr(url: &str) -> std::net::SocketAddr {
    let uri: lapin::uri::AMQPUri = url.parse().expect("AMQP url");
    let host = if uri.authority.host == "localhost" {
        "127.0.0.1".to_owned()
    } else {
        uri.authority.host.clone()
    };
    format!("{host}:{}", uri.authority.port)
        .parse()
        .expect("socket address")
}

/// Polls every 20 ms until `count` reaches `at_least`, for at most 30 s.
async fn wait_count(count: impl Fn() -> u64, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while count() < at_least && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// TestNoAck, with the consumer dying: consumer A takes 50 deliveries and holds them without
/// acking, then its connection dies (its TCP path to the broker is cut, as when its process
/// dies) and stays dead. The broker gives the held messages to consumer B (flagged
/// redelivered); when A's handlers finally run, their effects are duplicates the inbox skips
/// and their acks go nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ack() {
    let n = messages();
    let started = Instant::now();
    const HELD: u64 = 50;
    on_topic("no-ack", vec![("q", plain())], async |topic| {
        let run = Run::new(topic, "no_ack", n, started).await;
        let tally = &run.tally;
        let proxy = proxy::Proxy::start(broker_addr(&topic.url)).await;
        let a_conn = connect_to(&proxy.url(), &format!("{}.a", topic.name)).await;
        let gate = CancellationToken::new();
        let a = start_consumer(
            &a_conn,
            topic.queue(),
            ConsumerConfig::default()
                .prefetch(HELD as u16)
                .concurrency(HELD as usize),
            holding(&run.effects, "svc", "a", tally.clone(), gate.clone()),
        )
        .await;
        let confirmed = run.publish("noack").await;
        wait_count(|| tally.count(&tally.deliveries), HELD).await;
        // The prefetch window is full: the broker sends A nothing more.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(tally.count(&tally.deliveries), HELD, "A holds its prefetch");
        let held = tally.unique_ids();

        proxy.cut();
        let b = run
            .consumer("b", ConsumerConfig::default(), always_apply())
            .await;
        run.wait_applied(n).await;
        let redelivered = tally.redelivered_ids();
        assert!(
            held.is_subset(&redelivered),
            "the messages A held came back to B, flagged redelivered"
        );
        // A's handlers finish late: the inbox finds B's effects and A's acks are skipped.
        gate.cancel();
        wait_count(|| tally.count(&tally.finished), n + HELD).await;
        assert_eq!(tally.count(&tally.finished), n + HELD);
        b.shutdown().await;
        a.shutdown().await;
        a_conn.close().await;

        let s = run.applied_once(1, &confirmed).await;
        assert_eq!(tally.unique_ids(), confirmed);
        let by_worker = run.effects.by_worker("svc").await;
        let by_a = by_worker.get("a").copied().unwrap_or(0);
        assert_eq!(by_a, 0, "A's late handlers applied nothing");
        assert!(s.duplicates_delivered >= HELD);
        run.finish(&s).await;
    })
    .await;
}

/// TestContinueAfterSubscribeClose: while messages are published, consumers are shut down
/// mid-stream one after another and a new one takes over each time; nothing is lost (what a
/// stopped consumer had prefetched goes back to the queue) and nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continue_after_subscribe_close() {
    let n = messages();
    let started = Instant::now();
    on_topic(
        "continue-after-close",
        vec![("q", plain())],
        async |topic| {
            let run = Run::new(topic, "continue_after_subscribe_close", n, started).await;
            let stats = Arc::new(Published::default());
            let publishing = {
                let publisher = publisher(topic);
                let msgs = batch(topic, "close", n);
                let stats = stats.clone();
                tokio::spawn(async move { publish_all(&publisher, msgs, 200, false, &stats).await })
            };
            let mut shutdowns = 0;
            let step = (n / 6).max(1);
            let deadline = Instant::now() + within(n);
            loop {
                let (_, before) = run.effects.applied("svc").await;
                let worker = format!("w{shutdowns}");
                let consumer = run
                    .consumer(&worker, ConsumerConfig::default(), always_apply())
                    .await;
                let reached = run
                    .effects
                    .wait_applied("svc", (before + step).min(n), deadline - Instant::now())
                    .await;
                consumer.shutdown().await;
                if reached >= n || Instant::now() >= deadline {
                    break;
                }
                shutdowns += 1;
            }
            let confirmed = publishing.await.expect("publishing task");

            let s = run.applied_once(shutdowns, &confirmed).await;
            assert_eq!(run.tally.unique_ids(), confirmed);
            assert!(shutdowns >= 3, "consumers were closed mid-stream");
            run.finish(&s).await;
            // Each consumer acks its in-flight deliveries before its channel closes, so a
            // message handed to a handler twice here is worth a look (the inbox absorbed it).
            for (id, by) in run.tally.duplicates(10) {
                println!("SUITE case={} duplicate: {id} delivered to {by:?}", s.case);
            }
        },
    )
    .await;
}

/// TestPublishSubscribeInOrder. The chassis's consumer promises no ordering of its own across
/// concurrent handlers; what it offers is queue order with one consumer, `concurrency = 1`
/// (one handler at a time, each settled before the next starts) and `prefetch = 1`, and what
/// the publisher offers is that a message published after the previous one's confirm is
/// behind it in the queue. So: 20 subjects published concurrently, each subject's messages
/// one after another; the effects, in the order they were applied, follow each subject's
/// sequence exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_subscribe_in_order() {
    let n = messages();
    let started = Instant::now();
    const SUBJECTS: u64 = 20;
    on_topic("in-order", vec![("q", plain())], async |topic| {
        let per_subject = n / SUBJECTS;
        let total = per_subject * SUBJECTS;
        let run = Run::new(topic, "publish_subscribe_in_order", total, started).await;
        let config = ConsumerConfig::default().prefetch(1).concurrency(1);
        let consumer = run.consumer("w1", config, always_apply()).await;
        let publisher = publisher(topic);
        let subjects = (0..SUBJECTS).map(|k| {
            let publisher = publisher.clone();
            let exchange = topic.exchange.clone();
            async move {
                let stats = Published::default();
                let subject = format!("k{k}");
                let mut ids = HashSet::new();
                for seq in 0..per_subject {
                    let msg = message(&exchange, "order", &subject, seq);
                    ids.extend(publish_all(&publisher, vec![msg], 1, false, &stats).await);
                }
                ids
            }
        });
        let confirmed: HashSet<String> = futures_util::future::join_all(subjects)
            .await
            .into_iter()
            .flatten()
            .collect();
        run.wait_applied(total).await;
        consumer.shutdown().await;

        let s = run.applied_once(0, &confirmed).await;
        let mut by_subject: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for (subject, seq) in run.effects.in_applied_order("svc").await {
            by_subject.entry(subject).or_default().push(seq);
        }
        assert_eq!(by_subject.len() as u64, SUBJECTS);
        let want: Vec<i64> = (0..per_subject as i64).collect();
        for (subject, seqs) in &by_subject {
            assert_eq!(seqs, &want, "order of subject {subject}");
        }
        run.finish(&s).await;
    })
    .await;
}

/// One consuming group of [`consumer_groups`]: its own effect database and tally.
struct Group {
    name: &'static str,
    effects: Effects,
    tally: Arc<Tally>,
}

impl Group {
    async fn new(name: &'static str) -> Self {
        Self {
            name,
            effects: Effects::new().await,
            tally: Tally::new(),
        }
    }

    /// A consumer of `queue` on `conn`, applying to this group's effects as `worker`.
    async fn consumer(
        &self,
        conn: &chassis_messaging::Connection,
        queue: &QueueConfig,
        worker: &str,
        config: ConsumerConfig,
    ) -> Consumer {
        let handler = applying(
            &self.effects,
            self.name,
            worker,
            self.tally.clone(),
            always_apply(),
        );
        start_consumer(conn, queue, config, handler).await
    }
}

/// TestConsumerGroups: two services, each with its own queue bound to the one exchange and
/// its own database, each get and apply every event; inside the second service's group two
/// consumers share the work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_groups() {
    let n = messages();
    let started = Instant::now();
    on_topic(
        "consumer-groups",
        vec![("billing", plain()), ("shipping", plain())],
        async |topic| {
            let billing = Group::new("billing").await;
            let shipping = Group::new("shipping").await;
            let (billing_q, shipping_q) = (&topic.queues[0], &topic.queues[1]);
            let b1 = ConsumerConfig::default();
            let mut consumers = vec![billing.consumer(&topic.conn, billing_q, "b1", b1).await];
            let shipping_conn = topic.connection("shipping").await;
            for w in ["s1", "s2"] {
                let config = ConsumerConfig::default().prefetch(50).concurrency(8);
                consumers.push(
                    shipping
                        .consumer(&shipping_conn, shipping_q, w, config)
                        .await,
                );
            }
            let confirmed = publish_confirmed(topic, "groups", n).await;
            for g in [&billing, &shipping] {
                g.effects.wait_applied(g.name, n, within(n)).await;
            }
            for c in consumers {
                c.shutdown().await;
            }
            shipping_conn.close().await;

            let mut s = Summary {
                case: "consumer_groups",
                messages: n,
                ..Default::default()
            };
            for g in [&billing, &shipping] {
                assert_eq!(
                    g.tally.unique_ids(),
                    confirmed,
                    "every group gets every event"
                );
            }
            let both = |f: &dyn Fn(&Tally) -> u64| f(&billing.tally) + f(&shipping.tally);
            s.redeliveries = both(&|t| t.count(&t.redelivered));
            s.retries = both(&|t| t.count(&t.retried));
            s.duplicates_delivered = both(&|t| t.duplicates_delivered());
            s.seconds = started.elapsed().as_secs_f64();
            let mut b = Summary::default();
            assert_applied_once(&mut b, &billing.effects, "billing", &confirmed).await;
            assert_applied_once(&mut s, &shipping.effects, "shipping", &confirmed).await;
            s.applied += b.applied;
            s.duplicates_applied += b.duplicates_applied;
            s.lost += b.lost;
            let by_worker = shipping.effects.by_worker("shipping").await;
            assert!(
                by_worker.get("s1").copied().unwrap_or(0) > 0
                    && by_worker.get("s2").copied().unwrap_or(0) > 0,
                "both consumers of the shipping group worked: {by_worker:?}"
            );
            topic.assert_depths(&[]).await;
            s.print_with_log(&topic.name);
        },
    )
    .await;
}

/// TestNewSubscriberReceivesOldMessages: everything is published (and confirmed) before any
/// consumer exists; the queue holds it all, and a consumer started afterwards applies it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_subscriber_receives_old_messages() {
    let n = messages();
    let started = Instant::now();
    on_topic("backlog", vec![("q", plain())], async |topic| {
        let run = Run::new(topic, "new_subscriber_receives_old_messages", n, started).await;
        let confirmed = run.publish("backlog").await;
        let q = topic.queue().name.clone();
        topic.assert_depths(&[(q.as_str(), n as u32)]).await;
        let consumer = run
            .consumer("w1", ConsumerConfig::default(), always_apply())
            .await;
        run.wait_applied(n).await;
        consumer.shutdown().await;

        let s = run.applied_once(0, &confirmed).await;
        assert_eq!(run.tally.unique_ids(), confirmed);
        run.finish(&s).await;
    })
    .await;
}

/// A fault the reconnect case injects.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `rabbitmqctl close_all_connections`.
    CloseAll,
    /// `stop_app` + `start_app`: the broker application restarts, the VM stays.
    RestartApp,
    /// The whole node stops and starts again.
    RestartNode,
}

/// TestReconnect (Watermill's `RestartServiceCommand`), on a RabbitMQ node of the test's
/// own: while the messages are published, the broker is restarted at 1/3 (application) and at
/// 1/2 (whole node) of the run, and every connection is force-closed at two random points.
/// Publishes that fail are retried with the same message id until confirmed (as the outbox
/// relay does); the connections reconnect and the consumer re-subscribes by itself. The queue
/// is a durable quorum queue, so confirmed messages survive the restarts. Publishing is paced
/// over about 20 s and its last 5 % waits until every fault was injected, so each fault lands
/// mid-run however slow the machine is. Every confirmed message is applied once; the broker's
/// queues are empty at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect() {
    let n = messages();
    let started = Instant::now();
    support::on_own_node("suite-reconnect", |node| reconnect_on(node, n, started)).await;
}

async fn reconnect_on(node: Arc<chassis_testkit::RabbitNode>, n: u64, started: Instant) {
    let queues: Vec<(&str, Configure)> = vec![("q", plain())];
    let topic = Topic::new(&node.url(), "reconnect", queues).await;
    assert_eq!(
        topic.queue().queue_type,
        chassis_messaging::amqp::topology::QueueType::Quorum,
        "a durable quorum queue"
    );
    let run = Run::new(&topic, "reconnect", n, started).await;
    let consumer_conn = topic.connection("consumer").await;
    let consumer = run
        .consumer_on(
            &consumer_conn,
            "w1",
            ConsumerConfig::default(),
            always_apply(),
        )
        .await;

    let stats = Arc::new(Published::default());
    let done = CancellationToken::new();
    // The last 5 % wait until every fault was injected.
    let faults_done = CancellationToken::new();
    let publishing = {
        let publisher = Publisher::new(
            &topic.conn,
            PublisherConfig::default().confirm_timeout(Duration::from_secs(5)),
        )
        .expect("publisher");
        let msgs = batch(&topic, "reconnect", n);
        let stats = stats.clone();
        let done = done.clone();
        let hold = Some(((n - n / 20) as usize, faults_done.clone()));
        // Paced over about 20 s (plus the outages), so that the faults land while messages are
        // being published.
        let every = Duration::from_secs(20) / u32::try_from(n).unwrap_or(u32::MAX);
        tokio::spawn(async move {
            let confirmed = publish_paced(&publisher, msgs, 200, true, &stats, every, hold).await;
            done.cancel();
            confirmed
        })
    };
    let mut plan = {
        let mut rng = rand::rng();
        let at = |f: f64| (n as f64 * f) as u64;
        vec![
            (at(rng.random_range(0.05..0.3)), Fault::CloseAll),
            (n / 3, Fault::RestartApp),
            (n / 2, Fault::RestartNode),
            (at(rng.random_range(0.55..0.95)), Fault::CloseAll),
        ]
    };
    plan.sort_by_key(|(at, _)| *at);
    let mut injected = Vec::new();
    for (at, fault) in plan {
        while stats.confirmed.load(Ordering::Relaxed) < at && !done.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let confirmed_then = stats.confirmed.load(Ordering::Relaxed);
        let node = node.clone();
        tokio::task::spawn_blocking(move || match fault {
            Fault::CloseAll => node.close_all_connections(),
            Fault::RestartApp => {
                node.stop_app();
                node.start_app();
            }
            Fault::RestartNode => {
                node.stop();
                node.start();
            }
        })
        .await
        .expect("fault injected");
        assert!(
            confirmed_then < n,
            "{fault:?} landed after the last confirm ({confirmed_then})"
        );
        injected.push(format!("{fault:?}@{confirmed_then}"));
    }
    faults_done.cancel();
    let confirmed = publishing.await.expect("publishing task");
    assert_eq!(
        confirmed.len() as u64,
        n,
        "every message was confirmed in the end"
    );
    run.effects.wait_applied("svc", n, within(n) * 2).await;
    // Copies published twice (a publish that failed after reaching the broker, then retried)
    // may still be queued behind the last original: let the consumer take them too.
    let drained = Instant::now() + Duration::from_secs(60);
    while Instant::now() < drained {
        let depths = queue_depths(&node).await;
        if !depths.is_empty() && depths.iter().all(|(_, d)| *d == 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    consumer.shutdown().await;
    consumer_conn.close().await;

    let publish_retries = stats.failed_attempts.load(Ordering::Relaxed);
    assert!(publish_retries > 0, "the faults hit the publishers");
    let mut s = run.applied_once(injected.len() as u64, &confirmed).await;
    s.publish_retries = publish_retries;
    assert_eq!(run.tally.unique_ids(), confirmed);
    // Nothing anywhere on the node: the work queue, its dead-letter queue and retry tier.
    let depths = queue_depths(&node).await;
    let ours: HashSet<String> = topic.queue().all_queues().into_iter().collect();
    for (queue, depth) in &depths {
        assert!(ours.contains(queue), "unexpected queue {queue} on the node");
        assert_eq!(*depth, 0, "messages left in {queue}");
    }
    assert_eq!(depths.len(), ours.len(), "{depths:?}");
    println!("SUITE reconnect faults: {}", injected.join(" "));
    s.print_with_log(&topic.name);
    drop(run);
    topic.cleanup().await;
}

/// The depth of every queue on `node`, asked off the async runtime (`rabbitmqctl` blocks).
async fn queue_depths(node: &Arc<chassis_testkit::RabbitNode>) -> Vec<(String, u64)> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || node.queue_depths())
        .await
        .unwrap()
}
