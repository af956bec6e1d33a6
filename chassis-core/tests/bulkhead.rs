//! Behaviour of the bulkhead and the rate limiter, in tokio's paused time.

use std::time::Duration;

use chassis_core::resilience::bulkhead::{BulkheadConfig, BulkheadLayer};
use chassis_core::resilience::rate_limiter::{RateLimiterConfig, RateLimiterLayer};
use chassis_core::{BoxError, Error, ErrorKind};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};

fn sleeper(
    d: Duration,
) -> impl Service<(), Response = (), Error = BoxError, Future: Send> + Clone + Send {
    service_fn(move |()| async move {
        tokio::time::sleep(d).await;
        Ok::<_, BoxError>(())
    })
}

/// Starts a call of `svc` in the background and lets it run until it waits (holding its
/// permit, if it got one).
async fn start_call<S>(svc: &S) -> JoinHandle<Result<(), BoxError>>
where
    S: Service<(), Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static,
{
    let call = tokio::spawn(svc.clone().oneshot(()));
    tokio::task::yield_now().await;
    call
}

fn bulkhead(max: usize, wait_ms: u64) -> BulkheadLayer {
    BulkheadLayer::new(
        BulkheadConfig::new("bh")
            .max_concurrent(max)
            .max_wait(Duration::from_millis(wait_ms)),
    )
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn waits_no_longer_than_max_wait_then_rejects_typed() {
    let layer = bulkhead(1, 200);
    let svc = layer.layer(sleeper(Duration::from_secs(1)));
    let busy = start_call(&svc).await;
    assert_eq!(layer.available_permits(), 0);

    let start = Instant::now();
    let err = Error::from_boxed(svc.clone().oneshot(()).await.unwrap_err()).unwrap();
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(
        err.kind(),
        &ErrorKind::BulkheadFull {
            name: "bh".into(),
            max_concurrent: 1,
            max_wait: Duration::from_millis(200)
        }
    );
    busy.await.unwrap().unwrap();
    assert_eq!(layer.available_permits(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_permit_freed_within_the_wait_is_taken() {
    let layer = bulkhead(1, 500);
    let svc = layer.layer(sleeper(Duration::from_millis(300)));
    let busy = start_call(&svc).await;
    let start = Instant::now();
    svc.clone().oneshot(()).await.unwrap();
    // Waited 300 ms for the permit, then ran 300 ms.
    assert_eq!(start.elapsed(), Duration::from_millis(600));
    busy.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn zero_wait_rejects_at_once_and_a_dropped_call_frees_its_permit() {
    let layer = bulkhead(2, 0);
    let svc = layer.layer(sleeper(Duration::from_secs(10)));
    let mut a = svc.clone();
    let mut b = svc.clone();
    let fa = a.ready().await.unwrap().call(());
    let fb = b.ready().await.unwrap().call(());
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert!(matches!(
        Error::from_boxed(err).unwrap().kind(),
        ErrorKind::BulkheadFull { .. }
    ));
    drop(fa); // cancelled, e.g. by an outer timeout
    assert_eq!(layer.available_permits(), 1);
    let c = start_call(&svc).await;
    assert_eq!(layer.available_permits(), 0);
    drop(fb);
    c.abort();
}

#[test]
fn bulkhead_config_from_toml_and_validation() {
    let cfg: BulkheadConfig = toml::from_str(
        r#"
        name = "db"
        max_concurrent = 8
        max_wait = "25ms"
        "#,
    )
    .unwrap();
    assert_eq!(
        cfg,
        BulkheadConfig::new("db")
            .max_concurrent(8)
            .max_wait(Duration::from_millis(25))
    );
    assert!(BulkheadLayer::new(cfg.max_concurrent(0)).is_err());
}

fn limiter(rate: u32, burst: u32, wait_ms: u64) -> RateLimiterLayer {
    RateLimiterLayer::new(
        RateLimiterConfig::new("rl")
            .rate(rate)
            .burst(burst)
            .max_wait(Duration::from_millis(wait_ms)),
    )
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn rate_limiter_is_shared_by_clones_and_refills() {
    // 5 per second: one permit every 200 ms, burst 2.
    let layer = limiter(5, 2, 0);
    let svc = layer.layer(sleeper(Duration::ZERO));
    svc.clone().oneshot(()).await.unwrap();
    svc.clone().oneshot(()).await.unwrap();
    let err = Error::from_boxed(svc.clone().oneshot(()).await.unwrap_err()).unwrap();
    assert_eq!(
        err.kind(),
        &ErrorKind::RateLimited {
            name: "rl".into(),
            retry_after: Duration::from_millis(200)
        }
    );
    // A second service from the same layer shares the spent bucket.
    let other = layer.layer(sleeper(Duration::ZERO));
    assert!(other.clone().oneshot(()).await.is_err());

    tokio::time::advance(Duration::from_millis(200)).await;
    other.clone().oneshot(()).await.unwrap();
    assert!(other.clone().oneshot(()).await.is_err());
    tokio::time::advance(Duration::from_millis(400)).await;
    other.clone().oneshot(()).await.unwrap();
    other.clone().oneshot(()).await.unwrap();
    assert!(other.oneshot(()).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn rate_limiter_waits_for_a_reserved_permit_within_max_wait() {
    // One permit every 100 ms, no burst, waits up to 250 ms.
    let layer = limiter(10, 1, 250);
    let svc = layer.layer(sleeper(Duration::ZERO));
    let start = Instant::now();
    let calls: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    let mut admitted_at = Vec::new();
    let mut rejected = 0;
    for c in calls {
        match c.await.unwrap() {
            Ok(()) => admitted_at.push(start.elapsed()),
            Err(e) => {
                assert!(matches!(
                    Error::from_boxed(e).unwrap().kind(),
                    ErrorKind::RateLimited { retry_after, .. } if *retry_after == Duration::from_millis(300)
                ));
                rejected += 1;
            }
        }
    }
    // Permits at 0, 100 and 200 ms; the fourth would wait 300 ms > 250 ms.
    assert_eq!(
        admitted_at,
        [
            Duration::ZERO,
            Duration::from_millis(100),
            Duration::from_millis(200)
        ]
    );
    assert_eq!(rejected, 1);
}
