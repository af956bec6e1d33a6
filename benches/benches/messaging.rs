//! Messaging throughput against the local RabbitMQ: confirmed publishes of the chassis
//! `Publisher` vs raw lapin with pipelined confirms (same window, same run), on a durable quorum
//! queue and a durable classic queue; then consume-and-ack throughput with prefetch 100; then
//! the partitioned consumer (per subject, 100 keys) against the unordered one, both with
//! concurrency 8 and an acking handler, in alternating rounds.
//!
//! Run: `cargo bench -p chassis-benches --bench messaging` (args: `publish` or `partitioned` to
//! run one case only, both by default; env: `AMQP_URL`, `MSG_BENCH_N`
//! messages per run (default 20000), `MSG_BENCH_WINDOW` (default 1000), `MSG_BENCH_ROUNDS`
//! (default 2; the partitioned case runs at least 3), `MSG_BENCH_DEADLINE_SECS` per measured round (default 300), `MSG_BENCH_ONLY`
//! `raw`|`chassis` to profile one side's publishing). Prints msg/s; see
//! benches/README.md for recorded figures.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chassis_benches::process_cpu_secs;
use chassis_benches::raw_lapin::{self, RawMode};
use chassis_messaging::amqp::connection::{Connection, ConnectionConfig};
use chassis_messaging::amqp::consumer::{Consumer, ConsumerConfig, Outcome};
use chassis_messaging::amqp::incoming::IncomingMessage;
use chassis_messaging::amqp::publisher::{Publish, Publisher, PublisherConfig};
use chassis_messaging::amqp::topology::{
    ExchangeConfig, QueueConfig, QueueType, RetryPolicy, TopologyConfig,
};
use chassis_messaging::envelope::SUBJECT;
use chassis_messaging::message::OutgoingMessage;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeleteOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs one measured round with a deadline (`MSG_BENCH_DEADLINE_SECS`, default 300): a broker
/// that stops confirming (a disk or memory alarm blocks every publisher without an error) must
/// fail the benchmark loudly, not hang it.
async fn bounded<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    let secs = env_usize("MSG_BENCH_DEADLINE_SECS", 300) as u64;
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!(
            "{what} did not finish within {secs} s: is the broker blocking publishers \
             (`rabbitmqctl status`, look for alarms: disk or memory)?"
        ),
    }
}

/// Runs a measured publish round and returns (msg/s, client CPU µs per message).
async fn with_cpu(n: usize, fut: impl std::future::Future<Output = f64>) -> (f64, f64) {
    let before = process_cpu_secs();
    let rate = fut.await;
    (rate, (process_cpu_secs() - before) * 1e6 / n as f64)
}

