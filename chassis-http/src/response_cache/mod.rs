//! [`ResponseCacheLayer`]: a cache of `GET` and `HEAD` responses in front of the handler,
//! following the parts of RFC 9111 that a server-side cache needs, and telling the client
//! what it did in a `Cache-Status` field (RFC 9211).
//!
//! A response is found by its *key*: the SHA-256 of the request's method, path and query, the
//! values of the layer's [`vary`](ResponseCacheLayer::vary) header fields, and the request's
//! [`scope`](ResponseCacheLayer::scope) (a closure such as the authenticated principal, so
//! that each client has its own entries). `GET` and `HEAD` are cached apart; other methods
//! pass through untouched.
//!
//! # What is stored
//!
//! A response is stored when every one of these holds:
//! - its status is cacheable by default (RFC 9110 §15.1): `200`, `203`, `204`, `300`, `301`,
//!   `308`, `404`, `405`, `410`, `414` or `501` ([`cacheable`]);
//! - its `Cache-Control` has neither `no-store` nor `no-cache` (a response that must be
//!   revalidated each time is, for a cache that does not revalidate, not cached), nor
//!   `private` unless the cache is [`private`](ResponseCacheLayer::private);
//! - its `Vary` names only fields the layer varies on (not `*`);
//! - in a shared cache, it sets no cookie, and it does not answer a request with
//!   `Authorization` unless the layer has a scope or the response says `public` or
//!   `s-maxage`;
//! - its body is at most [`max_body_bytes`](ResponseCacheLayer::max_body_bytes) (default
//!   1 MiB; a larger one is sent in full, not stored);
//! - the request's `Cache-Control` has no `no-store`.
//!
//! It is fresh for `s-maxage` (shared cache), else `max-age`, else the layer's
//! [`default_ttl`](ResponseCacheLayer::default_ttl) (default 60 s); `max-age=0` is not
//! stored. `Expires` is not read. The stored headers are the response's without hop-by-hop
//! fields and `Content-Length` (the same as the idempotency layer keeps).
//!
//! # How requests are answered
//!
//! - A fresh stored response is sent without running the handler, with `Age` (seconds since
//!   it was stored, wall clock, so replicas sharing Redis agree) and
//!   `Cache-Status: chassis; hit; ttl=<seconds left>`.
//! - A request with `Cache-Control: no-cache`, `no-store` or `max-age=0` is not answered from
//!   the cache (`Cache-Status: chassis; fwd=request`); with `max-age=N`, a stored response
//!   older than `N` seconds is not used (`fwd=stale`). The fresh response of a `no-cache` or
//!   `max-age` request replaces the stored one.
//! - Otherwise the handler runs: `Cache-Status: chassis; fwd=miss`, with `; stored` when the
//!   response was stored.
//!
//! Concurrent misses on one key all run the handler (the requests are not coalesced), and the
//! last response stored wins; a handler that must not run twice at once needs a lock of its
//! own.
//!
//! # When the store fails
//!
//! A cache never fails a request: when the store cannot answer (Redis down, slow, its breaker
//! open), the request goes to the handler, its response is not stored, and `Cache-Status` says
//! `fwd=miss; detail=store-unavailable`. The outage is logged once at WARN, and at INFO when
//! the store answers again.
//!
//! # Stores
//!
//! - [`MemoryCacheStore`]: this process's memory, bounded in entries and bytes.
//! - `RedisCacheStore` (feature `redis`): Redis, shared by every replica, with a timeout and a
//!   circuit breaker around every call (the connection handling of the idempotency layer's
//!   Redis store, and its [`RedisStoreConfig`]).
//!
//! # Where it goes
//!
//! Inside the [standard layers](crate::layers::StandardLayers) (hits are traced, counted and
//! logged like any response) and after authentication (so the scope closure can read the
//! principal).
//!
//! # Example
//! ```
//! use chassis_http::response_cache::{MemoryCacheStore, ResponseCacheLayer};
//! use http::{Request, Response, header};
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let runs = Arc::new(AtomicUsize::new(0));
//! let counter = runs.clone();
//! let handler = service_fn(move |_req: Request<String>| {
//!     counter.fetch_add(1, Ordering::SeqCst);
//!     async move {
//!         let response = Response::builder()
//!             .header(header::CACHE_CONTROL, "max-age=30")
//!             .body(String::from("price: 7"))
//!             .unwrap();
//!         Ok::<_, std::convert::Infallible>(response)
//!     }
//! });
//! let svc = ResponseCacheLayer::new(MemoryCacheStore::new())
//!     .default_ttl(Duration::from_secs(10))
//!     .vary([header::ACCEPT_LANGUAGE])
//!     .layer(handler);
//!
//! let get = || Request::get("/prices/book").body(String::new()).unwrap();
//! let first = svc.clone().oneshot(get()).await.unwrap();
//! assert_eq!(first.headers()["cache-status"], "chassis; fwd=miss; stored");
//! let again = svc.clone().oneshot(get()).await.unwrap();
//! assert!(again.headers()["cache-status"].to_str().unwrap().starts_with("chassis; hit"));
//! assert_eq!(again.headers()["age"], "0");
//! assert_eq!(runs.load(Ordering::SeqCst), 1, "the hit did not run the handler");
//! # }
//! ```

mod layer;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod service;
mod store;

pub use self::layer::{ResponseCache, ResponseCacheConfig, ResponseCacheLayer};
pub use self::memory::MemoryCacheStore;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::RedisCacheStore;
pub use self::store::{CacheKey, CacheStore, CachedResponse};
pub use crate::idempotency::KeyScope;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use crate::stored::redis::RedisStoreConfig;
pub use crate::stored::{ResponseFuture, StoreError, StoreErrorKind};

/// The response header saying what the cache did (RFC 9211): `chassis; hit; ttl=N`,
/// `chassis; fwd=miss`, `chassis; fwd=miss; stored`, `chassis; fwd=request`,
/// `chassis; fwd=stale`, `chassis; fwd=miss; detail=store-unavailable`.
pub const CACHE_STATUS: http::HeaderName = http::HeaderName::from_static("cache-status");

/// Whether responses with `status` are stored (the statuses RFC 9110 §15.1 makes cacheable by
/// default): `200`, `203`, `204`, `300`, `301`, `308`, `404`, `405`, `410`, `414`, `501`.
pub fn cacheable(status: http::StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}
