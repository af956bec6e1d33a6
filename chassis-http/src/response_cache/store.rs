//! The storage behind the response cache: the [`CacheStore`] trait, its keys ([`CacheKey`])
//! and what it keeps ([`CachedResponse`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode};

use crate::idempotency::Fingerprint;
use crate::stored::StoreError;
use crate::stored::codec::{Reader, debug_response, response_accessors, write_response};

/// Where a [`ResponseCacheLayer`](super::ResponseCacheLayer) keeps its responses.
///
/// The trait is object-safe (the layer holds an `Arc<dyn CacheStore>`); its futures are boxed
/// because each call is a lookup in a map or a round trip to a server. A store bounds every
/// call in time and fails with a [`StoreError`] rather than wait: the layer then passes the
/// request to its handler, as if nothing were cached.
///
/// Two stores come with the crate: [`MemoryCacheStore`](super::MemoryCacheStore) (one
/// process) and `RedisCacheStore` (feature `redis`, shared by every replica).
pub trait CacheStore: Send + Sync + 'static {
    /// The response kept under `key`, if any and not expired.
    fn get<'a>(
        &'a self,
        key: &'a CacheKey,
    ) -> BoxFuture<'a, Result<Option<Arc<CachedResponse>>, StoreError>>;

    /// Keeps `response` under `key` for its [`ttl`](CachedResponse::ttl), replacing what was
    /// there.
    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        response: &'a CachedResponse,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

impl<T: CacheStore + ?Sized> CacheStore for Arc<T> {
    fn get<'a>(
        &'a self,
        key: &'a CacheKey,
    ) -> BoxFuture<'a, Result<Option<Arc<CachedResponse>>, StoreError>> {
        (**self).get(key)
    }

    fn put<'a>(
        &'a self,
        key: &'a CacheKey,
        response: &'a CachedResponse,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        (**self).put(key, response)
    }
}

/// The key of a cached response: the SHA-256 of the request's method, path and query, the
/// values of the layer's `vary` header fields and the request's scope, in hex.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key of a request. `vary` holds each varying field's values (absent: none), in the
    /// layer's order.
    pub fn of(
        method: &http::Method,
        path_and_query: &str,
        vary: &[Vec<&[u8]>],
        scope: Option<&str>,
    ) -> Self {
        // Each part is preceded by its length, so no two requests feed the same bytes.
        let mut extra = Vec::new();
        let mut part = |bytes: &[u8]| {
            extra.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
            extra.extend_from_slice(bytes);
        };
        for values in vary {
            part(&(values.len() as u64).to_be_bytes());
            for value in values {
                part(value);
            }
        }
        match scope {
            Some(scope) => part(format!("s{scope}").as_bytes()),
            None => part(b"-"),
        }
        let digest = Fingerprint::of(method, path_and_query, &extra);
        Self(
            digest
                .as_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
        )
    }

    /// The key as text (64 hex digits).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({})", &self.0[..12])
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A response as the cache keeps it: status, headers (without hop-by-hop fields and
/// `Content-Length`), body, when it was stored (wall clock, so replicas agree on its `Age`)
/// and how long it is fresh.
#[derive(Clone, PartialEq, Eq)]
pub struct CachedResponse {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    stored_at: SystemTime,
    ttl: Duration,
}

impl fmt::Debug for CachedResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("CachedResponse");
        debug_response(&mut d, self.status, &self.headers, &self.body);
        d.field("stored_at", &self.stored_at)
            .field("ttl", &self.ttl)
            .finish()
    }
}

const RECORD_TAG: u8 = b'R';
const RECORD_VERSION: u8 = 1;

impl CachedResponse {
    /// A response stored at `stored_at`, fresh for `ttl`.
    pub fn new(
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        stored_at: SystemTime,
        ttl: Duration,
    ) -> Self {
        Self {
            status,
            headers,
            body,
            stored_at,
            ttl,
        }
    }

    response_accessors! {
        /// The body.
    }

    /// When it was stored.
    pub fn stored_at(&self) -> SystemTime {
        self.stored_at
    }

    /// How long it is fresh after [`stored_at`](Self::stored_at).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Its age at `now` (zero if the clock went back).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.stored_at).unwrap_or_default()
    }

    /// The response as bytes: `R`, a format version, the time stored and the time to live in
    /// milliseconds, the status, the header fields and the body, lengths big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity(self.size() + 18);
        out.push(RECORD_TAG);
        out.push(RECORD_VERSION);
        let since_epoch = self
            .stored_at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        out.extend_from_slice(&millis(since_epoch).to_be_bytes());
        out.extend_from_slice(&millis(self.ttl).to_be_bytes());
        write_response(&mut out, self.status, &self.headers, &self.body);
        out
    }

    /// Reads a response written by [`encode`](Self::encode); `None` if `bytes` is not one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.take(1)? != [RECORD_TAG] || r.take(1)? != [RECORD_VERSION] {
            return None;
        }
        let stored_at = UNIX_EPOCH.checked_add(Duration::from_millis(r.u64()?))?;
        let ttl = Duration::from_millis(r.u64()?);
        let (status, headers, body) = r.response()?;
        Some(Self {
            status,
            headers,
            body,
            stored_at,
            ttl,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderValue, Method};

    #[test]
    fn responses_round_trip_through_bytes() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        let stored_at = UNIX_EPOCH + Duration::from_millis(1_765_000_000_123);
        let cached = CachedResponse::new(
            StatusCode::OK,
            headers,
            Bytes::from_static(b"hello"),
            stored_at,
            Duration::from_secs(30),
        );
        let bytes = cached.encode();
        assert_eq!(CachedResponse::decode(&bytes), Some(cached));
        assert_eq!(CachedResponse::decode(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn keys_tell_requests_apart() {
        let get = Method::GET;
        let en: Vec<&[u8]> = vec![b"en"];
        let a = CacheKey::of(&get, "/a?x=1", std::slice::from_ref(&en), None);
        assert_eq!(
            a,
            CacheKey::of(&get, "/a?x=1", std::slice::from_ref(&en), None)
        );
        assert_ne!(
            a,
            CacheKey::of(&get, "/a?x=2", std::slice::from_ref(&en), None)
        );
        assert_ne!(a, CacheKey::of(&get, "/a?x=1", &[vec![b"de"]], None));
        assert_ne!(a, CacheKey::of(&get, "/a?x=1", &[vec![]], None));
        assert_ne!(
            a,
            CacheKey::of(&get, "/a?x=1", std::slice::from_ref(&en), Some(""))
        );
        assert_ne!(a, CacheKey::of(&Method::HEAD, "/a?x=1", &[en], None));
        assert_eq!(a.as_str().len(), 64);
    }
}
