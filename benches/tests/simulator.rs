//! The simulator's numbers mean what the README says they mean.

use chassis_benches::sim::{Scenario, Simulate};

const SCENARIO: &str = r#"
duration = "40s"
rate = 100.0
seed = 7

[downstream]
failure_rate = 0.0
latency_p50 = "10ms"
latency_p99 = "40ms"
outages = [{ start = "10s", end = "20s", failure_rate = 1.0 }]

[[policies]]
name = "none"

[[policies]]
name = "retry"
timeout = "200ms"
retry = { max_attempts = 4, backoff = { base = "5ms", max = "50ms" }, budget = { enabled = false } }

[[policies]]
name = "retry + budget + breaker"
timeout = "200ms"
retry = { max_attempts = 4, backoff = { base = "5ms", max = "50ms" } }
circuit_breaker = { sliding_window_type = "time_based", sliding_window_size = 2, minimum_number_of_calls = 20, wait_duration_in_open_state = "1s", permitted_number_of_calls_in_half_open_state = 5 }
"#;

#[test]
fn retries_amplify_load_and_the_breaker_cures_it() {
    let scenario: Scenario = toml::from_str(SCENARIO).expect("scenario parses");
    let results = scenario.run().expect("policies validate");
    let [none, retry, guarded] = &results.summaries[..] else {
        panic!("three summaries expected");
    };

    // A quarter of the run is a hard outage: without resilience a quarter of calls fail.
    assert_eq!(none.requests, 4000);
    assert!((none.success_rate - 0.75).abs() < 0.01, "{none:?}");
    assert_eq!(none.attempts_per_request, 1.0);

    // Naive retries quadruple the load on the dead downstream and save nothing.
    assert!(retry.peak_amplification > 3.5, "{retry:?}");
    assert!(retry.attempts_per_request > 1.7, "{retry:?}");
    assert!(retry.success_rate <= none.success_rate + 0.01, "{retry:?}");

    // Budget + breaker: the breaker opens within a couple of seconds of the outage, load on the
    // downstream drops below the offered rate, and the system is back soon after the outage.
    let opened = guarded.time_to_open.expect("breaker opened");
    assert!(opened.as_secs_f64() < 2.0, "{guarded:?}");
    assert!(guarded.attempts_per_request < 1.0, "{guarded:?}");
    let recovered = guarded.time_to_recover.expect("recovered");
    assert!(recovered.as_secs_f64() <= 3.0, "{guarded:?}");
    assert!(guarded.success_rate > 0.7, "{guarded:?}");
}

#[test]
fn the_downstream_is_reproducible_from_the_seed() {
    // The downstream draws from the scenario's seed, so a run without client-side randomness is
    // identical every time; policies with jittered backoff draw from the thread's RNG, so their
    // figures vary slightly from run to run (by design: jitter must not be predictable).
    let scenario: Scenario = toml::from_str(SCENARIO).expect("scenario parses");
    let a = scenario.run().expect("runs");
    let b = scenario.run().expect("runs");
    assert_eq!(a.summaries[0], b.summaries[0]);
    assert_eq!(a.timelines[0], b.timelines[0]);
    for (x, y) in a.summaries.iter().zip(&b.summaries) {
        assert!(
            (x.success_rate - y.success_rate).abs() < 0.01,
            "{x:?} vs {y:?}"
        );
    }
}

#[test]
fn invalid_policy_is_a_typed_error() {
    let scenario: Scenario = toml::from_str(
        r#"
        [[policies]]
        name = "bad"
        circuit_breaker = { failure_rate_threshold = 150.0 }
        "#,
    )
    .expect("parses");
    let err = scenario.run().expect_err("threshold over 100% is rejected");
    assert!(
        matches!(err.kind(), chassis_core::ErrorKind::InvalidConfig { .. }),
        "{err}"
    );
}

#[test]
fn search_on_a_partial_brownout_serves_as_many_as_no_resilience_without_amplifying() {
    use chassis_benches::sim::search::{BreakerParams, Objective, SearchSpace, search};
    use std::time::Duration;

    // The brownout of `benches/scenarios/partial-brownout.toml`, shortened: 30 % of calls fail
    // and the rest are 300 ms slower. Today's policy (250 ms timeout + breaker) serves none of
    // them; the search must find one that serves at least as many as no resilience.
    let scenario: Scenario = toml::from_str(
        r#"
        duration = "20s"
        rate = 100.0
        seed = 42
        [downstream]
        outages = [{ start = "5s", end = "15s", failure_rate = 0.3, extra_latency = "300ms" }]
        [[policies]]
        name = "no resilience"
        "#,
    )
    .expect("scenario parses");
    let none = &scenario.run().expect("runs").summaries[0];
    let ms = Duration::from_millis;
    let space = SearchSpace {
        timeouts: vec![Some(ms(250)), Some(ms(1000))],
        max_attempts: vec![1, 3],
        backoff_bases: vec![ms(10)],
        budget_ratios: vec![0.1],
        breakers: vec![
            None,
            Some(BreakerParams {
                failure_rate: 50.0,
                window_secs: 5,
                wait: ms(2000),
            }),
        ],
        adaptive_limit: vec![false, true],
    };
    let objective = Objective::default();
    let found = search(std::slice::from_ref(&scenario), &objective, &space, 16, 1)
        .expect("candidates validate");
    let best = &found[0].summaries[0];
    assert!(
        best.success_rate >= none.success_rate,
        "{best:?} vs {none:?}"
    );
    assert!(best.attempts_per_request <= 1.2, "{best:?}");
    // The winner's snippet is the policy that ran: it parses back.
    let _: chassis_core::resilience::policy::ResiliencePolicy =
        toml::from_str(&found[0].snippet).expect("the snippet is a policy");
    // And a 250 ms timeout, which fails every slowed call, is not what won.
    assert!(
        !found[0].snippet.contains("\"250ms\""),
        "{}",
        found[0].snippet
    );
}

#[test]
fn every_scenario_of_the_library_parses_and_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).expect("scenarios folder") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        let scenario: Scenario =
            toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for named in &scenario.policies {
            named
                .policy
                .build()
                .unwrap_or_else(|e| panic!("{} / {}: {e}", path.display(), named.name));
        }
        names.push(path.file_stem().unwrap().to_string_lossy().into_owned());
    }
    for expected in [
        "full-outage",
        "partial-brownout",
        "latency-spike",
        "capacity-drop",
        "slow-recovery",
        "retry-storm",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
}
