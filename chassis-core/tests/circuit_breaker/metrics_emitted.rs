//! The `circuit_breaker.*` metrics, read from metrics-util's debugging recorder.

use std::collections::HashMap;
use std::time::Duration;

use chassis_core::resilience::circuit_breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, MonotonicClock, Outcome, SlidingWindowType,
};
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

#[test]
fn calls_by_outcome_and_state_gauge() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let handle = CircuitBreakerHandle::with_clock(
            CircuitBreakerConfig::new("metered")
                .sliding_window(SlidingWindowType::CountBased, 4)
                .minimum_number_of_calls(4)
                .slow_call_duration_threshold(Duration::from_millis(1)),
            MonotonicClock::new(),
        )
        .unwrap();
        handle.try_acquire().unwrap().record(Outcome::Success);
        handle.try_acquire().unwrap().record(Outcome::Success);
        let slow = handle.try_acquire().unwrap();
        std::thread::sleep(Duration::from_millis(5));
        slow.record(Outcome::Failure);
        handle.try_acquire().unwrap().record(Outcome::Failure);
        // 2 of 4 failed: open
        assert!(handle.try_acquire().is_err());
        assert!(handle.try_acquire().is_err());
    });

    let mut counters = HashMap::new();
    let mut gauges = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: HashMap<_, _> = key
            .key()
            .labels()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        assert_eq!(labels["name"], "metered");
        match (key.kind(), key.key().name(), value) {
            (MetricKind::Counter, "circuit_breaker_calls_total", DebugValue::Counter(n)) => {
                counters.insert(labels["outcome"].clone(), n);
            }
            (MetricKind::Gauge, "circuit_breaker_state", DebugValue::Gauge(v)) => {
                gauges.insert("state", v.into_inner());
            }
            other => panic!("unexpected metric {other:?}"),
        }
    }
    assert_eq!(counters["success"], 2);
    assert_eq!(counters["failure"], 1);
    assert_eq!(counters["slow_failure"], 1);
    assert_eq!(counters["slow_success"], 0);
    assert_eq!(counters["not_permitted"], 2);
    assert_eq!(gauges["state"], 1.0, "open");
}
