//! The response body type of the chassis layers.
//!
//! Every chassis layer that can answer on its own (timeout, limits, panics, health endpoints,
//! errors) returns `http::Response<`[`Body`]`>`: a boxed [`http_body::Body`] of [`Bytes`] whose
//! error is a [`BoxError`]. [`boxed`] converts any body into it and does not box twice when it
//! already is one, so a stack of chassis layers allocates one box per response at most.
//!
//! Under axum, turn a chassis body into an axum body with `axum::body::Body::new(body)`; an
//! axum `Router` can be served directly because every chassis layer accepts any response body.
//!
//! ```
//! use chassis_http::body::{boxed, full, Body};
//! use http_body_util::BodyExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let body: Body = full("hello");
//! let again: Body = boxed(body); // no second box
//! let bytes = again.collect().await.unwrap().to_bytes();
//! assert_eq!(&bytes[..], b"hello");
//! # }
//! ```

use std::any::Any;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, combinators::UnsyncBoxBody};

pub use chassis_core::BoxError;

/// The boxed response body every chassis layer produces.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// Boxes `body` into a [`Body`], reusing the box when `body` already is a [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    match try_downcast::<Body, B>(body) {
        Ok(body) => body,
        Err(body) => body.map_err(Into::into).boxed_unsync(),
    }
}

/// A response of `status` whose `body` is of `content_type`, with the `Cache-Control`
/// `cache_control` when one is given: the answers the chassis's endpoints write themselves.
pub(crate) fn typed_response(
    status: StatusCode,
    content_type: &'static str,
    cache_control: Option<&'static str>,
    body: Body,
) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Some(cache_control) = cache_control {
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static(cache_control),
        );
    }
    response
}

/// A [`Body`] holding `bytes` in one frame.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty [`Body`].
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

fn try_downcast<T: 'static, K: 'static>(k: K) -> Result<T, K> {
    let mut k = Some(k);
    if let Some(k) = <dyn Any>::downcast_mut::<Option<T>>(&mut k) {
        Ok(k.take().expect("value was just put in"))
    } else {
        Err(k.expect("value was just put in"))
    }
}

/// The JSON a response's body holds, for the crate's unit tests.
#[cfg(test)]
pub(crate) async fn json_of(response: http::Response<Body>) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn boxes_any_body_and_collects() {
        let body = boxed(Full::new(Bytes::from_static(b"abc")));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abc");
        let body = boxed(empty());
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }

    #[test]
    fn downcast_only_matches_same_type() {
        assert!(try_downcast::<u32, u32>(1).is_ok());
        assert!(try_downcast::<u64, u32>(1).is_err());
    }
}
