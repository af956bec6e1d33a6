//! [`IdempotencyLayer`]: the `Idempotency-Key` request header of
//! draft-ietf-httpapi-idempotency-key-header (as Stripe's API uses it), so that a client may
//! retry a `POST` or `PATCH` whose answer it did not get without the request taking effect
//! twice.
//!
//! For a request whose method is one of the layer's ([`methods`](IdempotencyLayer::methods),
//! default `POST` and `PATCH`) and which carries an `Idempotency-Key`:
//!
//! 1. The body is read, up to [`max_request_bytes`](IdempotencyLayer::max_request_bytes)
//!    (default 1 MiB; a larger one is a `413 payload_too_large`), and the request's
//!    *fingerprint* is taken: the SHA-256 of its method, path and query, and body.
//! 2. The key, within the request's *scope* ([`scope`](IdempotencyLayer::scope): a closure
//!    naming the client, e.g. its API key or authenticated principal, so that two clients
//!    choosing the same key never meet), is looked up in the [`IdempotencyStore`]:
//!    - unknown: the layer takes the key's lock and the request runs;
//!    - completed, same fingerprint: the stored response is sent again, with
//!      `Idempotent-Replayed: true`, and the handler does not run;
//!    - completed or in flight with another fingerprint: `422 idempotency_key_reused` (the
//!      client reused a key for a different request);
//!    - in flight, same fingerprint (the first request still runs): `409
//!      idempotency_key_in_flight` with `Retry-After: 1`, or, with
//!      [`wait_in_flight`](IdempotencyLayer::wait_in_flight), the layer waits up to that long
//!      for the first request to finish and then replays its response.
//! 3. The response is kept for [`ttl`](IdempotencyLayer::ttl) (default 24 h): its status, its
//!    headers without hop-by-hop fields and `Content-Length`, and its body up to
//!    [`max_response_bytes`](IdempotencyLayer::max_response_bytes) (default 64 KiB). A larger
//!    body is sent to the client in full but not kept: the key is completed without it (so the
//!    request still never runs twice), a warning is logged the first time for each layer, and a
//!    replay sends the status and headers with an empty body and
//!    `Idempotent-Body-Omitted: true`. Response trailers are not kept.
//!
//! A request that failed is not kept: a `5xx` response, an error of the inner service, a
//! response body that fails while being read, a request cancelled while it runs (the client
//! went away, or the guard's timeout dropped the handler), and the statuses that say it was not
//! processed (`408 Request Timeout`, `429 Too Many Requests`) *release* the key, so the client's
//! retry with the same key runs again. This follows the draft's advice that a retry of a
//! failed request be possible, and Stripe's practice of not saving results of requests that
//! failed on the server's side; a handler whose failure may leave an effect behind must make
//! that effect idempotent itself. Every other response (`2xx`, `3xx`, other `4xx`) is replayed.
//!
//! Requests without the header pass through untouched, or, when the layer is
//! [`required`](IdempotencyLayer::required), are answered `400 idempotency_key_missing`. A key
//! that is empty, longer than [`max_key_length`](IdempotencyLayer::max_key_length) (default
//! 255), not text, or sent twice is a `400 invalid_idempotency_key`. The key may be sent as the
//! draft's structured-field string (`Idempotency-Key: "8e03978e"`) or bare (`Idempotency-Key:
//! 8e03978e`, as Stripe clients send it). Other methods always pass through.
//!
//! The lock of a running request expires after [`lock_ttl`](IdempotencyLayer::lock_ttl)
//! (default 60 s), so a replica that crashes mid-request does not hold its keys for a day; set it
//! above the request timeout, or a retry may run while the first attempt still does.
//!
//! When the store cannot answer (Redis down, slow, or its circuit breaker open), the request is
//! answered `503 idempotency_store_unavailable` with `Retry-After` and does not run: running it
//! without its key would give up the guarantee the client asked for. Every error answer has the
//! chassis JSON body ([`ApiError`](crate::ApiError)); the codes are in [`codes`].
//!
//! # Stores
//!
//! - [`MemoryStore`]: this process's memory, bounded in entries and bytes, expiring; for a
//!   service with one replica, and tests.
//! - `RedisStore` (feature `redis`): Redis, shared by every replica, so a retry that reaches
//!   another replica replays the first replica's response; every call has a timeout and goes
//!   through a circuit breaker.
//!
//! # Where it goes
//!
//! Inside the [standard layers](crate::layers::StandardLayers) (so replays are traced, counted
//! and logged like any response, and its body buffering is bounded by the guard's body limit)
//! and after authentication (so the scope closure can read the principal the auth layer put in
//! the request's extensions). Under axum, put it on the routes that create things with
//! `route_layer`.
//!
//! # Example
//! ```
//! use chassis_http::idempotency::{IdempotencyLayer, MemoryStore};
//! use http::{Method, Request, Response};
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let runs = Arc::new(AtomicUsize::new(0));
//! let counter = runs.clone();
//! let handler = service_fn(move |_req: Request<_>| {
//!     let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
//!     async move { Ok::<_, std::convert::Infallible>(Response::new(format!("order {n}"))) }
//! });
//! let layer = IdempotencyLayer::new(MemoryStore::new())
//!     .ttl(Duration::from_secs(3600))
//!     // Keys are per API key: two clients may choose the same key.
//!     .scope(|req: &http::request::Parts| {
//!         req.headers.get("x-api-key")?.to_str().ok().map(str::to_owned)
//!     });
//! let svc = layer.layer(handler);
//!
//! let post = || {
//!     Request::builder()
//!         .method(Method::POST)
//!         .uri("/orders")
//!         .header("x-api-key", "client-1")
//!         .header("idempotency-key", "\"a1b2c3\"")
//!         .body(String::from("{\"item\":\"book\"}"))
//!         .unwrap()
//! };
//! let first = svc.clone().oneshot(post()).await.unwrap();
//! let again = svc.clone().oneshot(post()).await.unwrap();
//! assert_eq!(again.headers()["idempotent-replayed"], "true");
//! assert_eq!(runs.load(Ordering::SeqCst), 1, "the retry did not run the handler");
//!
//! use http_body_util::BodyExt;
//! let (a, b) = (first.into_body().collect().await.unwrap(), again.into_body().collect().await.unwrap());
//! assert_eq!(a.to_bytes(), b.to_bytes());
//! # }
//! ```

