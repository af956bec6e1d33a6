//! [`MemoryStore`]: keys and responses in this process's memory, bounded, expiring.

use std::future::ready;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::store::{
    Begin, Fingerprint, IdempotencyStore, Lock, StoreError, StoreErrorKind, StoreKey,
    StoredResponse,
};
use crate::stored::{ExpiringMap, Held, memory_store};

memory_store! {
    /// An [`IdempotencyStore`] in this process's memory: for one replica, or tests.
    ///
    /// Each replica of a service keeps its own keys, so a retry that reaches another replica runs
    /// again; use the Redis store when a service has more than one.
    ///
    /// Bounded by entries ([`max_entries`](Self::max_entries), default 10,000) and by the bytes of
    /// the stored responses ([`max_bytes`](Self::max_bytes), default 64 MiB). Expired entries go
    /// first; when the store is still full, the completed responses closest to expiry are
    /// forgotten early (a retry of one of them would run again; counted in
    /// [`MemoryStoreStats::evicted`]). In-flight locks are never evicted: when every entry is one,
    /// [`begin`](IdempotencyStore::begin) fails with [`StoreErrorKind::Full`].
    ///
    /// Time is tokio's clock, so tests can pause it. Cheap to clone; clones share the entries.
    ///
    /// ```
    /// use chassis_http::idempotency::{IdempotencyLayer, MemoryStore};
    ///
    /// let store = MemoryStore::new().max_entries(1_000).max_bytes(8 << 20);
    /// let layer = IdempotencyLayer::new(store.clone());
    /// assert_eq!(store.stats().entries, 0);
    /// # let _ = layer;
    /// ```
    pub struct MemoryStore(State);
    debug = stats;
    /// Keys held at most, in flight or completed (at least 1). Defaults to 10,000.
    max_entries;
    /// Bytes of stored responses held at most. Defaults to 64 MiB.
    max_bytes;
}

/// Sizes and counters of a [`MemoryStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemoryStoreStats {
    /// Keys held (in flight or completed).
    pub entries: usize,
    /// Bytes of the stored responses.
    pub bytes: usize,
    /// Completed responses forgotten before their time to live to stay within the bounds.
    pub evicted: u64,
}

#[derive(Default)]
struct State {
    entries: ExpiringMap<StoreKey, Value>,
    evicted: u64,
}

enum Value {
    InFlight(Lock),
    Completed(Arc<StoredResponse>),
}

impl MemoryStore {
    /// Current sizes and counters.
    pub fn stats(&self) -> MemoryStoreStats {
        let state = self.lock();
        MemoryStoreStats {
            entries: state.entries.len(),
            bytes: state.entries.bytes(),
            evicted: state.evicted,
        }
    }

    fn begin_now(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        lock_ttl: Duration,
    ) -> Result<Begin, StoreError> {
        let now = Instant::now();
        let mut state = self.lock();
        state.entries.expire(now);
        if let Some(value) = state.entries.get(key) {
            return Ok(match value {
                Value::InFlight(lock) => Begin::InFlight {
                    fingerprint: *lock.fingerprint(),
                },
                Value::Completed(response) => Begin::Completed(response.clone()),
            });
        }
        if state.entries.len() >= self.max_entries && !state.evict_one() {
            return Err(StoreError::new(StoreErrorKind::Full {
                max_entries: self.max_entries,
            }));
        }
        let lock = Lock::new(*fingerprint);
        state
            .entries
            .insert(key.clone(), now + lock_ttl, Value::InFlight(lock.clone()));
        Ok(Begin::Acquired(lock))
    }

    fn complete_now(
        &self,
        key: &StoreKey,
        lock: &Lock,
        response: &StoredResponse,
        ttl: Duration,
    ) -> bool {
        let now = Instant::now();
        let mut state = self.lock();
        state.entries.expire(now);
        if !state.holds(key, lock) {
            return false;
        }
        state.entries.insert(
            key.clone(),
            now + ttl,
            Value::Completed(Arc::new(response.clone())),
        );
        while state.entries.bytes() > self.max_bytes && state.evict_one() {}
        true
    }

    fn release_now(&self, key: &StoreKey, lock: &Lock) -> bool {
        let mut state = self.lock();
        if !state.holds(key, lock) {
            return false;
        }
        state.entries.remove(key);
        true
    }
}

impl Held for Value {
    fn size(&self) -> usize {
        match self {
            Value::InFlight(_) => 0,
            Value::Completed(response) => response.size(),
        }
    }

    /// In-flight locks are never evicted: the request holding one is still running.
    fn evictable(&self) -> bool {
        matches!(self, Value::Completed(_))
    }
}

