//! Closed-path cost of the circuit breaker: ours vs `failsafe` vs a bare no-op service, on one
//! thread and with two threads sharing one breaker.
//!
//! Everything is driven synchronously (poll_ready + call + poll of an always-ready future with
//! a no-op waker), so the numbers are the breaker's own cost, not a runtime's.
//!
//! Run: `cargo bench -p chassis-benches --bench breaker`

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use chassis_core::BoxError;
use chassis_core::resilience::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, MonotonicClock, Outcome,
    SlidingWindowType,
};
use criterion::{Criterion, criterion_group, criterion_main};
use failsafe::{CircuitBreaker as _, Config, backoff, failure_policy};
use tower::{Layer, Service};

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

/// One request through a tower service, the way a caller drives it.
#[inline]
fn drive<S>(svc: &mut S, req: u64) -> bool
where
    S: Service<u64, Response = u64>,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        _ => return false,
    }
    let fut = pin!(svc.call(req));
    matches!(fut.poll(&mut cx), Poll::Ready(Ok(_)))
}

fn count_config() -> CircuitBreakerConfig {
    CircuitBreakerConfig::new("bench-count").sliding_window(SlidingWindowType::CountBased, 100)
}

/// Time window with slow-call accounting (every call's duration is checked against 1 s).
fn time_config() -> CircuitBreakerConfig {
    CircuitBreakerConfig::new("bench-time")
        .sliding_window(SlidingWindowType::TimeBased, 10)
        .slow_call_duration_threshold(Duration::from_secs(1))
        .slow_call_rate_threshold(50.0)
}

fn failsafe_default() -> impl failsafe::CircuitBreaker + Clone + Send + 'static {
    Config::new().build()
}

fn failsafe_consecutive() -> impl failsafe::CircuitBreaker + Clone + Send + 'static {
    Config::new()
        .failure_policy(failure_policy::consecutive_failures(
            3,
            backoff::constant(Duration::from_secs(30)),
        ))
        .build()
}

/// The candidates, each a closure factory: `make()` returns a per-thread "call once" closure
/// sharing one breaker with the other threads' closures.
type CallOnce = Box<dyn FnMut(u64) -> bool + Send>;
type Make = Box<dyn Fn() -> CallOnce>;

fn candidates() -> Vec<(&'static str, Make)> {
    let count_layer = CircuitBreakerLayer::new(count_config()).unwrap();
    let time_layer = CircuitBreakerLayer::new(time_config()).unwrap();
    let time_precise = CircuitBreakerLayer::new(time_config())
        .unwrap()
        .with_clock(MonotonicClock::new());
    let core = CircuitBreakerHandle::new(time_config()).unwrap();
    let fs_default = failsafe_default();
    let fs_consecutive = failsafe_consecutive();
    vec![
        (
            "bare_noop_service",
            Box::new(|| {
                let mut svc = Noop;
                Box::new(move |i| drive(&mut svc, i)) as CallOnce
            }),
        ),
        (
            "chassis_count_window_service",
            Box::new(move || {
                let mut svc = count_layer.layer(Noop);
                Box::new(move |i| drive(&mut svc, i)) as CallOnce
            }),
        ),
        (
            "chassis_time_window_slow_calls_service",
            Box::new(move || {
                let mut svc = time_layer.layer(Noop);
                Box::new(move |i| drive(&mut svc, i)) as CallOnce
            }),
        ),
        (
            "chassis_time_window_slow_calls_core",
            Box::new(move || {
                let breaker = core.clone();
                Box::new(move |i| match breaker.try_acquire() {
                    Ok(permit) => {
                        black_box(i);
                        permit.record(Outcome::Success);
                        true
                    }
                    Err(_) => false,
                }) as CallOnce
            }),
        ),
        (
            "chassis_time_window_slow_calls_service_instant_clock",
            Box::new(move || {
                let mut svc = time_precise.layer(Noop);
                Box::new(move |i| drive(&mut svc, i)) as CallOnce
            }),
        ),
        (
            "failsafe_default",
            Box::new(move || {
                let cb = fs_default.clone();
                Box::new(move |i| cb.call(|| Ok::<u64, BoxError>(black_box(i))).is_ok()) as CallOnce
            }),
        ),
        (
            "failsafe_consecutive_failures",
            Box::new(move || {
                let cb = fs_consecutive.clone();
                Box::new(move |i| cb.call(|| Ok::<u64, BoxError>(black_box(i))).is_ok()) as CallOnce
            }),
        ),
    ]
}

fn one_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker_closed_1_thread");
    for (name, make) in candidates() {
        let mut call = make();
        group.bench_function(name, |b| {
            let mut i = 0u64;
            b.iter(|| {
                i += 1;
                assert!(call(i));
            })
        });
    }
    group.finish();
}

/// Two std threads share one breaker; reports the mean time per call per thread.
fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker_closed_2_threads_shared");
    for (name, make) in candidates() {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let barrier = Arc::new(Barrier::new(2));
                let handles: Vec<_> = (0..2)
                    .map(|_| {
                        let mut call = make();
                        let barrier = barrier.clone();
                        std::thread::spawn(move || {
                            barrier.wait();
                            let start = Instant::now();
                            for i in 0..iters {
                                assert!(call(i));
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

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = one_thread, two_threads
}
criterion_main!(benches);
