//! Request ids: `x-request-id` propagated when valid, generated (UUID v7) otherwise, stored as a
//! [`RequestId`] request extension and echoed on the response.
//!
//! An incoming id is kept when it is 1 to 128 visible ASCII characters (so it cannot inject
//! anything into logs); otherwise a fresh UUID v7 (time-ordered to the millisecond, so ids sort
//! by arrival; 74 random bits from a per-thread generator seeded from the OS) replaces it. Handlers read it with `req.extensions().get::<RequestId>()` (or axum's
//! `Extension<RequestId>`).
//!
//! # Example
//! ```
//! use chassis_http::layers::request_id::{RequestId, RequestIdLayer};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new().layer(RequestIdLayer::new()).service(service_fn(
//!     |req: http::Request<()>| async move {
//!         let id = req.extensions().get::<RequestId>().unwrap().as_str().to_owned();
//!         Ok::<_, std::convert::Infallible>(http::Response::new(id))
//!     },
//! ));
//! let req = http::Request::builder().header("x-request-id", "abc-123").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.headers()["x-request-id"], "abc-123");
//! assert_eq!(res.body(), "abc-123");
//! # }
//! ```

use std::cell::Cell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use http::{HeaderName, HeaderValue, Request, Response};

use crate::future::{Finish, Finishing};

