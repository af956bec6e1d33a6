//! Memory stays bounded under many distinct keys. A test binary of its own, so the resident
//! set measured is this test's alone.
//! A million distinct keys take about a second in a debug build.

use std::time::Duration;

use chassis_core::resilience::keyed_rate_limit::{KeyedRateLimitConfig, KeyedRateLimiter};

/// The limiter remembers at most this many keys.
const MAX_KEYS: usize = 10_000;
/// Resident memory the limiter may add while the keys go through, whatever their number:
/// `MAX_KEYS` entries take well under 1 MiB; the rest is allocator slack.
const RSS_BOUND_BYTES: u64 = 8 << 20;

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("resident pages");
    pages * 4096
}

fn distinct_keys_keep_memory_bounded(keys: u64) {
    // 1000 calls per second per key: a key is idle 1 ms after its call.
    let limiter = KeyedRateLimiter::new(
        KeyedRateLimitConfig::new("bounded")
            .rate(1000)
            .burst(1)
            .max_keys(MAX_KEYS),
    )
    .unwrap();
    let before = rss_bytes();
    for k in 0..keys {
        limiter.check(&k).expect("a fresh key is always admitted");
        if k % 50_000 == 0 {
            // Let the coarse clock move on, so earlier keys become idle.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let after = rss_bytes();
    let stats = limiter.stats();
    assert!(stats.keys <= MAX_KEYS, "{stats:?}");
    // A table grows only while more than half its slots are live or deleted, so it never
    // has more than four slots per key it may hold.
    let slots_bound = stats.shards * 4 * (stats.keys_per_shard + 1);
    assert!(
        stats.capacity <= slots_bound,
        "{stats:?} > {slots_bound} slots"
    );
    assert!(
        stats.evicted_idle + stats.evicted_live >= keys - MAX_KEYS as u64,
        "{stats:?}"
    );
    let grew = after.saturating_sub(before);
    assert!(
        grew <= RSS_BOUND_BYTES,
        "resident set grew by {grew} bytes for {keys} keys ({stats:?})"
    );
}

#[test]
fn a_million_distinct_keys_keep_memory_bounded() {
    distinct_keys_keep_memory_bounded(1_000_000);
}
