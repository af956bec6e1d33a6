//! The in-memory keyed limiter: sharded maps of theoretical arrival times.

use std::collections::HashMap;
use std::fmt;
use std::future::{Ready, ready};
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::gcra::{Gcra, Limit};
use super::{KeyedRateLimitConfig, RateLimitBackend};
use crate::resilience::clock::{Clock, ClockSource, CoarseClock};
use crate::resilience::striped::Padded;
use crate::{ComponentName, Error};

/// A rate limit per key, kept in this process's memory.
///
/// Cheap to clone; every clone is the same limiter. Each key gets `rate` calls per `period`
/// with bursts of `burst` (GCRA); [`check`](Self::check) takes one permit or says when the next
/// is due. It is also a [`RateLimitBackend`], for [`KeyedRateLimitLayer`](super::KeyedRateLimitLayer).
///
/// # State and memory
///
/// Keys live in a power-of-two number of shards (8 per CPU, 16 to 512, fewer when `max_keys`
/// is smaller), each a `Mutex<HashMap<K, u64>>` holding one theoretical arrival time (TAT) per
/// key. A check hashes the key once with a cheap seeded hash to pick the shard, then takes that
/// shard's lock for one lookup and one arithmetic step: no allocation unless the key is new, and
/// two threads only meet when their keys share a shard.
///
/// A key whose TAT has passed has its full burst back, which is exactly the state of a key
/// never seen, so it can be dropped without changing any decision. A shard never holds more
/// than `max_keys / shards` keys: when a new key would exceed that, the shard first drops its
/// idle keys (TAT in the past); if more than three quarters of its bound are still live, it
/// also drops the quarter of keys closest to a full burst (they get that burst back early: the
/// one way this limiter errs, and only when more than `max_keys` keys are busy at once,
/// counted in [`KeyedRateLimiterStats::evicted_live`]). [`sweep`](Self::sweep) drops idle keys
/// of every shard, e.g. from a periodic task, to hand memory back between bursts of keys.
///
/// Memory is therefore bounded by `max_keys` entries: the tables hold at most
/// `4 * (max_keys + shards)` slots of `size_of::<(K, u64)>() + 1` bytes (a table grows only
/// while more than half its slots hold live or deleted entries), plus whatever the keys
/// themselves own on the heap (a `String` key's text). With the default 100,000 keys of
/// `u64`, at most about 7 MB; the `keyed_rate_limit_memory` test pushes a million distinct
/// keys through a limiter of 10,000 and checks both the slot count and the resident set.
///
/// # Time
///
/// The default clock is the [`CoarseClock`] (one atomic read, about a millisecond behind real
/// time, which only ever makes the limiter stricter by that millisecond); use
/// [`with_clock`](Self::with_clock) with a [`TokioClock`](crate::resilience::clock::TokioClock)
/// in tests with tokio's paused time.
///
/// ```
/// use chassis_core::resilience::keyed_rate_limit::{KeyedRateLimitConfig, KeyedRateLimiter};
/// use chassis_core::ErrorKind;
///
/// let limiter = KeyedRateLimiter::new(KeyedRateLimitConfig::new("login").rate(3).burst(1)).unwrap();
/// limiter.check(&"10.0.0.1").unwrap();
/// let err = limiter.check(&"10.0.0.1").unwrap_err();
/// assert!(matches!(err.kind(), ErrorKind::RateLimited { .. }));
/// limiter.check(&"10.0.0.2").unwrap();
/// ```
pub struct KeyedRateLimiter<K> {
    inner: Arc<Inner<K>>,
}

/// One shard: each key's theoretical arrival time, in nanoseconds of the limiter's clock.
type Shard<K> = Mutex<HashMap<K, u64>>;

struct Inner<K> {
    name: ComponentName,
    gcra: Gcra,
    clock: ClockSource,
    shards: Box<[Padded<Shard<K>>]>,
    /// `64 - log2(shards)`: the shard is the top bits of the shard hash.
    shard_shift: u32,
    /// Keys one shard holds at most.
    shard_cap: usize,
    /// Seed of the shard hash, random per limiter, so keys cannot be chosen to crowd one shard
    /// without knowing it.
    seed: u64,
    evicted_idle: AtomicU64,
    evicted_live: AtomicU64,
    rejected: metrics::Counter,
}

/// Counters and sizes of a [`KeyedRateLimiter`], from [`KeyedRateLimiter::stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyedRateLimiterStats {
    /// Keys remembered now.
    pub keys: usize,
    /// Entries the shards' tables can hold without growing (their allocated size).
    pub capacity: usize,
    /// Number of shards.
    pub shards: usize,
    /// Keys a shard holds at most (`max_keys / shards`).
    pub keys_per_shard: usize,
    /// Idle keys dropped so far (harmless: they had their full burst back).
    pub evicted_idle: u64,
    /// Keys dropped while still limited, because more than `max_keys` keys were busy at once.
    pub evicted_live: u64,
}