/// The `x-request-id` header.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest incoming id that is propagated rather than replaced.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The id of one request, as a request extension.
#[derive(Clone, PartialEq, Eq)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// A fresh UUID v7 id.
    pub fn generate() -> Self {
        // Not `Uuid::now_v7`: it takes the OS random source (a system call per id) and a shared
        // counter; request ids need uniqueness and millisecond order, not that.
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let random = random_bits();
        let uuid = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
        let mut buf = [0; uuid::fmt::Hyphenated::LENGTH];
        uuid.hyphenated().encode_lower(&mut buf);
        // Owned by a refcounted buffer from the start: the id is cloned into the request and
        // the response, and cloning a copied `Bytes` would allocate again to share it.
        let bytes = bytes::Bytes::from_owner(buf);
        Self(HeaderValue::from_maybe_shared(bytes).expect("a UUID is a valid header value"))
    }

    /// `value` as a request id if it is acceptable: 1 to [`MAX_REQUEST_ID_LEN`] visible ASCII
    /// characters.
    pub fn parse(value: &HeaderValue) -> Option<Self> {
        let bytes = value.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= MAX_REQUEST_ID_LEN
            && bytes.iter().all(|b| (0x21..=0x7e).contains(b));
        ok.then(|| Self(value.clone()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // `parse` and `generate` only admit visible ASCII, so UTF-8 validation (fast on ASCII)
        // suffices; `HeaderValue::to_str` would check every byte for visibility again, and the
        // id is read for the span and the access line of every request.
        std::str::from_utf8(self.0.as_bytes()).unwrap_or_default()
    }

    /// The id as a header value.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

thread_local! {
    /// State of this thread's request-id generator, seeded from the OS random source.
    static ID_RNG: Cell<u64> = Cell::new(rand::random());
}

/// 80 random bits for a request id (the UUID keeps 74 of them), from wyrand: ids must not
/// collide, they need not be unpredictable (they are echoed to clients anyway).
fn random_bits() -> [u8; 10] {
    fn wyrand(state: &Cell<u64>) -> u64 {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }
    ID_RNG.with(|state| {
        let (a, b) = (wyrand(state), wyrand(state));
        let mut out = [0; 10];
        out[..8].copy_from_slice(&a.to_le_bytes());
        out[8..].copy_from_slice(&b.to_le_bytes()[..2]);
        out
    })
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Layer adding [`RequestIdService`]. Uses the `x-request-id` header unless told otherwise.
#[derive(Debug, Clone)]
pub struct RequestIdLayer {
    header: HeaderName,
}

impl Default for RequestIdLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestIdLayer {
    /// Propagates/generates `x-request-id`.
    pub fn new() -> Self {
        Self {
            header: X_REQUEST_ID,
        }
    }

    /// Uses another header name. Defaults to `x-request-id`.
    pub fn header(mut self, header: HeaderName) -> Self {
        self.header = header;
        self
    }
}

chassis_core::__impl_layer!(RequestIdLayer => RequestIdService { header });

/// Sets, stores and echoes the request id; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct RequestIdService<S> {
    inner: S,
    header: HeaderName,
}

crate::middleware::impl_middleware! {
    RequestIdService => ResponseFuture;

    #[inline]
    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let id = match req.headers().get(&self.header).and_then(RequestId::parse) {
            Some(id) => id,
            None => {
                let id = RequestId::generate();
                req.headers_mut().insert(self.header.clone(), id.0.clone());
                id
            }
        };
        let value = id.0.clone();
        req.extensions_mut().insert(id);
        let echo = hook::EchoId(Some((self.header.clone(), value)));
        Finishing::new(self.inner.call(req), echo)
    }
}

/// Response future of [`RequestIdService`].
pub type ResponseFuture<F> = Finishing<F, hook::EchoId>;

mod hook {
    /// The id header to set on the response, unless the handler set it itself.
    #[derive(Debug)]
    pub struct EchoId(pub(super) Option<(super::HeaderName, super::HeaderValue)>);
}

impl<ResB, E> Finish<Result<Response<ResB>, E>> for hook::EchoId {
    type Output = Result<Response<ResB>, E>;

    #[inline]
    fn finish(&mut self, result: Result<Response<ResB>, E>) -> Self::Output {
        let mut res = result?;
        if let Some((name, value)) = self.0.take() {
            res.headers_mut().entry(name).or_insert(value);
        }
        Ok(res)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer, ServiceExt, service_fn};

    async fn echo(req: Request<()>) -> Result<Response<String>, Infallible> {
        let id = req.extensions().get::<RequestId>().unwrap();
        assert_eq!(req.headers()[X_REQUEST_ID], *id.header_value());
        Ok(Response::new(id.to_string()))
    }

    #[tokio::test]
    async fn generates_uuid_v7_when_missing_or_invalid() {
        for incoming in [None, Some(""), Some("has space"), Some(&*"x".repeat(129))] {
            let mut req = Request::builder();
            if let Some(v) = incoming {
                req = req.header(X_REQUEST_ID, v);
            }
            let svc = RequestIdLayer::new().layer(service_fn(echo));
            let res = svc.oneshot(req.body(()).unwrap()).await.unwrap();
            let id = res.headers()[X_REQUEST_ID].to_str().unwrap().to_owned();
            let uuid = uuid::Uuid::parse_str(&id).expect("a uuid");
            assert_eq!(uuid.get_version_num(), 7);
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(res.body(), &id);
        }
    }

    #[test]
    fn generated_ids_are_unique_and_carry_the_time() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let ids: std::collections::HashSet<String> = (0..1000)
            .map(|_| RequestId::generate().to_string())
            .collect();
        assert_eq!(ids.len(), 1000);
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        for id in &ids {
            let (secs, nanos) = uuid::Uuid::parse_str(id)
                .unwrap()
                .get_timestamp()
                .expect("a v7 timestamp")
                .to_unix();
            let millis = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!(
                (before..=after).contains(&millis),
                "{millis} not in {before}..={after}"
            );
        }
    }

    #[tokio::test]
    async fn propagates_a_valid_incoming_id() {
        let svc = RequestIdLayer::new().layer(service_fn(echo));
        let req = Request::builder()
            .header(X_REQUEST_ID, "req-42")
            .body(())
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.headers()[X_REQUEST_ID], "req-42");
        assert_eq!(res.body(), "req-42");
    }

    #[tokio::test]
    async fn keeps_a_handler_set_header() {
        let svc = RequestIdLayer::new().layer(service_fn(|_req: Request<()>| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .header(X_REQUEST_ID, "from-handler")
                    .body(())
                    .unwrap(),
            )
        }));
        let res = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(res.headers()[X_REQUEST_ID], "from-handler");
    }
}