/// Publishes `n` messages, the `i`th built by `msg(i)`, at most `window` unconfirmed at once.
async fn chassis_publish(
    publisher: &Publisher,
    n: usize,
    window: usize,
    msg: impl Fn(usize) -> OutgoingMessage,
) -> f64 {
    let start = Instant::now();
    // Through the `Publish` trait (a boxed future per message), as the outbox relay and most
    // callers use it.
    let mut inflight: FuturesUnordered<
        futures_util::future::BoxFuture<'_, Result<(), chassis_messaging::error::Error>>,
    > = FuturesUnordered::new();
    for i in 0..n {
        if inflight.len() >= window {
            inflight.next().await.unwrap().expect("confirmed");
        }
        inflight.push(publisher.publish(msg(i)));
    }
    while let Some(r) = inflight.next().await {
        r.expect("confirmed");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Drains `n` messages with a chassis consumer configured by `config`, the handler acking at once.
async fn chassis_consume(
    conn: &Connection,
    queue: &QueueConfig,
    config: ConsumerConfig,
    n: usize,
) -> f64 {
    let count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let (c, d) = (Arc::clone(&count), Arc::clone(&done));
    let start = Instant::now();
    let consumer = Consumer::start(conn, queue.clone(), config, move |_m: IncomingMessage| {
        let (c, d) = (Arc::clone(&c), Arc::clone(&d));
        async move {
            if c.fetch_add(1, Ordering::SeqCst) + 1 == n {
                d.notify_one();
            }
            Outcome::Ack
        }
    })
    .await
    .expect("consumer");
    tokio::time::timeout(Duration::from_secs(300), done.notified())
        .await
        .expect("consumed all");
    let rate = n as f64 / start.elapsed().as_secs_f64();
    consumer.shutdown().await;
    rate
}

/// Declares a fresh topic exchange bound to a fresh queue of type `qt`, named after a new id.
async fn fresh_queue(conn: &Connection, qt: QueueType) -> (String, QueueConfig) {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let exchange = format!("bench.{id}.ex");
    let queue = QueueConfig::new(format!("bench.{id}.q"))
        .queue_type(qt)
        .bind(exchange.clone(), "#")
        .retry(RetryPolicy::with_delays([Duration::from_secs(1)]));
    conn.declare(
        TopologyConfig::new()
            .exchange(ExchangeConfig::topic(exchange.clone()))
            .queue(queue.clone()),
    )
    .await
    .expect("declare");
    (exchange, queue)
}

/// Deletes what [`fresh_queue`] declared, retry tiers and dead-letter exchange included.
async fn delete_queue(admin: &lapin::Channel, exchange: &str, queue: &QueueConfig) {
    for q in queue.all_queues() {
        let _ = admin
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for e in [exchange.to_owned(), queue.dead_letter_exchange()] {
        let _ = admin
            .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}

/// The median of `v` (the upper one for an even count), NaN when empty.
fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The partitioned consumer (per subject) against the unordered one with the same concurrency
/// and prefetch, on a fresh quorum queue refilled before each drain with `n` messages spread
/// round-robin over `KEYS` subjects. Each round drains once with either, their order swapped
/// every round so neither always meets the queue right after its refill.
async fn partitioned_vs_unordered(
    conn: &Connection,
    publisher: &Publisher,
    n: usize,
    window: usize,
    rounds: usize,
    body: &[u8],
) {
    const KEYS: usize = 100;
    const CONCURRENCY: usize = 8;
    const PREFETCH: u16 = 100;
    let keys: Vec<String> = (0..KEYS).map(|k| format!("order-{k:03}")).collect();
    let (exchange, queue) = fresh_queue(conn, QueueType::Quorum).await;
    let admin = conn.create_channel().await.unwrap();
    let fill = || {
        chassis_publish(publisher, n, window, |i| {
            OutgoingMessage::new(&exchange, "bench", body.to_vec())
                .header(SUBJECT, keys[i % KEYS].as_str())
        })
    };
    let unordered = ConsumerConfig::default()
        .concurrency(CONCURRENCY)
        .prefetch(PREFETCH);
    let partitioned = unordered.clone().partition_by_subject();
    println!(
        "partitioned vs unordered consumer: {n} messages over {KEYS} subjects, quorum queue, \
         concurrency {CONCURRENCY}, prefetch {PREFETCH}, handler acks, rounds: {rounds}"
    );
    // Unmeasured warm-up of the fresh quorum queue and of both consumer paths.
    for config in [unordered.clone(), partitioned.clone()] {
        bounded("fill", fill()).await;
        bounded("warm-up consume", chassis_consume(conn, &queue, config, n)).await;
    }
    let (mut un, mut part, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let drain = async |config: &ConsumerConfig, what: &str| {
            bounded("fill", fill()).await;
            bounded(what, chassis_consume(conn, &queue, config.clone(), n)).await
        };
        let (u, p) = if round % 2 == 0 {
            let u = drain(&unordered, "unordered consume").await;
            (u, drain(&partitioned, "partitioned consume").await)
        } else {
            let p = drain(&partitioned, "partitioned consume").await;
            (drain(&unordered, "unordered consume").await, p)
        };
        println!(
            "round {}: unordered {u:.0} msg/s, partitioned {p:.0} msg/s, ratio {:.3}",
            round + 1,
            p / u
        );
        un.push(u);
        part.push(p);
        ratios.push(p / u);
    }
    println!(
        "partitioned/unordered: median round ratio {:.3} (target >= 0.9); median rates: \
         unordered {:.0} msg/s, partitioned {:.0} msg/s",
        median(&ratios),
        median(&un),
        median(&part)
    );
    delete_queue(&admin, &exchange, &queue).await;
}

async fn raw_consume(url: &str, queue: &str, n: usize) -> f64 {
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(100, BasicQosOptions::default()).await.unwrap();
    let start = Instant::now();
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    // Acks are sent without waiting for each to complete before taking the next delivery
    // (at most `prefetch` are unacked anyway), as a tuned lapin consumer does.
    let mut acks = FuturesUnordered::new();
    let mut got = 0;
    while got < n {
        tokio::select! {
            d = consumer.next() => {
                let d = d.unwrap().unwrap();
                acks.push(async move { d.acker.ack(BasicAckOptions::default()).await });
                got += 1;
            }
            Some(r) = acks.next(), if !acks.is_empty() => {
                r.unwrap();
            }
        }
    }
    while let Some(r) = acks.next().await {
        r.unwrap();
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = conn.close(200, "bye".into()).await;
    rate
}

#[tokio::main]
async fn main() {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    let n = env_usize("MSG_BENCH_N", 20_000);
    let window = env_usize("MSG_BENCH_WINDOW", 1000);
    let rounds = env_usize("MSG_BENCH_ROUNDS", 2);
    // `raw` or `chassis`: publish rounds of one side only, for profiling (`perf record`);
    // no ratio is meaningful then.
    let only = std::env::var("MSG_BENCH_ONLY").ok();
    // A case name among the arguments (`cargo bench … -- partitioned`) runs that case only.
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cases = ["publish", "partitioned"];
    let picked: Vec<&str> = cases
        .into_iter()
        .filter(|c| args.iter().any(|a| a == c))
        .collect();
    let run = |case: &str| picked.is_empty() || picked.contains(&case);
    let body = vec![b'x'; 256];
    let conn = Connection::connect(ConnectionConfig::new(url.clone(), "bench-chassis"))
        .await
        .expect("connect");
    let publisher =
        Publisher::new(&conn, PublisherConfig::default().max_in_flight(window)).unwrap();
    println!(
        "messages per run: {n}, window: {window}, body: 256 B, persistent, mandatory, rounds: {rounds}"
    );
    let publish_queue_types = if run("publish") {
        vec![QueueType::Quorum, QueueType::Classic]
    } else {
        Vec::new()
    };
    for qt in publish_queue_types {
        let (exchange, queue) = fresh_queue(&conn, qt).await;
        let bench_msg = |_| OutgoingMessage::new(&exchange, "bench", body.to_vec());
        let admin = conn.create_channel().await.unwrap();
        // Unmeasured warm-up, so the first measured round (raw lapin's) does not pay for a
        // cold queue (a fresh quorum queue's first thousands of messages are slower).
        bounded(
            "warm-up",
            raw_lapin::publish(
                &url,
                &exchange,
                "bench",
                n.min(5000),
                window,
                &body,
                RawMode::Concurrent,
                raw_lapin::bare,
            ),
        )
        .await;
        admin
            .queue_purge(queue.name.as_str().into(), QueuePurgeOptions::default())
            .await
            .unwrap();
        let (mut raw, mut raw_seq, mut ours) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            for (mode, rates) in [
                (RawMode::Concurrent, &mut raw),
                (RawMode::Sequential, &mut raw_seq),
            ] {
                if only.as_deref() == Some("chassis") {
                    break;
                }
                rates.push(
                    bounded(
                        "raw lapin publish",
                        with_cpu(
                            n,
                            raw_lapin::publish(
                                &url,
                                &exchange,
                                "bench",
                                n,
                                window,
                                &body,
                                mode,
                                raw_lapin::bare,
                            ),
                        ),
                    )
                    .await,
                );
                admin
                    .queue_purge(queue.name.as_str().into(), QueuePurgeOptions::default())
                    .await
                    .unwrap();
            }
            if only.as_deref() == Some("raw") {
                continue;
            }
            ours.push(
                bounded(
                    "chassis publish",
                    with_cpu(n, chassis_publish(&publisher, n, window, bench_msg)),
                )
                .await,
            );
            admin
                .queue_purge(queue.name.as_str().into(), QueuePurgeOptions::default())
                .await
                .unwrap();
        }
        let mean = |v: &[(f64, f64)]| v.iter().map(|r| r.0).sum::<f64>() / v.len() as f64;
        let cpu = |v: &[(f64, f64)]| v.iter().map(|r| r.1).sum::<f64>() / v.len() as f64;
        let rates = |v: &[(f64, f64)]| v.iter().map(|r| r.0.round()).collect::<Vec<_>>();
        let (rc, rs, o) = (mean(&raw), mean(&raw_seq), mean(&ours));
        // The baseline is the faster raw mode, so the ratio is never flattered by a slow one.
        let r = rc.max(rs);
        // Each round runs raw and chassis back to back, so the median of the per-round ratios
        // is the least disturbed by the broker's own drift (quorum-queue log segments, GC).
        let baseline = if rc >= rs { &raw } else { &raw_seq };
        let per_round: Vec<f64> = ours
            .iter()
            .zip(baseline)
            .map(|(o, r)| 100.0 * o.0 / r.0)
            .collect();
        let median = median(&per_round);
        println!(
            "{qt:?} publish confirmed: raw lapin concurrent {rc:.0} msg/s {:?} ({:.1} us CPU/msg), \
             sequential sends {rs:.0} msg/s {:?} ({:.1} us CPU/msg); \
             chassis Publisher {o:.0} msg/s {:?} ({:.1} us CPU/msg); \
             ratio to the faster raw: of means {:.1}%, median round {median:.1}%",
            rates(&raw),
            cpu(&raw),
            rates(&raw_seq),
            cpu(&raw_seq),
            rates(&ours),
            cpu(&ours),
            100.0 * o / r
        );
        if only.is_none() {
            // Consume-and-ack, prefetch 100.
            bounded("fill", chassis_publish(&publisher, n, window, bench_msg)).await;
            let oc = bounded(
                "chassis consume",
                chassis_consume(&conn, &queue, ConsumerConfig::default().prefetch(100), n),
            )
            .await;
            bounded("fill", chassis_publish(&publisher, n, window, bench_msg)).await;
            let rc = bounded("raw lapin consume", raw_consume(&url, &queue.name, n)).await;
            println!(
                "{qt:?} consume+ack prefetch 100: raw lapin {rc:.0} msg/s, chassis Consumer {oc:.0} msg/s, ratio {:.1}%",
                100.0 * oc / rc
            );
        }
        delete_queue(&admin, &exchange, &queue).await;
    }
    if run("partitioned") {
        partitioned_vs_unordered(&conn, &publisher, n, window, rounds.max(3), &body).await;
    }
    conn.close().await;
}
