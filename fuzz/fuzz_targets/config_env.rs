//! Configuration from environment variables: TelemetryConfig::apply_env (log format, OTLP
//! endpoints and protocol, sampler, resource attributes, batch sizes), LifecycleConfig's
//! `PRE_STOP_DELAY`/`DRAIN_TIMEOUT`/`START_TIMEOUT`, and `OTEL_RESOURCE_ATTRIBUTES`, whose
//! accepted values round-trip through percent-encoding. Input: `KEY=value` lines.
#![no_main]

use std::collections::BTreeMap;

use chassis_core::lifecycle::LifecycleConfig;
use chassis_observability::TelemetryConfig;
use chassis_observability::config::{Sampling, parse_resource_attributes};
use libfuzzer_sys::fuzz_target;

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let vars: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .collect();
    let var = |k: &str| vars.get(k).map(|v| (*v).to_owned());

    let mut config = TelemetryConfig::default();
    let warnings = config.apply_env(var);
    assert!(warnings.len() <= vars.len() + 1, "{warnings:?}");
    let _ = LifecycleConfig::from_vars_for_fuzzing(var);
    if let Some(sampler) = vars.get("OTEL_TRACES_SAMPLER") {
        if let Ok((sampling, _)) =
            Sampling::from_otel_env(sampler, vars.get("OTEL_TRACES_SAMPLER_ARG").copied())
        {
            assert!((0.0..=1.0).contains(&sampling.ratio));
        }
    }

    // The whole input as one OTEL_RESOURCE_ATTRIBUTES value.
    if let Ok(attrs) = parse_resource_attributes(text) {
        for key in attrs.keys() {
            assert!(!key.is_empty() && key.trim() == key && !key.contains([',', '=']));
        }
        let encoded: Vec<String> = attrs
            .iter()
            .map(|(k, v)| format!("{k}={}", encode(v)))
            .collect();
        let again =
            parse_resource_attributes(&encoded.join(",")).expect("encoded attributes parse");
        assert_eq!(again, attrs);
    }
});
