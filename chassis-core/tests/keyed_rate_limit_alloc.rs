//! A keyed limiter's rejection allocates nothing: under abuse, rejections are most of its
//! calls, and the typed error (kind, retry-after, quota) is built inline.
//!
//! This binary's global allocator counts the allocations and frees of every thread. The count
//! is taken a few times and the least kept: other threads (the coarse clock's, just started;
//! the test harness's) may allocate now and then, but a rejection that allocated would do so
//! every time.

use std::alloc::System;
use std::error::Error as _;
use std::time::Duration;

use chassis_core::resilience::keyed_rate_limit::{
    KeyedRateLimitConfig, KeyedRateLimiter, RateLimitInfo,
};
use chassis_core::{BoxError, Error, ErrorKind};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// The fewest allocations, reallocations and frees in five runs of `f`.
fn allocations(mut f: impl FnMut()) -> usize {
    (0..5)
        .map(|_| {
            let region = Region::new(GLOBAL);
            f();
            let change = region.change();
            change.allocations + change.reallocations + change.deallocations
        })
        .min()
        .unwrap()
}

#[test]
fn a_rejection_allocates_nothing_and_keeps_its_typed_error() {
    // One call per minute, no burst: after one pass over the keys every check is refused.
    let limiter = KeyedRateLimiter::new(
        KeyedRateLimitConfig::new("abuse")
            .rate(1)
            .period(Duration::from_secs(60))
            .burst(1),
    )
    .unwrap();
    let keys: Vec<u64> = (0..1000).collect();
    for k in &keys {
        limiter.check(k).unwrap();
    }
    // The first rejection registers its log line's callsite with `tracing`, once per process.
    limiter.check(&0).unwrap_err();

    let mut rejected = 0;
    let n = allocations(|| {
        rejected = 0;
        for _ in 0..10 {
            for k in &keys {
                let err = limiter.check(k).unwrap_err();
                assert!(matches!(err.kind(), ErrorKind::RateLimited { .. }));
                rejected += 1;
            }
        }
    });
    assert_eq!(rejected, 10_000);
    assert_eq!(n, 0, "{n} allocations and frees for {rejected} rejections");

    // The error is as typed as ever: kind with name and retry-after, the quota as its source.
    let mut err = None;
    let n = allocations(|| err = Some(limiter.check(&7).unwrap_err()));
    assert_eq!(n, 0);
    let err = err.unwrap();
    match err.kind() {
        ErrorKind::RateLimited { name, retry_after } => {
            assert_eq!(&**name, "abuse");
            assert!(
                *retry_after > Duration::from_secs(58) && *retry_after <= Duration::from_secs(60),
                "{retry_after:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(err.is_rejection());
    let info = RateLimitInfo::of(&err).expect("the quota").clone();
    assert_eq!((info.limit, info.remaining), (1, 0));
    assert_eq!(info.window, Duration::from_secs(60));
    let source = err.source().expect("a source");
    assert_eq!(source.downcast_ref::<RateLimitInfo>(), Some(&info));
    assert!(err.last_error().is_some());
    assert!(
        err.to_string()
            .starts_with("rate limiter 'abuse' has no permit; retry after")
    );
    assert!(format!("{err:?}").contains("RateLimitInfo"), "{err:?}");

    // The count does see allocations: the same error with its quota boxed makes two.
    let n = allocations(|| {
        drop(Error::with_source(
            ErrorKind::RateLimited {
                name: "abuse".into(),
                retry_after: Duration::from_secs(1),
            },
            info.clone(),
        ))
    });
    assert!(n >= 2, "{n}");

    // Boxed at a middleware boundary and recovered, the quota is still there; taken out, it is
    // the same value.
    let boxed: BoxError = Box::new(err);
    let err = Error::from_boxed(boxed).unwrap();
    assert_eq!(RateLimitInfo::of(&err), Some(&info));
    let taken = err.into_source().expect("the quota, boxed on demand");
    assert_eq!(taken.downcast_ref::<RateLimitInfo>(), Some(&info));
}
