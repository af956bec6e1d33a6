//! W3C `baggage` (the propagator chassis_observability::propagation installs, opentelemetry_sdk
//! 0.33's): extraction never panics and stays within the W3C limits (64 members, 8192 bytes),
//! and so does extracting what was injected from it.
//!
//! A round trip is not asserted: this target showed the SDK's extraction is not stable under
//! its own injection. It keeps member properties (`;prop`) and keys as opaque text and writes
//! them back without percent-encoding, so `k=v;ガ%acme` comes back without its property, and a
//! member dropped on the first extraction (`A0%Key=pCA0` after a member holding NULs) reappears
//! on the second. That is the SDK's behaviour, not the chassis's code.
#![no_main]

use std::collections::HashMap;

use chassis_observability::propagation::{BAGGAGE, extract_context, inject_context};
use libfuzzer_sys::fuzz_target;
use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;

/// Checks the W3C limits and returns the member count.
fn check_limits(cx: &Context) -> usize {
    let baggage = cx.baggage();
    assert!(baggage.len() <= 64, "{} baggage members", baggage.len());
    let bytes: usize = baggage
        .iter()
        .map(|(k, (v, m))| k.as_str().len() + v.as_str().len() + m.as_str().len())
        .sum();
    assert!(bytes <= 8192, "{bytes} bytes of baggage");
    baggage.len()
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let carrier: HashMap<String, String> = [(BAGGAGE.to_owned(), value.to_owned())].into();
    let cx = extract_context(&carrier);
    let members = check_limits(&cx);

    let mut out: HashMap<String, String> = HashMap::new();
    inject_context(&cx, &mut out);
    assert_eq!(out.contains_key(BAGGAGE), members > 0);
    check_limits(&extract_context(&out));
});