mod body;
mod layer;
mod memory;
#[cfg(feature = "redis")]
mod redis;
mod service;
mod store;

pub use self::body::RequestBody;
pub use self::layer::{Idempotency, IdempotencyConfig, IdempotencyLayer, KeyScope};
pub use self::memory::{MemoryStore, MemoryStoreStats};
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use self::redis::{RedisStore, RedisStoreConfig};
pub use self::store::{
    Begin, Fingerprint, IdempotencyStore, Lock, StoreError, StoreErrorKind, StoreKey,
    StoredResponse,
};
pub use crate::stored::ResponseFuture;

/// The request header carrying the key.
pub const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// The response header marking a replayed response (`true`).
pub const IDEMPOTENT_REPLAYED: http::HeaderName =
    http::HeaderName::from_static("idempotent-replayed");

/// The response header marking a replay whose body was too large to keep (`true`).
pub const IDEMPOTENT_BODY_OMITTED: http::HeaderName =
    http::HeaderName::from_static("idempotent-body-omitted");

/// The error codes of the idempotency layer's answers.
pub mod codes {
    /// 400: the layer is required and the request has no `Idempotency-Key`.
    pub const KEY_MISSING: &str = "idempotency_key_missing";
    /// 400: the `Idempotency-Key` is empty, too long, not text, or sent twice.
    pub const KEY_INVALID: &str = "invalid_idempotency_key";
    /// 409: a request with this key is still running.
    pub const KEY_IN_FLIGHT: &str = "idempotency_key_in_flight";
    /// 422: the key was used for a different request (method, path or body).
    pub const KEY_REUSED: &str = "idempotency_key_reused";
    /// 503: the idempotency store cannot answer; the request did not run.
    pub const STORE_UNAVAILABLE: &str = "idempotency_store_unavailable";
}
