//! [`MemoryCacheStore`]: cached responses in this process's memory, bounded, expiring.

use std::future::ready;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::store::{CacheKey, CacheStore, CachedResponse};
use crate::stored::{ExpiringMap, Held, StoreError, memory_store};

memory_store! {
    /// A [`CacheStore`] in this process's memory: each replica caches for itself.
    ///
    /// Bounded by entries ([`max_entries`](Self::max_entries), default 10,000) and by the bytes of
    /// the responses ([`max_bytes`](Self::max_bytes), default 64 MiB); when full, the responses
    /// closest to expiry go first. Expiry uses tokio's clock. Cheap to clone; clones share the
    /// entries.
    ///
    /// ```
    /// use chassis_http::response_cache::{MemoryCacheStore, ResponseCacheLayer};
    ///
    /// let store = MemoryCacheStore::new().max_entries(1_000).max_bytes(8 << 20);
    /// let layer = ResponseCacheLayer::new(store.clone());
    /// assert_eq!(store.len(), 0);
    /// # let _ = layer;
    /// ```
    pub struct MemoryCacheStore(State);
    debug = len;
    /// Responses held at most (at least 1). Defaults to 10,000.
    max_entries;
    /// Bytes of responses held at most. Defaults to 64 MiB.
    max_bytes;
}

type State = ExpiringMap<CacheKey, Arc<CachedResponse>>;

impl Held for Arc<CachedResponse> {
    fn size(&self) -> usize {
        CachedResponse::size(self)
    }
}

impl MemoryCacheStore {
    /// Responses held (expired ones included until the next call drops them).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no response is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn get_now(&self, key: &CacheKey) -> Option<Arc<CachedResponse>> {
        let mut state = self.lock();
        state.expire(Instant::now());
        state.get(key).cloned()
    }

    fn put_now(&self, key: &CacheKey, response: &CachedResponse) {
        let now = Instant::now();
        let mut state = self.lock();
        state.expire(now);
        state.insert(
            key.clone(),
            now + response.ttl(),
            Arc::new(response.clone()),
        );
        while (state.len() > self.max_entries || state.bytes() > self.max_bytes)
            && state.evict_one()
        {}
    }
}

impl CacheStore for MemoryCacheStore {
    fn get<'a>(
        &'a self,
        key: &'a CacheKey,
    ) -> BoxFuture<'a, Result<Option<Arc<CachedResponse>>, StoreError>> {
        Box::pin(ready(Ok(self.get_now(key))))
    }

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        response: &'a CachedResponse,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.put_now(key, response);
        Box::pin(ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, Method, StatusCode};
    use std::time::{Duration, SystemTime};

    fn response(body: &'static [u8], ttl: u64) -> CachedResponse {
        CachedResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(body),
            SystemTime::now(),
            Duration::from_secs(ttl),
        )
    }

    fn key(path: &str) -> CacheKey {
        CacheKey::of(&Method::GET, path, &[], None)
    }

    #[tokio::test(start_paused = true)]
    async fn expires_and_stays_within_its_bounds() {
        let store = MemoryCacheStore::new().max_entries(2).max_bytes(300);
        store.put(&key("/a"), &response(b"a", 10)).await.unwrap();
        store.put(&key("/b"), &response(b"b", 20)).await.unwrap();
        store.put(&key("/c"), &response(b"c", 30)).await.unwrap();
        assert!(
            store.get(&key("/a")).await.unwrap().is_none(),
            "evicted first"
        );
        assert_eq!(store.get(&key("/b")).await.unwrap().unwrap().body(), "b");
        tokio::time::advance(Duration::from_secs(21)).await;
        assert!(store.get(&key("/b")).await.unwrap().is_none(), "expired");
        assert_eq!(store.len(), 1);
        store
            .put(&key("/d"), &response(&[b'.'; 200], 60))
            .await
            .unwrap();
        assert_eq!(store.len(), 1, "the byte bound evicted /c");
        assert!(store.get(&key("/d")).await.unwrap().is_some());
    }
}
