//! Per-call cost of each resilience layer alone and of the full `ResiliencePolicy` stack, over a
//! bare no-op service, on tokio's current-thread runtime; with tower's own
//! timeout + concurrency limit + retry stack as a baseline.
//!
//! Each iteration is one call the way a caller makes it: `ready().await`, `call(req).await`, on
//! one long-lived service inside one `block_on` (so the runtime's per-`block_on` cost is not
//! counted). The downstream is always ready and answers at once, so what is measured is the
//! layers' own work: clock reads, timer registration, atomics, allocation.
//!
//! Run: `cargo bench -p chassis-benches --bench stack -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chassis_core::resilience::bulkhead::{BulkheadConfig, BulkheadLayer};
use chassis_core::resilience::circuit_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::resilience::rate_limiter::{RateLimiterConfig, RateLimiterLayer};
use chassis_core::resilience::retry::{BackoffRetryLayer, RetryConfig};
use chassis_core::resilience::time_limiter::TimeLimiterLayer;
use criterion::{Criterion, criterion_group, criterion_main};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

/// The downstream: does nothing, always ready.
#[derive(Clone, Copy)]
struct Noop;

impl Service<u64> for Noop {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req))
    }
}

/// tower's retry needs a policy; this is the minimal one (retry errors up to 3 attempts, no
/// backoff, no budget), so the baseline is as cheap as tower's stack gets.
#[derive(Clone, Copy)]
struct Attempts(u32);

impl<E> tower::retry::Policy<u64, u64, E> for Attempts {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u64, result: &mut Result<u64, E>) -> Option<Self::Future> {
        match result {
            Err(_) if self.0 > 1 => {
                self.0 -= 1;
                Some(ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, req: &u64) -> Option<u64> {
        Some(*req)
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

/// Benchmarks `svc` as `name`: `iters` sequential calls inside one `block_on`.
fn bench<S, E>(c: &mut Criterion, rt: &tokio::runtime::Runtime, name: &str, mut svc: S)
where
    S: Service<u64, Response = u64, Error = E>,
    E: std::fmt::Debug,
{
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for i in 0..iters {
                    let ready = svc.ready().await.expect("ready");
                    let out = ready.call(black_box(i)).await.expect("call");
                    black_box(out);
                }
                start.elapsed()
            })
        })
    });
}

fn full_policy() -> ResiliencePolicy {
    ResiliencePolicy::new()
        .name("bench")
        .timeout(Duration::from_secs(1))
        .rate_limit(RateLimiterConfig::new("bench").rate(1_000_000_000))
        .bulkhead(BulkheadConfig::new("bench").max_concurrent(1024))
        .retry(RetryConfig::new("bench").deadline(Duration::from_secs(5)))
        .circuit_breaker(CircuitBreakerConfig::new("bench"))
}

fn stack(c: &mut Criterion) {
    let rt = runtime();
    // Layers that create timers or read tokio's clock need the runtime's context while built.
    let _guard = rt.enter();

    bench(c, &rt, "stack/bare", Noop);
    bench(
        c,
        &rt,
        "stack/timeout",
        TimeLimiterLayer::new(Duration::from_secs(1)).layer(Noop),
    );
    bench(
        c,
        &rt,
        "stack/retry",
        BackoffRetryLayer::new(RetryConfig::new("bench"))
            .unwrap()
            .layer(Noop),
    );
    bench(
        c,
        &rt,
        "stack/retry+deadline",
        BackoffRetryLayer::new(RetryConfig::new("bench").deadline(Duration::from_secs(5)))
            .unwrap()
            .layer(Noop),
    );
    bench(
        c,
        &rt,
        "stack/bulkhead",
        BulkheadLayer::new(BulkheadConfig::new("bench").max_concurrent(1024))
            .unwrap()
            .layer(Noop),
    );
    bench(
        c,
        &rt,
        "stack/rate_limit",
        RateLimiterLayer::new(RateLimiterConfig::new("bench").rate(1_000_000_000))
            .unwrap()
            .layer(Noop),
    );
    bench(
        c,
        &rt,
        "stack/breaker",
        CircuitBreakerLayer::new(CircuitBreakerConfig::new("bench"))
            .unwrap()
            .layer(Noop),
    );
    bench(
        c,
        &rt,
        "stack/tower_timeout+limit+retry",
        ServiceBuilder::new()
            .timeout(Duration::from_secs(1))
            .concurrency_limit(1024)
            .retry(Attempts(3))
            .service(Noop),
    );
    bench(
        c,
        &rt,
        "stack/policy_full",
        full_policy().build().unwrap().layer(Noop),
    );
    bench(
        c,
        &rt,
        "stack/policy_retry+breaker+timeout",
        ResiliencePolicy::new()
            .timeout(Duration::from_secs(1))
            .retry(RetryConfig::new("bench"))
            .circuit_breaker(CircuitBreakerConfig::new("bench"))
            .build()
            .unwrap()
            .layer(Noop),
    );
}

criterion_group!(benches, stack);
criterion_main!(benches);
