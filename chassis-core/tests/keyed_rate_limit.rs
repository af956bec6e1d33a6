//! The in-memory keyed rate limiter and its tower layer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use chassis_core::resilience::clock::{MonotonicClock, TokioClock};
use chassis_core::resilience::keyed_rate_limit::{
    KeyedRateLimitConfig, KeyedRateLimitLayer, KeyedRateLimiter, RateLimitBackend, RateLimitInfo,
};
use chassis_core::{BoxError, Error, ErrorKind};
use tower::{Layer, ServiceExt, service_fn};

fn paused_limiter(rate: u32, burst: u32) -> KeyedRateLimiter<&'static str> {
    KeyedRateLimiter::with_clock(
        KeyedRateLimitConfig::new("api").rate(rate).burst(burst),
        TokioClock::new(),
    )
    .unwrap()
}

fn retry_after(err: &Error) -> Duration {
    match err.kind() {
        ErrorKind::RateLimited { retry_after, name } => {
            assert_eq!(&**name, "api");
            *retry_after
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn burst_then_rate_per_key() {
    // 10 per second (one per 100 ms), bursts of 3.
    let l = paused_limiter(10, 3);
    for _ in 0..3 {
        l.check(&"a").unwrap();
    }
    let err = l.check(&"a").unwrap_err();
    assert_eq!(retry_after(&err), Duration::from_millis(100));

    // Time refills one permit per interval, and no more.
    tokio::time::advance(Duration::from_millis(99)).await;
    assert_eq!(
        retry_after(&l.check(&"a").unwrap_err()),
        Duration::from_millis(1)
    );
    tokio::time::advance(Duration::from_millis(1)).await;
    l.check(&"a").unwrap();
    assert!(l.check(&"a").is_err());

    // Over one second of steady calls, exactly rate calls get through.
    let mut admitted = 0;
    for _ in 0..100 {
        tokio::time::advance(Duration::from_millis(10)).await;
        if l.check(&"a").is_ok() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);
}

#[tokio::test(start_paused = true)]
async fn keys_are_independent() {
    let l = paused_limiter(1, 2);
    l.check(&"a").unwrap();
    l.check(&"a").unwrap();
    assert!(l.check(&"a").is_err());
    // "b" has its whole burst although "a" is drained.
    l.check(&"b").unwrap();
    l.check(&"b").unwrap();
    assert!(l.check(&"b").is_err());
    assert!(l.check(&"a").is_err());
}

#[tokio::test(start_paused = true)]
async fn rejection_carries_retry_after_and_the_quota() {
    // 5 per 10 s (one per 2 s), bursts of 4.
    let l = KeyedRateLimiter::with_clock(
        KeyedRateLimitConfig::new("api")
            .rate(5)
            .period(Duration::from_secs(10))
            .burst(4),
        TokioClock::new(),
    )
    .unwrap();
    for _ in 0..4 {
        l.check(&"k").unwrap();
    }
    tokio::time::advance(Duration::from_millis(500)).await;
    let err = l.check(&"k").unwrap_err();
    // The TAT is now + 8 s - 0.5 s; the next permit is due one interval before it.
    assert_eq!(retry_after(&err), Duration::from_millis(1500));
    assert_eq!(err.retry_after(), Some(Duration::from_millis(1500)));
    assert!(err.is_rejection());
    let info = RateLimitInfo::of(&err).expect("quota as source");
    assert_eq!(info.limit, 4);
    assert_eq!(info.window, Duration::from_secs(8));
    assert_eq!(info.remaining, 0);
    assert_eq!(info.reset_after, Duration::from_millis(7500));
    assert_eq!(
        err.to_string(),
        "rate limiter 'api' has no permit; retry after 1500ms"
    );

    assert_eq!(l.check_retry_after(&"k"), Err(Duration::from_millis(1500)));

    // Waiting exactly retry_after admits the call.
    tokio::time::advance(Duration::from_millis(1500)).await;
    l.check(&"k").unwrap();
}

#[test]
fn two_threads_on_one_key_get_burst_plus_rate_times_t() {
    const RATE: u64 = 2_000;
    const BURST: u64 = 100;
    let limiter = KeyedRateLimiter::with_clock(
        KeyedRateLimitConfig::new("api")
            .rate(RATE as u32)
            .burst(BURST as u32),
        MonotonicClock::new(),
    )
    .unwrap();
    let admitted = AtomicU64::new(0);
    let barrier = Barrier::new(2);
    let window = Duration::from_millis(500);
    let started = Instant::now();
    // Permits accrue up to the burst while nobody asks; beyond that they are gone. On a busy
    // machine both threads can be descheduled at once for longer than the burst lasts
    // (BURST / RATE = 50 ms): the permits such a pause loses are not the limiter's to give.
    let burst_lasts = Duration::from_secs_f64(BURST as f64 / RATE as f64);
    let last_check = std::sync::Mutex::new(Instant::now());
    let lost_to_pauses = std::sync::Mutex::new(Duration::ZERO);
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                barrier.wait();
                *last_check.lock().unwrap() = Instant::now();
                let start = Instant::now();
                while start.elapsed() < window {
                    if limiter.check(&"hot").is_ok() {
                        admitted.fetch_add(1, Ordering::Relaxed);
                    }
                    let now = Instant::now();
                    let gap = now - std::mem::replace(&mut *last_check.lock().unwrap(), now);
                    if gap > burst_lasts {
                        *lost_to_pauses.lock().unwrap() += gap - burst_lasts;
                    }
                }
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = admitted.load(Ordering::Relaxed) as f64;
    // GCRA's bound: at most the burst plus one permit per interval of elapsed time.
    let bound = BURST as f64 + RATE as f64 * elapsed;
    let paused = lost_to_pauses.into_inner().unwrap().as_secs_f64();
    let expected = BURST as f64 + RATE as f64 * (window.as_secs_f64() - paused);
    assert!(
        admitted <= bound + 1.0,
        "admitted {admitted} > bound {bound}"
    );
    assert!(
        admitted >= expected * 0.97,
        "admitted {admitted}, expected about {expected} ({paused:.3} s with no thread running)"
    );
}

#[tokio::test(start_paused = true)]
async fn the_layer_limits_each_key_of_the_request() {
    let limiter = KeyedRateLimiter::with_clock(
        KeyedRateLimitConfig::new("api").rate(1).burst(1),
        TokioClock::new(),
    )
    .unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let counted = calls.clone();
    let layer = KeyedRateLimitLayer::new(limiter, |req: &(String, u32)| req.0.clone());
    let svc = layer.layer(service_fn(move |(_, n): (String, u32)| {
        counted.fetch_add(1, Ordering::Relaxed);
        async move { Ok::<_, BoxError>(n) }
    }));

    assert_eq!(svc.clone().oneshot(("a".into(), 1)).await.unwrap(), 1);
    let err = svc.clone().oneshot(("a".into(), 2)).await.unwrap_err();
    let err = Error::from_boxed(err).expect("a chassis error");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(svc.clone().oneshot(("b".into(), 3)).await.unwrap(), 3);
    // The rejected call never reached the inner service.
    assert_eq!(calls.load(Ordering::Relaxed), 2);

    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(svc.oneshot(("a".into(), 4)).await.unwrap(), 4);
}

#[tokio::test]
async fn the_backend_trait_answers_like_check() {
    let limiter: KeyedRateLimiter<u32> =
        KeyedRateLimiter::new(KeyedRateLimitConfig::new("api").rate(1).burst(1)).unwrap();
    RateLimitBackend::check(&limiter, 7).await.unwrap();
    let err = RateLimitBackend::check(&limiter, 7).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::RateLimited { .. }));
}

#[test]
fn invalid_configs_are_rejected() {
    for config in [
        KeyedRateLimitConfig::new("x").rate(0),
        KeyedRateLimitConfig::new("x").period(Duration::ZERO),
        KeyedRateLimitConfig::new("x").max_keys(0),
    ] {
        let err = KeyedRateLimiter::<u64>::new(config).unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::InvalidConfig { .. }),
            "{err}"
        );
    }
}
