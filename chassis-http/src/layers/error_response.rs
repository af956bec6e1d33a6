//! Errors and error responses as the chassis answers them (the JSON error body), for the
//! [guard](super::guard)'s error-response part and the server's safety net.

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, Response, header};

use crate::body::{Body, BoxError, boxed};
use crate::error::ApiError;

/// The error response for an error of the inner service (logged at ERROR when a 5xx).
pub(crate) fn error_response(err: BoxError) -> Response<Body> {
    let api = ApiError::from_box_error(&err);
    if api.status().is_server_error() {
        tracing::error!(target: "chassis_http::server", error = %err, status = api.status().as_u16(), "service failed");
    }
    api.into_response()
}

/// The inner service's response as the chassis answers it: boxed, and with the JSON error
/// body if it is an error response without a JSON body (see the [guard](super::guard)).
#[inline]
pub(crate) fn finish<B>(response: Response<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    // The hot path: a success (or redirect) is passed on after this one comparison.
    if response.status().as_u16() < 400 || is_json(response.headers()) {
        return response.map(boxed);
    }
    json_error_response(response)
}

/// At most this much of a plain-text error body becomes the message.
const MAX_MESSAGE_BYTES: usize = 1024;

#[cold]
#[inline(never)]
pub(crate) fn json_error_response<B>(response: Response<B>) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
{
    let (mut parts, body) = response.into_parts();
    let text = if is_plain_text(&parts.headers) {
        ready_text(body)
    } else {
        None
    };
    let api = ApiError::from_status_text(parts.status, text.as_deref().unwrap_or(""));
    // The old body's headers do not describe the new one; the others (`Allow` of a 405,
    // `WWW-Authenticate`, `Retry-After`, cookies...) still hold.
    let stale: Vec<_> = parts
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with("content-") || *name == header::TRANSFER_ENCODING)
        .cloned()
        .collect();
    for name in stale {
        parts.headers.remove(name);
    }
    let mut response = api.into_response();
    response.headers_mut().extend(parts.headers);
    *response.extensions_mut() = parts.extensions;
    *response.version_mut() = parts.version;
    response
}

/// Whether the body is JSON (`application/json`, `application/problem+json`, ...): an error body
/// the service chose, left as it is.
pub(crate) fn is_json(headers: &HeaderMap) -> bool {
    media_type(headers).is_some_and(|media| {
        let media = media.to_ascii_lowercase();
        media == "application/json"
            || (media.starts_with("application/") && media.ends_with("+json"))
    })
}

/// Whether the body is text for humans: `text/plain`, or no content type with a body at all
/// (axum's rejections are `text/plain; charset=utf-8`).
fn is_plain_text(headers: &HeaderMap) -> bool {
    !headers.contains_key(header::CONTENT_ENCODING)
        && media_type(headers).is_none_or(|media| media.eq_ignore_ascii_case("text/plain"))
}

/// The media type of `Content-Type`, without parameters.
fn media_type(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or("").trim())
}

