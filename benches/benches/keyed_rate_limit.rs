//! The keyed rate limiter: the in-memory one against governor's `DefaultKeyedRateLimiter` on
//! 10,000 hot keys (one thread, and two threads sharing the limiter), and the Redis one against
//! `redis-benchmark` running the same script with the same concurrency.
//!
//! Run: `cargo bench -p chassis-benches --bench keyed_rate_limit`
//! (the Redis part needs the Redis on 127.0.0.1:6379 and `redis-benchmark`; it is skipped
//! without them). Its keys are prefixed `chassis-bench:rl:<pid>:` and deleted at the end.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use chassis_core::resilience::keyed_rate_limit::{
    KeyedRateLimitConfig, KeyedRateLimiter, RedisRateLimitConfig, RedisRateLimiter,
};
use criterion::{Criterion, criterion_group, criterion_main};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

const HOT_KEYS: u64 = 10_000;

/// Two policies: every check admitted (one call per nanosecond per key), and every check after
/// the first pass rejected (one call per second per key, no burst: the keys are over their
/// limit, the case a limiter exists for).
#[derive(Clone, Copy)]
enum Policy {
    Admit,
    Reject,
}

impl Policy {
    fn name(self) -> &'static str {
        match self {
            Self::Admit => "admit",
            Self::Reject => "reject",
        }
    }

    fn chassis(self) -> KeyedRateLimiter<u64> {
        let config = match self {
            Self::Admit => KeyedRateLimitConfig::new("bench")
                .rate(1_000_000_000)
                .burst(1000),
            Self::Reject => KeyedRateLimitConfig::new("bench").rate(1).burst(1),
        };
        let limiter = KeyedRateLimiter::new(config).unwrap();
        for k in 0..HOT_KEYS {
            let _ = limiter.check(&k);
        }
        limiter
    }

    fn governor(self) -> DefaultKeyedRateLimiter<u64> {
        let quota = match self {
            Self::Admit => Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap())
                .allow_burst(NonZeroU32::new(1000).unwrap()),
            Self::Reject => Quota::per_second(NonZeroU32::new(1).unwrap()),
        };
        let limiter = RateLimiter::keyed(quota);
        for k in 0..HOT_KEYS {
            let _ = limiter.check_key(&k);
        }
        limiter
    }

    fn expect(self, admitted: bool) {
        debug_assert_eq!(admitted, matches!(self, Self::Admit));
    }
}

type Check = Arc<dyn Fn(u64) -> bool + Send + Sync>;

fn candidates(policy: Policy) -> Vec<(&'static str, Check)> {
    let chassis = policy.chassis();
    let quiet = policy.chassis();
    let governor = policy.governor();
    vec![
        (
            "chassis_check",
            Arc::new(move |k| chassis.check(&k).is_ok()) as Check,
        ),
        (
            "chassis_check_retry_after",
            Arc::new(move |k| quiet.check_retry_after(&k).is_ok()) as Check,
        ),
        (
            "governor_check_key",
            Arc::new(move |k| governor.check_key(&k).is_ok()) as Check,
        ),
    ]
}

fn in_memory(c: &mut Criterion) {
    for policy in [Policy::Admit, Policy::Reject] {
        let mut group = c.benchmark_group(format!("keyed_1_thread_{}", policy.name()));
        for (name, check) in candidates(policy) {
            group.bench_function(name, |b| {
                let mut k = 0u64;
                b.iter(|| {
                    k = (k + 1) % HOT_KEYS;
                    policy.expect(black_box(check(black_box(k))));
                })
            });
        }
        group.finish();

        // Two std threads share one limiter, walking the hot keys from opposite ends; the mean
        // time per check per thread.
        let mut group = c.benchmark_group(format!("keyed_2_threads_{}", policy.name()));
        for (name, check) in candidates(policy) {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let barrier = Arc::new(Barrier::new(2));
                    let handles: Vec<_> = (0..2u64)
                        .map(|t| {
                            let (check, barrier) = (check.clone(), barrier.clone());
                            std::thread::spawn(move || {
                                barrier.wait();
                                let start = Instant::now();
                                let mut k = t * HOT_KEYS / 2;
                                for _ in 0..iters {
                                    k = (k + 1) % HOT_KEYS;
                                    policy.expect(black_box(check(black_box(k))));
                                }
                                start.elapsed()
                            })
                        })
                        .collect();
                    let total: Duration = handles.into_iter().map(|h| h.join().unwrap()).sum();
                    total / 2
                })
            });
        }
        group.finish();
    }
}