impl<K> Clone for KeyedRateLimiter<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedRateLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("name", &self.inner.name)
            .field("interval_ns", &self.inner.gcra.interval)
            .field("burst", &self.inner.gcra.burst)
            .field("shards", &self.inner.shards.len())
            .field("keys_per_shard", &self.inner.shard_cap)
            .finish()
    }
}

fn default_shards() -> usize {
    let cpus = std::thread::available_parallelism().map_or(4, |n| n.get());
    (8 * cpus).next_power_of_two().clamp(16, 512)
}

impl<K: Hash + Eq + Clone> KeyedRateLimiter<K> {
    /// Validates `config` and builds the limiter, reading time from the [`CoarseClock`].
    ///
    /// The metric (`rate_limit_rejected_total`, label `name`) is registered here, at 0 until a
    /// call is rejected: install the metrics recorder first.
    pub fn new(config: KeyedRateLimitConfig) -> Result<Self, Error> {
        Self::with_clock(config, CoarseClock)
    }

    /// Like [`new`](Self::new), reading time from `clock`.
    pub fn with_clock(config: KeyedRateLimitConfig, clock: impl Clock) -> Result<Self, Error> {
        let Limit {
            name,
            gcra,
            rejected,
        } = Limit::new(&config)?;
        // At most `max_keys` shards, so that each may hold at least one key.
        let max_shards = if config.max_keys.is_power_of_two() {
            config.max_keys
        } else {
            config.max_keys.next_power_of_two() / 2
        };
        let shards = default_shards().min(max_shards).max(1);
        Ok(Self {
            inner: Arc::new(Inner {
                rejected,
                name,
                gcra,
                clock: ClockSource::from_clock(clock),
                shards: (0..shards)
                    .map(|_| Padded(Mutex::new(HashMap::new())))
                    .collect(),
                shard_shift: 64 - shards.trailing_zeros(),
                shard_cap: config.max_keys / shards,
                seed: RandomState::new().hash_one(0x5eed_u64) | 1,
                evicted_idle: AtomicU64::new(0),
                evicted_live: AtomicU64::new(0),
            }),
        })
    }

    /// Takes one permit for `key` now. Fails with [`ErrorKind::RateLimited`](crate::ErrorKind::RateLimited) saying when the
    /// key's next permit is due, with the key's [`RateLimitInfo`](super::RateLimitInfo) as the source. A rejection
    /// allocates nothing (the quota is held inline in the error, see [`Error::rate_limited`]).
    #[inline]
    pub fn check(&self, key: &K) -> Result<(), Error> {
        match self.inner.acquire(key) {
            Ok(()) => Ok(()),
            Err((retry_after, reset_after)) => Err(self.inner.rejection(retry_after, reset_after)),
        }
    }

    /// Like [`check`](Self::check), but a rejection is just the time until the key's next
    /// permit: no error value, no metric, no log. For callers that answer rejections their own
    /// way in a hot loop.
    #[inline]
    pub fn check_retry_after(&self, key: &K) -> Result<(), Duration> {
        self.inner
            .acquire(key)
            .map_err(|(retry_after, _)| Duration::from_nanos(retry_after))
    }

    /// Drops every idle key (one whose burst is full again) from every shard; returns how many.
    /// Checks do this lazily per shard; call it periodically to hand memory back sooner.
    pub fn sweep(&self) -> usize {
        let now = self.inner.clock.now_nanos();
        let mut dropped = 0;
        for shard in self.inner.shards.iter() {
            let mut map = lock(shard);
            let before = map.len();
            map.retain(|_, tat| *tat > now);
            dropped += before - map.len();
        }
        self.inner
            .evicted_idle
            .fetch_add(dropped as u64, Ordering::Relaxed);
        dropped
    }
}

