//! Operator configuration files: every `Deserialize` configuration of the chassis read from
//! TOML (and from JSON when the input is a JSON object). A configuration that parses either
//! validates/builds or is refused with an error, never a panic; validated values keep their
//! documented bounds.
#![no_main]

use std::time::Duration;

use chassis_core::ServiceInfo;
use chassis_core::lifecycle::LifecycleConfig;
use chassis_core::resilience::bulkhead::BulkheadConfig;
use chassis_core::resilience::circuit_breaker::CircuitBreakerConfig;
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::resilience::rate_limiter::RateLimiterConfig;
use chassis_core::resilience::retry::RetryConfig;
use chassis_http::ServerConfig;
use chassis_http::health::HealthPaths;
use chassis_http::layers::StandardLayersConfig;
use chassis_messaging::{
    ConnectionConfig, ConsumerConfig, PublisherConfig, RelayConfig, TopologyConfig,
};
use chassis_observability::TelemetryConfig;
use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::de::DeserializeOwned;

/// The document read as TOML, and also as JSON when it is a JSON object.
fn parse<T: DeserializeOwned>(text: &str) -> Vec<T> {
    let mut out: Vec<T> = toml::from_str(text).into_iter().collect();
    if text.trim_start().starts_with('{') {
        out.extend(serde_json::from_str(text));
    }
    out
}

fn check_retry(config: &RetryConfig) {
    if config.validate().is_err() {
        return;
    }
    let backoff = config.backoff;
    let mut rng = StdRng::seed_from_u64(7);
    let mut previous = backoff.base;
    for retry in 0..70 {
        let ceiling = backoff.ceiling(retry);
        assert!(ceiling <= backoff.max);
        let delay = backoff.delay(retry, previous, &mut rng);
        assert!(
            delay <= backoff.max,
            "retry {retry}: {delay:?} over {:?}",
            backoff.max
        );
        previous = delay;
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    for policy in parse::<ResiliencePolicy>(text) {
        let _ = policy.build();
    }
    for c in parse::<RetryConfig>(text) {
        check_retry(&c);
    }
    for c in parse::<CircuitBreakerConfig>(text) {
        let _ = c.validate();
    }
    for c in parse::<BulkheadConfig>(text) {
        let _ = c.validate();
    }
    for c in parse::<RateLimiterConfig>(text) {
        let _ = c.validate();
    }
    for c in parse::<LifecycleConfig>(text) {
        use chassis_core::lifecycle::Stage;
        for stage in [
            Stage::Intake,
            Stage::Worker,
            Stage::Transport,
            Stage::Resource,
            Stage::Telemetry,
        ] {
            let _ = c.deadline(stage);
        }
    }
    let _ = parse::<ServiceInfo>(text);
    let _ = parse::<TelemetryConfig>(text);
    let _ = parse::<ServerConfig>(text);
    let _ = parse::<StandardLayersConfig>(text);
    let _ = parse::<HealthPaths>(text);
    for topology in parse::<TopologyConfig>(text) {
        if topology.validate().is_ok() {
            for queue in &topology.queues {
                let names = queue.all_queues();
                assert!(names.contains(&queue.name));
                let attempts = queue.retry.effective_max_attempts();
                for attempt in 0..attempts.min(64).saturating_add(2) {
                    let _ = queue.retry.delay_for(attempt, None);
                    let _ = queue
                        .retry
                        .delay_for(attempt, Some(Duration::from_millis(u64::from(attempt))));
                }
            }
        }
    }
    for relay in parse::<RelayConfig>(text) {
        let _ = relay.validate();
    }
    let _ = parse::<ConnectionConfig>(text);
    let _ = parse::<ConsumerConfig>(text);
    let _ = parse::<PublisherConfig>(text);
});