impl State {
    fn holds(&self, key: &StoreKey, lock: &Lock) -> bool {
        matches!(self.entries.get(key), Some(Value::InFlight(held)) if held == lock)
    }

    /// Forgets the completed entry closest to expiry; `false` if every entry is in flight.
    fn evict_one(&mut self) -> bool {
        let evicted = self.entries.evict_one();
        self.evicted += u64::from(evicted);
        evicted
    }
}

impl IdempotencyStore for MemoryStore {
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lock_ttl: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>> {
        Box::pin(ready(self.begin_now(key, fingerprint, lock_ttl)))
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        lock: &'a Lock,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(ready(Ok(self.complete_now(key, lock, response, ttl))))
    }

    fn release<'a>(
        &'a self,
        key: &'a StoreKey,
        lock: &'a Lock,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(ready(Ok(self.release_now(key, lock))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, Method, StatusCode};

    fn response(fp: Fingerprint, body: &'static [u8]) -> StoredResponse {
        StoredResponse::new(
            fp,
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(body),
            false,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn locks_complete_expire_and_release() {
        let store = MemoryStore::new();
        let key = StoreKey::new(None, "k");
        let fp = Fingerprint::of(&Method::POST, "/", b"");
        let ttl = Duration::from_secs(10);
        let Ok(Begin::Acquired(lock)) = store.begin(&key, &fp, ttl).await else {
            panic!("a new key is free");
        };
        assert!(matches!(
            store.begin(&key, &fp, ttl).await,
            Ok(Begin::InFlight { .. })
        ));
        // Another lock (a stale holder) can neither complete nor release it.
        let stale = Lock::new(fp);
        assert!(!store.release(&key, &stale).await.unwrap());
        assert!(
            store
                .complete(&key, &lock, &response(fp, b"ok"), ttl)
                .await
                .unwrap()
        );
        assert!(
            matches!(store.begin(&key, &fp, ttl).await, Ok(Begin::Completed(r)) if r.body() == "ok")
        );

        tokio::time::advance(ttl + Duration::from_millis(1)).await;
        let Ok(Begin::Acquired(lock)) = store.begin(&key, &fp, ttl).await else {
            panic!("the response expired");
        };
        assert!(store.release(&key, &lock).await.unwrap());
        assert!(matches!(
            store.begin(&key, &fp, ttl).await,
            Ok(Begin::Acquired(_))
        ));

        // A lock that expires frees the key, and its holder can no longer complete it.
        tokio::time::advance(ttl + Duration::from_millis(1)).await;
        assert!(
            !store
                .complete(&key, &lock, &response(fp, b"late"), ttl)
                .await
                .unwrap()
        );
        assert_eq!(store.stats().bytes, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_by_entries_and_bytes_never_evicting_locks() {
        let store = MemoryStore::new().max_entries(2).max_bytes(200);
        let fp = Fingerprint::of(&Method::POST, "/", b"");
        let ttl = Duration::from_secs(60);
        let (a, b, c) = (
            StoreKey::new(None, "a"),
            StoreKey::new(None, "b"),
            StoreKey::new(None, "c"),
        );
        let Ok(Begin::Acquired(lock_a)) = store.begin(&a, &fp, ttl).await else {
            panic!()
        };
        let Ok(Begin::Acquired(_lock_b)) = store.begin(&b, &fp, ttl).await else {
            panic!()
        };
        let err = store.begin(&c, &fp, ttl).await.unwrap_err();
        assert!(matches!(
            err.kind(),
            StoreErrorKind::Full { max_entries: 2 }
        ));
        // Once `a` is a completed response, it makes room for `c`.
        assert!(
            store
                .complete(&a, &lock_a, &response(fp, b"a"), ttl)
                .await
                .unwrap()
        );
        assert!(matches!(
            store.begin(&c, &fp, ttl).await,
            Ok(Begin::Acquired(_))
        ));
        assert_eq!(store.stats().evicted, 1);
        assert_eq!(store.stats().entries, 2);

        // A response over the byte bound evicts the older ones, itself last.
        let store = MemoryStore::new().max_bytes(300);
        for (i, key) in ["x", "y", "z"].into_iter().enumerate() {
            let key = StoreKey::new(None, key);
            let Ok(Begin::Acquired(lock)) = store.begin(&key, &fp, ttl).await else {
                panic!()
            };
            let body: &'static [u8] = &[b'.'; 100];
            store
                .complete(&key, &lock, &response(fp, body), ttl)
                .await
                .unwrap();
            assert!(store.stats().bytes <= 300, "after {i}");
        }
        assert_eq!(store.stats().entries, 1);
        assert_eq!(store.stats().evicted, 2);
    }
}
