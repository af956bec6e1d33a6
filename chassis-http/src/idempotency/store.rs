//! The storage behind the idempotency layer: the [`IdempotencyStore`] trait, what it keeps
//! ([`StoredResponse`], [`Lock`]) and how it fails ([`StoreError`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode};

use crate::stored::codec::{Reader, debug_response, response_accessors, write_response};
pub use crate::stored::{StoreError, StoreErrorKind};

/// Where the keys and the responses of an [`IdempotencyLayer`](super::IdempotencyLayer) live.
///
/// A key goes through two states: *in flight* (a [`Lock`] taken by [`begin`](Self::begin),
/// expiring after the lock's time to live so that a crashed replica does not hold it forever)
/// and *completed* (a [`StoredResponse`] kept for the layer's time to live). The layer takes the
/// lock, runs the request, then either [`complete`](Self::complete)s the key with the response or
/// [`release`](Self::release)s it so the request may be retried.
///
/// Each operation must be atomic with respect to the others on the same key, and
/// [`complete`](Self::complete) and [`release`](Self::release) must act only while the caller's
/// lock is still the one in the store (compare its token): a lock that expired and was taken by
/// another request belongs to that request.
///
/// The trait is object-safe (the layer holds an `Arc<dyn IdempotencyStore>`); its futures are
/// boxed because each call is a lookup in a map or a round trip to a server, next to which the
/// allocation does not count. A store bounds every call in time and fails with a
/// [`StoreError`] rather than wait: the layer answers such a failure `503`.
///
/// Two stores come with the crate: [`MemoryStore`](super::MemoryStore) (one process) and
/// `RedisStore` (feature `redis`, shared by every replica). A store of another database can
/// persist a [`StoredResponse`] with [`encode`](StoredResponse::encode) and
/// [`decode`](StoredResponse::decode).
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Takes the lock of `key` for a request with `fingerprint`, unless the key is known: then
    /// says whether it is in flight or completed. A new lock expires after `lock_ttl`.
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lock_ttl: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>>;

    /// Replaces `lock` with `response`, kept for `ttl`. Answers `false`, and stores nothing,
    /// when the key no longer holds `lock` (it expired).
    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        lock: &'a Lock,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Forgets `key` if it still holds `lock`, so the request may be sent again. Answers
    /// whether it did.
    fn release<'a>(
        &'a self,
        key: &'a StoreKey,
        lock: &'a Lock,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
}

impl<T: IdempotencyStore + ?Sized> IdempotencyStore for Arc<T> {
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        lock_ttl: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>> {
        (**self).begin(key, fingerprint, lock_ttl)
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        lock: &'a Lock,
        response: &'a StoredResponse,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        (**self).complete(key, lock, response, ttl)
    }

    fn release<'a>(
        &'a self,
        key: &'a StoreKey,
        lock: &'a Lock,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        (**self).release(key, lock)
    }
}

/// What [`IdempotencyStore::begin`] found.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Begin {
    /// The key was free: the caller holds its lock and runs the request.
    Acquired(Lock),
    /// Another request holds the key's lock.
    InFlight {
        /// The fingerprint of the request holding it.
        fingerprint: Fingerprint,
    },
    /// The key's request has completed; its response is stored.
    Completed(Arc<StoredResponse>),
}

/// An idempotency key as the store sees it: the client's key within a scope (the client's
/// identity, an API key, a tenant), so that two clients choosing the same key never meet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StoreKey {
    scope: Option<String>,
    key: String,
}

impl StoreKey {
    /// `key` within `scope` (`None` and an empty scope are the same: no scope).
    pub fn new(scope: Option<String>, key: impl Into<String>) -> Self {
        Self {
            scope: scope.filter(|s| !s.is_empty()),
            key: key.into(),
        }
    }

    /// The scope, if any.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    /// The client's key.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// One string for the key and its scope that no other pair maps to:
/// `<scope length>:<scope>:<key>` (`0::<key>` without a scope).
impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scope = self.scope.as_deref().unwrap_or("");
        write!(f, "{}:{scope}:{}", scope.len(), self.key)
    }
}

/// The SHA-256 of a request's method, path and query, and body: two requests with the same
/// key and different fingerprints are a client reusing a key for another request.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a request.
    pub fn of(method: &http::Method, path_and_query: &str, body: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        // Each part is preceded by its length, so no two requests feed the same bytes.
        for part in [method.as_str().as_bytes(), path_and_query.as_bytes(), body] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        Self(hash.finalize().into())
    }

    /// A fingerprint from its 32 bytes (as [`as_bytes`](Self::as_bytes) gave them).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

/// The lock of an in-flight key: a random token (so that only its holder completes or
/// releases it) and the fingerprint of the request holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    token: u128,
    fingerprint: Fingerprint,
}

