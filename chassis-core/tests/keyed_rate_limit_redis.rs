//! The Redis backend of the keyed rate limiter: a limit shared by replicas, against the
//! machine's Redis (127.0.0.1:6379, keys under a prefix unique to the run, deleted at the
//! end), and Redis outages, against a `redis-server` of the test's own.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chassis_core::resilience::circuit_breaker::{CircuitBreakerConfig, SlidingWindowType, State};
use chassis_core::resilience::keyed_rate_limit::{
    FailMode, KeyedRateLimitConfig, RateLimitInfo, RedisRateLimitConfig, RedisRateLimiter,
};
use chassis_core::{Error, ErrorKind};
use chassis_testkit::RedisServer;
use redis::AsyncCommands;

const SHARED_REDIS: &str = "redis://127.0.0.1:6379";

fn unique_prefix(test: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("chassis-test:{test}:{}:{nanos}:", std::process::id())
}

async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_limit() {
    const RATE: u64 = 200;
    const BURST: u64 = 20;
    let prefix = unique_prefix("replicas");
    let config = RedisRateLimitConfig::new(
        KeyedRateLimitConfig::new("shared")
            .rate(RATE as u32)
            .burst(BURST as u32),
        SHARED_REDIS,
    )
    .prefix(prefix.clone())
    .timeout(Duration::from_millis(500));
    // Two "replicas": two limiters, each with its own connection.
    let a = RedisRateLimiter::connect(config.clone()).await.unwrap();
    let b = RedisRateLimiter::connect(config).await.unwrap();

    let admitted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let window = Duration::from_millis(1500);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for limiter in [a.clone(), b.clone()] {
        let (admitted, rejected) = (admitted.clone(), rejected.clone());
        tasks.push(tokio::spawn(async move {
            while started.elapsed() < window {
                match limiter.check("tenant-1").await {
                    Ok(()) => admitted.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        assert!(
                            matches!(e.kind(), ErrorKind::RateLimited { .. }),
                            "unexpected {e}"
                        );
                        assert!(RateLimitInfo::of(&e).is_some(), "{e}: no quota");
                        rejected.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    let bound = RATE as f64 * elapsed + BURST as f64;
    let expected = RATE as f64 * window.as_secs_f64() + BURST as f64;
    assert!(admitted <= bound + 1.0, "admitted {admitted} > {bound}");
    assert!(
        admitted >= expected * 0.95,
        "admitted {admitted}, expected about {expected}"
    );
    assert!(
        rejected.load(Ordering::Relaxed) > 0,
        "the replicas did not reach the limit"
    );

    // The key lives under the prefix, with a TTL (Redis memory stays bounded too).
    let key = a.redis_key("tenant-1");
    assert!(key.starts_with(&prefix));
    let mut conn = raw(SHARED_REDIS).await;
    let ttl: i64 = conn.pttl(&key).await.unwrap();
    assert!(
        ttl > 0 && ttl <= 100 + 5,
        "ttl {ttl} ms (burst 20 at 5 ms per call)"
    );
    let removed: u64 = conn.del(&key).await.unwrap();
    assert_eq!(removed, 1);
}

#[tokio::test]
async fn rejection_carries_redis_clock_retry_after_and_quota() {
    let prefix = unique_prefix("quota");
    let limiter = RedisRateLimiter::connect(
        RedisRateLimitConfig::new(
            KeyedRateLimitConfig::new("quota")
                .rate(2)
                .period(Duration::from_secs(10))
                .burst(2),
            SHARED_REDIS,
        )
        .prefix(prefix.clone()),
    )
    .await
    .unwrap();
    limiter.check("k").await.unwrap();
    limiter.check("k").await.unwrap();
    let err = limiter.check("k").await.unwrap_err();
    let retry_after = err.retry_after().unwrap();
    // One permit per 5 s; the burst was taken within milliseconds.
    assert!(
        retry_after > Duration::from_millis(4800) && retry_after <= Duration::from_secs(5),
        "{retry_after:?}"
    );
    let info = RateLimitInfo::of(&err).unwrap();
    assert_eq!((info.limit, info.remaining), (2, 0));
    assert!(matches!(err.kind(), ErrorKind::RateLimited { name, .. } if &**name == "quota"));
    assert_eq!(info.window, Duration::from_secs(10));
    assert!(info.reset_after > Duration::from_millis(9800), "{info:?}");
    // Another key is untouched.
    limiter.check("other").await.unwrap();

    let mut conn = raw(SHARED_REDIS).await;
    let removed: u64 = conn
        .del(&[limiter.redis_key("k"), limiter.redis_key("other")])
        .await
        .unwrap();
    assert_eq!(removed, 2);
}

fn outage_config(url: &str, mode: FailMode, timeout: Duration) -> RedisRateLimitConfig {
    RedisRateLimitConfig::new(
        KeyedRateLimitConfig::new(format!("outage-{mode:?}"))
            .rate(1000)
            .burst(5),
        url,
    )
    .prefix(unique_prefix("outage"))
    .timeout(timeout)
    .on_unavailable(mode)
    .breaker(
        CircuitBreakerConfig::new(format!("redis-{mode:?}"))
            .sliding_window(SlidingWindowType::CountBased, 4)
            .minimum_number_of_calls(4)
            .failure_rate_threshold(50.0)
            .wait_duration_in_open_state(Duration::from_millis(500))
            .permitted_number_of_calls_in_half_open_state(1),
    )
}

/// Checks `key` and asserts the call returned within `within`.
async fn timed_check(limiter: &RedisRateLimiter, key: &str, within: Duration) -> Result<(), Error> {
    let started = Instant::now();
    let result = limiter.check(key).await;
    let took = started.elapsed();
    assert!(took <= within, "check took {took:?} (> {within:?})");
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_open_or_closed_and_recovers() {
    let server = RedisServer::start_new();
    let timeout = Duration::from_millis(100);
    let slack = Duration::from_millis(150);
    let open = RedisRateLimiter::connect(outage_config(&server.url(), FailMode::Open, timeout))
        .await
        .unwrap();
    let closed = RedisRateLimiter::connect(outage_config(&server.url(), FailMode::Closed, timeout))
        .await
        .unwrap();
    timed_check(&open, "k", timeout + slack).await.unwrap();
    timed_check(&closed, "k", timeout + slack).await.unwrap();

    // A frozen server: connections stay up, nothing answers. Only the timeout ends the wait.
    server.pause();
    // One success and three timeouts in a count window of 4: the breakers open.
    for _ in 0..3 {
        timed_check(&open, "k", timeout + slack)
            .await
            .expect("fail open admits");
        let err = timed_check(&closed, "k", timeout + slack)
            .await
            .expect_err("fail closed rejects");
        assert!(matches!(err.kind(), ErrorKind::RateLimited { .. }), "{err}");
        let cause = err.last_error().and_then(|e| e.downcast_ref::<Error>());
        assert!(
            matches!(cause.map(Error::kind), Some(ErrorKind::Timeout { .. })),
            "{err:?}"
        );
    }
    // Both breakers are open, and calls no longer wait on Redis.
    assert_eq!(open.breaker().state(), State::Open);
    assert_eq!(closed.breaker().state(), State::Open);
    let fast = Duration::from_millis(20);
    timed_check(&open, "k", fast).await.unwrap();
    let err = timed_check(&closed, "k", fast).await.unwrap_err();
    let cause = err.last_error().and_then(|e| e.downcast_ref::<Error>());
    assert!(
        matches!(cause.map(Error::kind), Some(ErrorKind::CircuitOpen { .. })),
        "{err:?}"
    );
    assert!(err.retry_after().unwrap() <= Duration::from_millis(500));

    // The server crashes: refused connections, still no panic and no hang.
    server.kill();
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        timed_check(&open, "k", timeout + slack).await.unwrap();
        assert!(timed_check(&closed, "k", timeout + slack).await.is_err());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Restarted on the same port, empty (the script must be loaded again): both recover.
    server.start();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = timed_check(&closed, "fresh", timeout + slack).await.is_ok();
        if ok && closed.breaker().state() == State::Closed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fail-closed limiter did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The fail-open limiter limits again (a rejection can only come from Redis).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut limited = false;
        for _ in 0..20 {
            if let Err(e) = timed_check(&open, "burst", timeout + slack).await {
                assert!(RateLimitInfo::of(&e).is_some(), "{e}");
                limited = true;
                break;
            }
        }
        if limited {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fail-open limiter did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn connecting_to_a_closed_port_fails_in_time() {
    let port = chassis_testkit::free_port();
    let started = Instant::now();
    let err = RedisRateLimiter::connect(
        RedisRateLimitConfig::new(
            KeyedRateLimitConfig::new("nowhere"),
            format!("redis://127.0.0.1:{port}"),
        )
        .connect_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::ComponentStart { .. }),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}
