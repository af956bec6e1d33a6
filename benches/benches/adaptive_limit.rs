//! Per-call cost of the adaptive concurrency limit against tower's `ConcurrencyLimit`, over the
//! same always-ready no-op service, in the same run, on tokio's current-thread runtime; and of
//! the full `ResiliencePolicy` with the adaptive limit configured against the policy without it.
//!
//! Each iteration is one call: `ready().await`, `call(req).await`, on one long-lived service
//! inside one `block_on`. The limit is never reached (one call in flight), so what is measured is
//! admission and release: for tower a semaphore permit, for the adaptive limit a
//! compare-and-swap, two clock reads and the estimator's lock per finished call.
//!
//! Run: `cargo bench -p chassis-benches --bench adaptive_limit -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chassis_core::resilience::adaptive_limit::{
    AdaptiveLimitConfig, AdaptiveLimitLayer, LimitAlgorithm,
};
use chassis_core::resilience::bulkhead::BulkheadConfig;
use chassis_core::resilience::circuit_breaker::CircuitBreakerConfig;
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::resilience::rate_limiter::RateLimiterConfig;
use chassis_core::resilience::retry::RetryConfig;
use criterion::{Criterion, criterion_group, criterion_main};
use tower::limit::ConcurrencyLimitLayer;
use tower::{Layer, Service, ServiceExt};

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

fn limit(algorithm: LimitAlgorithm) -> AdaptiveLimitLayer {
    AdaptiveLimitLayer::new(
        AdaptiveLimitConfig::new("bench")
            .algorithm(algorithm)
            .initial_limit(1024)
            .max_limit(4096),
    )
    .unwrap()
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

fn adaptive_limit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime");
    let _guard = rt.enter();

    bench(c, &rt, "adaptive_limit/bare", Noop);
    bench(
        c,
        &rt,
        "adaptive_limit/tower_concurrency_limit",
        ConcurrencyLimitLayer::new(1024).layer(Noop),
    );
    bench(
        c,
        &rt,
        "adaptive_limit/vegas",
        limit(LimitAlgorithm::vegas()).layer(Noop),
    );
    bench(
        c,
        &rt,
        "adaptive_limit/aimd",
        limit(LimitAlgorithm::aimd()).layer(Noop),
    );
    bench(
        c,
        &rt,
        "adaptive_limit/policy_full",
        full_policy().build().unwrap().layer(Noop),
    );
    bench(
        c,
        &rt,
        "adaptive_limit/policy_full+adaptive_limit",
        full_policy()
            .adaptive_limit(
                AdaptiveLimitConfig::new("bench")
                    .initial_limit(1024)
                    .max_limit(4096),
            )
            .build()
            .unwrap()
            .layer(Noop),
    );
}

criterion_group!(benches, adaptive_limit);
criterion_main!(benches);
