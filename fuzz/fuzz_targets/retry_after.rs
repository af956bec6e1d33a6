//! `Retry-After` (chassis_http::client::policy::parse_retry_after): delta-seconds are taken as
//! they are, an IMF-fixdate agrees with the `httpdate` crate wherever both accept it, a date in
//! the past means no wait, and the answer never panics on any header value.
#![no_main]

use std::time::{Duration, SystemTime};

use chassis_http::client::policy::parse_retry_after;
use http::HeaderMap;
use http::header::RETRY_AFTER;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = http::HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(RETRY_AFTER, value);
    // 2026-12-06T00:00:00Z, fixed so a finding reproduces.
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_515_200);
    let parsed = parse_retry_after(&headers, now);
    let _ = parse_retry_after(&headers, SystemTime::now());

    let Ok(text) = headers[RETRY_AFTER].to_str() else {
        assert_eq!(parsed, None, "a non-ASCII Retry-After was accepted");
        return;
    };
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        assert_eq!(parsed, Some(Duration::from_secs(secs)));
        return;
    }
    if let (Some(delay), Ok(date)) = (parsed, httpdate::parse_http_date(text)) {
        assert_eq!(
            delay,
            date.duration_since(now).unwrap_or(Duration::ZERO),
            "{text:?}"
        );
    }
});
