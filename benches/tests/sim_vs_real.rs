//! The simulator's prediction holds against the real thing: the shop's payments client (the
//! chassis `HttpClient` with the scenario's policy) against the payment-provider stand-in playing
//! a short scenario over loopback. A change that breaks either side (the model, the stand-in's
//! playback, the client's retry or timeout, the simulator's accounting) moves the figures apart.

use chassis_benches::sim::Scenario;
use chassis_benches::sim::live::{Tolerance, compare};

/// 5 s at 100 requests/s: a second of hard outage (failures, retried) and a second in which
/// every call is 300 ms slower than the 150 ms attempt timeout (timeouts, retried).
const SCENARIO: &str = r#"
duration = "5s"
rate = 100.0
seed = 11

[downstream]
failure_rate = 0.01
latency_p50 = "10ms"
latency_p99 = "40ms"
outages = [
  { start = "1s", end = "2s", failure_rate = 1.0 },
  { start = "3s", end = "4s", failure_rate = 0.0, extra_latency = "300ms" },
]

[[policies]]
name = "timeout + retry x3"
timeout = "150ms"
retry = { max_attempts = 3, backoff = { base = "10ms", max = "50ms", jitter = "full" }, budget = { enabled = false } }
"#;

#[test]
fn payments_client_against_the_stand_in_matches_the_simulator() {
    let scenario = Scenario::from_toml(SCENARIO).expect("scenario parses");
    let policy = &scenario.policies[0];
    let comparison = compare(&scenario, policy).expect("runs");
    let (predicted, measured) = (&comparison.predicted, &comparison.measured);
    eprintln!("predicted {predicted:?}\nmeasured  {measured:?}");

    // The scenario bites on both sides: two of five seconds fail or time out whatever the
    // retries do, and those seconds' requests are tried three times.
    assert_eq!(measured.requests, 500);
    assert!(
        (0.5..0.75).contains(&predicted.success_rate),
        "{predicted:?}"
    );
    assert!(predicted.attempts_per_request > 1.5, "{predicted:?}");

    assert!(
        comparison.within(&Tolerance::default()),
        "success gap {:+.1} points, attempts gap {:+.1} %\npredicted {predicted:?}\nmeasured  {measured:?}",
        comparison.success_gap_points(),
        comparison.attempts_gap() * 100.0,
    );
}