impl Lock {
    /// A new lock with a random token.
    pub fn new(fingerprint: Fingerprint) -> Self {
        Self {
            token: rand::random(),
            fingerprint,
        }
    }

    /// A lock from its parts (a store reading one back).
    pub fn from_parts(token: u128, fingerprint: Fingerprint) -> Self {
        Self { token, fingerprint }
    }

    /// The token.
    pub fn token(&self) -> u128 {
        self.token
    }

    /// The fingerprint of the request holding the lock.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// The lock as bytes: `L`, the token and the fingerprint (49 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(49);
        out.push(b'L');
        out.extend_from_slice(&self.token.to_be_bytes());
        out.extend_from_slice(&self.fingerprint.0);
        out
    }

    /// Reads a lock written by [`encode`](Self::encode).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let rest = bytes.strip_prefix(b"L")?;
        if rest.len() != 48 {
            return None;
        }
        let token = u128::from_be_bytes(rest[..16].try_into().ok()?);
        let fingerprint = Fingerprint(rest[16..].try_into().ok()?);
        Some(Self { token, fingerprint })
    }
}

/// A completed request's response as the store keeps it: status, headers (without hop-by-hop
/// fields and `Content-Length`), body, and the request's fingerprint.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredResponse {
    fingerprint: Fingerprint,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    body_omitted: bool,
}

impl fmt::Debug for StoredResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("StoredResponse");
        d.field("fingerprint", &self.fingerprint);
        debug_response(&mut d, self.status, &self.headers, &self.body);
        d.field("body_omitted", &self.body_omitted).finish()
    }
}

const RECORD_TAG: u8 = b'C';
// Version 2: the omitted-body flag before the status.
const RECORD_VERSION: u8 = 2;

impl StoredResponse {
    /// A response to keep. `body_omitted` says the body was too large to keep (`body` is then
    /// empty); replays say so in a header.
    pub fn new(
        fingerprint: Fingerprint,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        body_omitted: bool,
    ) -> Self {
        Self {
            fingerprint,
            status,
            headers,
            body,
            body_omitted,
        }
    }

    /// The fingerprint of the request that produced it.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    response_accessors! {
        /// The body (empty when it was omitted).
    }

    /// Whether the body was too large to keep.
    pub fn body_omitted(&self) -> bool {
        self.body_omitted
    }

    /// The response as bytes: `C`, a format version, the fingerprint, whether the body was
    /// omitted, then the status, the header fields and the body, lengths big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.size() + 48);
        out.push(RECORD_TAG);
        out.push(RECORD_VERSION);
        out.extend_from_slice(&self.fingerprint.0);
        out.push(u8::from(self.body_omitted));
        write_response(&mut out, self.status, &self.headers, &self.body);
        out
    }

    /// Reads a response written by [`encode`](Self::encode); `None` if `bytes` is not one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let mut r = Reader(bytes);
        if r.take(1)? != [RECORD_TAG] || r.take(1)? != [RECORD_VERSION] {
            return None;
        }
        let fingerprint = Fingerprint(r.take(32)?.try_into().ok()?);
        let body_omitted = r.take(1)? != [0];
        let (status, headers, body) = r.response()?;
        Some(Self {
            fingerprint,
            status,
            headers,
            body,
            body_omitted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn responses_round_trip_through_bytes() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.append("set-cookie", HeaderValue::from_static("a=1"));
        headers.append("set-cookie", HeaderValue::from_static("b=2"));
        let fp = Fingerprint::of(&http::Method::POST, "/orders?x=1", b"{}");
        let stored = StoredResponse::new(
            fp,
            StatusCode::CREATED,
            headers,
            Bytes::from_static(b"{\"id\":7}"),
            false,
        );
        let bytes = stored.encode();
        assert_eq!(StoredResponse::decode(&bytes), Some(stored));
        assert_eq!(StoredResponse::decode(&bytes[..bytes.len() - 1]), None);
        assert_eq!(StoredResponse::decode(b"L123"), None);

        let lock = Lock::new(fp);
        assert_eq!(Lock::decode(&lock.encode()), Some(lock));
        assert_eq!(Lock::decode(&bytes), None);
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let post = http::Method::POST;
        let a = Fingerprint::of(&post, "/a", b"1");
        assert_eq!(a, Fingerprint::of(&post, "/a", b"1"));
        assert_ne!(a, Fingerprint::of(&post, "/a", b"2"));
        assert_ne!(a, Fingerprint::of(&post, "/a1", b""));
        assert_ne!(a, Fingerprint::of(&http::Method::PATCH, "/a", b"1"));
    }

    #[test]
    fn scoped_keys_never_collide() {
        let a = StoreKey::new(Some("ab".into()), "c");
        let b = StoreKey::new(Some("a".into()), "b:c");
        assert_ne!(a.to_string(), b.to_string());
        assert_eq!(
            StoreKey::new(Some(String::new()), "k"),
            StoreKey::new(None, "k")
        );
    }
}