impl<K> KeyedRateLimiter<K> {
    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Keys held, table sizes and eviction counters (locks each shard in turn).
    pub fn stats(&self) -> KeyedRateLimiterStats {
        let (mut keys, mut capacity) = (0, 0);
        for shard in self.inner.shards.iter() {
            let map = lock(shard);
            keys += map.len();
            capacity += map.capacity();
        }
        KeyedRateLimiterStats {
            keys,
            capacity,
            shards: self.inner.shards.len(),
            keys_per_shard: self.inner.shard_cap,
            evicted_idle: self.inner.evicted_idle.load(Ordering::Relaxed),
            evicted_live: self.inner.evicted_live.load(Ordering::Relaxed),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a shard was locked cannot leave a TAT half-written (it is one u64 store),
    // so a poisoned shard is still consistent.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K: Hash + Eq + Clone> Inner<K> {
    #[inline]
    fn shard(&self, key: &K) -> &Shard<K> {
        let mut h = ShardHasher(self.seed);
        key.hash(&mut h);
        // `shard_shift` is 64 with one shard; `checked_shr` turns that into shard 0.
        let index = h.finish().checked_shr(self.shard_shift).unwrap_or(0);
        &self.shards[index as usize]
    }

    /// `Err((retry_after, reset_after))` in nanoseconds when rejected.
    #[inline]
    fn acquire(&self, key: &K) -> Result<(), (u64, u64)> {
        let now = self.clock.now_nanos();
        let mut map = lock(self.shard(key));
        if let Some(tat) = map.get_mut(key) {
            return match self.gcra.decide(*tat, now) {
                Ok(next) => {
                    *tat = next;
                    Ok(())
                }
                Err(retry_after) => Err((retry_after, tat.saturating_sub(now))),
            };
        }
        // A key not in the map is fresh: its first call is always admitted (burst >= 1).
        if map.len() >= self.shard_cap {
            self.evict(&mut map, now);
        }
        map.insert(key.clone(), now.saturating_add(self.gcra.interval));
        Ok(())
    }

    /// Makes room in a full shard: idle keys first, then, if more than three quarters of the
    /// bound are still limited, the quarter closest to a full burst.
    #[cold]
    fn evict(&self, map: &mut HashMap<K, u64>, now: u64) {
        let before = map.len();
        map.retain(|_, tat| *tat > now);
        let idle = before - map.len();
        self.evicted_idle.fetch_add(idle as u64, Ordering::Relaxed);
        if map.len() > self.shard_cap - self.shard_cap / 4 {
            let mut tats: Vec<u64> = map.values().copied().collect();
            let cut_index = (tats.len() / 4).min(tats.len() - 1);
            let (_, cut, _) = tats.select_nth_unstable(cut_index);
            let cut = *cut;
            let live = map.len();
            map.retain(|_, tat| *tat > cut);
            let dropped = live - map.len();
            self.evicted_live
                .fetch_add(dropped as u64, Ordering::Relaxed);
            tracing::debug!(
                rate_limiter = %self.name,
                dropped,
                "keyed rate limiter over max_keys: keys closest to a full burst forgotten"
            );
        }
    }
}

impl<K> Inner<K> {
    #[cold]
    fn rejection(&self, retry_after: u64, reset_after: u64) -> Error {
        self.gcra
            .rejection(self.name, &self.rejected, 1, retry_after, reset_after)
    }
}

impl<K: Hash + Eq + Clone> RateLimitBackend<K> for KeyedRateLimiter<K> {
    type Future = Ready<Result<(), Error>>;

    fn check(&self, key: K) -> Self::Future {
        ready(KeyedRateLimiter::check(self, &key))
    }
}

/// The shard hash: a seeded multiply-rotate hash (FxHash's step with a final mix), a few
/// nanoseconds for small keys. The table inside the shard still uses std's keyed SipHash, so
/// crafted keys cannot degrade lookups; at worst they crowd a shard, whose bound still holds.
struct ShardHasher(u64);

impl ShardHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for ShardHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The top bits pick the shard: fold the high-entropy bits down, then spread them up.
        let x = self.0 ^ (self.0 >> 31);
        x.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resilience::clock::TokioClock;

    fn limiter(rate: u32, burst: u32, max_keys: usize) -> KeyedRateLimiter<u64> {
        KeyedRateLimiter::with_clock(
            KeyedRateLimitConfig::new("t")
                .rate(rate)
                .burst(burst)
                .max_keys(max_keys),
            TokioClock::new(),
        )
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn full_shards_drop_idle_keys_first() {
        let l = limiter(10, 1, 16);
        let cap = l.stats().keys_per_shard;
        for k in 0..1000 {
            l.check(&k).unwrap();
            tokio::time::advance(Duration::from_millis(150)).await;
        }
        let s = l.stats();
        assert!(s.keys <= 16, "{s:?}");
        assert_eq!(s.evicted_live, 0, "every key was idle when dropped: {s:?}");
        assert!(s.evicted_idle > 0);
        assert!(cap >= 1);
    }

    #[tokio::test(start_paused = true)]
    async fn busy_keys_beyond_the_bound_are_forgotten_not_hoarded() {
        let l = limiter(1, 1, 64);
        for k in 0..10_000 {
            l.check(&k).unwrap();
        }
        let s = l.stats();
        assert!(s.keys <= 64, "{s:?}");
        assert!(s.evicted_live > 0, "{s:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_drops_idle_keys() {
        let l = limiter(10, 2, 1000);
        for k in 0..100 {
            l.check(&k).unwrap();
        }
        assert_eq!(l.sweep(), 0, "all keys still limited");
        tokio::time::advance(Duration::from_millis(101)).await;
        assert_eq!(l.sweep(), 100);
        assert_eq!(l.stats().keys, 0);
    }

    #[test]
    fn shard_hash_spreads_sequential_keys() {
        let l = limiter(10, 1, 1 << 20);
        let shards = l.inner.shards.len();
        let mut counts = vec![0usize; shards];
        for k in 0..(shards as u64 * 100) {
            let s = l.inner.shard(&k) as *const _;
            let i = l
                .inner
                .shards
                .iter()
                .position(|p| std::ptr::eq(&p.0, s))
                .unwrap();
            counts[i] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 50 && *max < 150, "{counts:?}");
    }
}