/// The text of a body whose data is already there (a framework's error text is one buffered
/// frame): read without waiting, since answering must not wait on the body of an error; up to
/// [`MAX_MESSAGE_BYTES`]. `None` when nothing is ready, the body is empty or not UTF-8.
fn ready_text<B: http_body::Body<Data = Bytes>>(body: B) -> Option<String> {
    let mut body = pin!(body);
    // The body is dropped right after, so nothing needs waking.
    let mut cx = Context::from_waker(Waker::noop());
    let mut buf = Vec::new();
    // Bounded in frames too: a body of empty frames must not keep this loop going.
    for _ in 0..16 {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data[..data.len().min(MAX_MESSAGE_BYTES - buf.len())]);
                }
                if buf.len() == MAX_MESSAGE_BYTES {
                    break;
                }
            }
            // Ended, failed, or not ready: the text so far.
            _ => break,
        }
    }
    let text = match std::str::from_utf8(&buf) {
        Ok(text) => text,
        // Only the last character was cut by the limit.
        Err(e) if e.error_len().is_none() => std::str::from_utf8(&buf[..e.valid_up_to()]).ok()?,
        Err(_) => return None,
    };
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures_util::StreamExt as _;
    use http::{HeaderValue, StatusCode};
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    fn response(status: u16, content_type: Option<&str>, body: &'static str) -> Response<Body> {
        let mut builder = Response::builder().status(status);
        if let Some(content_type) = content_type {
            builder = builder.header(header::CONTENT_TYPE, content_type);
        }
        builder
            .header(header::CONTENT_LENGTH, body.len())
            .body(boxed(Full::new(Bytes::from_static(body.as_bytes()))))
            .unwrap()
    }

    async fn json(response: Response<Body>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {bytes:?}"))
    }

    #[tokio::test]
    async fn success_and_json_errors_pass_through() {
        for (status, content_type, body) in [
            (200, Some("text/plain"), "fine"),
            (302, None, ""),
            (409, Some("application/json"), r#"{"mine":true}"#),
            (
                400,
                Some("Application/JSON; charset=utf-8"),
                r#"{"mine":1}"#,
            ),
            (422, Some("application/problem+json"), r#"{"title":"x"}"#),
        ] {
            let res = finish(response(status, content_type, body));
            assert_eq!(res.status(), status);
            let bytes = res.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&bytes[..], body.as_bytes());
        }
    }

    #[tokio::test]
    async fn other_error_responses_get_the_json_body() {
        let res = finish(response(
            400,
            Some("text/plain; charset=utf-8"),
            "Failed to parse the request body as JSON: EOF",
        ));
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            json(res).await,
            serde_json::json!({
                "success": false,
                "error": {
                    "code": "bad_request",
                    "message": "Failed to parse the request body as JSON: EOF",
                    "details": null
                },
                "traceId": null
            })
        );

        // Empty, with headers that still hold: the reason phrase; the old length goes.
        let mut res = response(405, None, "");
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
        let res = finish(res);
        assert_eq!(res.headers()[header::ALLOW], "GET,HEAD");
        assert!(!res.headers().contains_key(header::CONTENT_LENGTH));
        let body = json(res).await;
        assert_eq!(body["error"]["code"], "method_not_allowed");
        assert_eq!(body["error"]["message"], "Method Not Allowed");

        // Compressed or not text: not read.
        let mut res = response(400, Some("text/plain"), "gzip bytes");
        res.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let res = finish(res);
        assert!(!res.headers().contains_key(header::CONTENT_ENCODING));
        assert_eq!(json(res).await["error"]["message"], "Bad Request");
        let res = finish(response(415, Some("text/html"), "<p>no</p>"));
        let body = json(res).await;
        assert_eq!(body["error"]["code"], "unsupported_media_type");
        assert_eq!(body["error"]["message"], "Unsupported Media Type");
    }

    #[test]
    fn message_is_what_is_ready_up_to_the_limit() {
        // Several frames, then a body that is not ready: the text so far.
        let frames = futures_util::stream::iter(["too ", "short"].map(|c| {
            Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(c.as_bytes())))
        }))
        .chain(futures_util::stream::pending());
        assert_eq!(
            ready_text(StreamBody::new(frames)).as_deref(),
            Some("too short")
        );
        assert_eq!(
            ready_text(StreamBody::new(futures_util::stream::pending::<
                Result<http_body::Frame<Bytes>, Infallible>,
            >())),
            None
        );

        // Over the limit, cut inside a two-byte character: whole characters only.
        let long: &'static str = "é".repeat(MAX_MESSAGE_BYTES).leak();
        let text = ready_text(Full::new(Bytes::from_static(long.as_bytes()))).unwrap();
        assert_eq!(text.len(), MAX_MESSAGE_BYTES);
        let odd = format!("x{long}").leak();
        let text = ready_text(Full::new(Bytes::from_static(odd.as_bytes()))).unwrap();
        assert_eq!(text.len(), MAX_MESSAGE_BYTES - 1);

        assert_eq!(
            ready_text(Full::new(Bytes::from_static(b"\xff\xfe"))),
            None,
            "not UTF-8"
        );
        assert_eq!(ready_text(Full::new(Bytes::from_static(b" \n"))), None);
    }
}