const REDIS: &str = "redis://127.0.0.1:6379";

/// Requests per second `redis-benchmark` reports for the limiter's script over `clients`
/// connections, `pipeline` requests in flight on each, on random keys among the hot ones.
fn redis_benchmark(
    sha: &str,
    prefix: &str,
    clients: u32,
    pipeline: u32,
    requests: u32,
) -> Option<f64> {
    let key = format!("{prefix}__rand_int__");
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", "6379", "-q", "--csv"])
        .args(["-n", &requests.to_string(), "-c", &clients.to_string()])
        .args(["-r", &HOT_KEYS.to_string(), "-P", &pipeline.to_string()])
        .args(["EVALSHA", sha, "1", &key, "1", "999"])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // --csv: a header line, then `"EVALSHA ...","<rps>",...`.
    text.lines()
        .filter(|l| l.starts_with("\"EVALSHA"))
        .find_map(|l| l.split("\",\"").nth(1)?.trim_matches('"').parse().ok())
}

fn redis(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let prefix = format!("chassis-bench:rl:{}:", std::process::id());
    // One call per microsecond per key with bursts of 1000: nearly every check admitted and
    // written, as in redis-benchmark's run of the script with the same arguments.
    let config = RedisRateLimitConfig::new(
        KeyedRateLimitConfig::new("bench")
            .rate(1_000_000)
            .burst(1000),
        REDIS,
    )
    .prefix(prefix.clone())
    .timeout(Duration::from_secs(1));
    let limiter = match rt.block_on(RedisRateLimiter::connect(config)) {
        Ok(limiter) => limiter,
        Err(e) => {
            eprintln!("Redis part skipped: {e}");
            return;
        }
    };
    rt.block_on(limiter.check(0)).unwrap();

    let mut group = c.benchmark_group("keyed_redis");
    for clients in [1u64, 50] {
        group.bench_function(format!("chassis_redis_{clients}_in_flight"), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..clients)
                        .map(|t| {
                            let limiter = limiter.clone();
                            let n = iters / clients + u64::from(t < iters % clients);
                            tokio::spawn(async move {
                                let mut k = t.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                                for _ in 0..n {
                                    k ^= k << 13;
                                    k ^= k >> 7;
                                    k ^= k << 17;
                                    limiter.check(k % HOT_KEYS).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();

    // The limiter's checks share one multiplexed connection, so 50 checks in flight are a
    // pipeline of up to 50 on one connection (`-c 1 -P 50`); `-c 50 -P 1` is the same
    // concurrency over 50 connections.
    for (clients, pipeline) in [(1u32, 1u32), (1, 50), (50, 1)] {
        match redis_benchmark(limiter.script_sha1(), &prefix, clients, pipeline, 200_000) {
            Some(rps) => println!(
                "redis-benchmark EVALSHA (same script and arguments), -c {clients} -P {pipeline}: {rps:.0} requests/s = {:.0} ns/request",
                1e9 / rps
            ),
            None => println!("redis-benchmark not available: comparison skipped"),
        }
    }

    // The keys expire within milliseconds (their TTL ends when their burst is full); delete
    // whatever is left.
    rt.block_on(async {
        let mut conn = redis::Client::open(REDIS)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<u64, _> = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
        }
    });
}

criterion_group!(benches, in_memory, redis);
criterion_main!(benches);
