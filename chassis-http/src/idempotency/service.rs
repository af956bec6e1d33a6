//! [`Idempotency`]: the service of the idempotency layer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower_service::Service;

use super::body::RequestBody;
use super::layer::{Idempotency, Settings};
use super::store::{Begin, Fingerprint, Lock, StoreKey, StoredResponse};
use super::{IDEMPOTENCY_KEY, IDEMPOTENT_BODY_OMITTED, IDEMPOTENT_REPLAYED, codes};
use crate::body::{Body, BoxError, boxed, full};
use crate::error::ApiError;
use crate::layers::guard::LengthLimitError;
use crate::stored::{Read, ResponseFuture, StoreError, read_response, storable_headers};

const TARGET: &str = "chassis_http::idempotency";

impl<S, ReqB, ResB> Service<Request<ReqB>> for Idempotency<S>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: http_body::Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    chassis_core::__forward_poll_ready!();

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let settings = &self.settings;
        if !settings.methods.contains(req.method()) {
            return ResponseFuture::inner(self.inner.call(req.map(RequestBody::streaming)));
        }
        let key = match parse_key(req.headers(), settings.max_key_length) {
            Ok(Some(key)) => key,
            Ok(None) if settings.required => {
                return ResponseFuture::answered(
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        codes::KEY_MISSING,
                        "this request needs an Idempotency-Key header",
                    )
                    .into_response(),
                );
            }
            Ok(None) => {
                return ResponseFuture::inner(self.inner.call(req.map(RequestBody::streaming)));
            }
            Err(err) => return ResponseFuture::answered(err.into_response()),
        };
        // NOTE: `poll_ready` readied `self.inner`; the call happens after the store lookups, so
        // the ready service moves into the future and a fresh clone stays.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::boxed(Box::pin(keyed(settings.clone(), inner, req, key)))
    }
}

/// The `Idempotency-Key` of `headers`: `None` without one, a 400 for a malformed one.
///
/// The draft's form is a structured-field string (`"..."`, with `\"` and `\\` escapes); a bare
/// value of visible ASCII is taken as the key too.
fn parse_key(headers: &HeaderMap, max_len: usize) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let invalid = |why: &str| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            codes::KEY_INVALID,
            format!("invalid Idempotency-Key: {why}"),
        )
    };
    if values.next().is_some() {
        return Err(invalid("sent more than once"));
    }
    let raw = value.as_bytes().trim_ascii();
    let key = if let Some(quoted) = raw.strip_prefix(b"\"") {
        let mut key = String::with_capacity(quoted.len());
        let mut chars = quoted.iter();
        loop {
            match chars.next() {
                None => return Err(invalid("unterminated string")),
                Some(b'"') => break,
                Some(b'\\') => match chars.next() {
                    Some(&c @ (b'"' | b'\\')) => key.push(c as char),
                    _ => return Err(invalid("bad escape")),
                },
                Some(&c) if (0x20..0x7f).contains(&c) => key.push(c as char),
                Some(_) => return Err(invalid("not printable ASCII")),
            }
        }
        if chars.next().is_some() {
            return Err(invalid("text after the closing quote"));
        }
        key
    } else {
        if !raw.iter().all(|c| (0x21..0x7f).contains(c)) {
            return Err(invalid("not visible ASCII"));
        }
        String::from_utf8_lossy(raw).into_owned()
    };
    if key.is_empty() {
        return Err(invalid("empty"));
    }
    if key.len() > max_len {
        return Err(invalid(&format!("longer than {max_len} characters")));
    }
    Ok(Some(key))
}

/// A keyed request: read the body, look the key up, run or answer, keep the response.
async fn keyed<S, ReqB, ResB>(
    settings: Arc<Settings>,
    mut inner: S,
    req: Request<ReqB>,
    key: String,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<RequestBody<ReqB>>, Response = Response<ResB>>,
    ReqB: http_body::Body<Data = Bytes>,
    ReqB::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let body = match read_request(body, settings.max_request_bytes).await {
        Ok(body) => body,
        Err(err) => return Ok(err.into_response()),
    };
    let scope = settings.scope.as_ref().and_then(|s| s.scope(&parts));
    let key = StoreKey::new(scope, key);
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let fingerprint = Fingerprint::of(&parts.method, path, &body);
    let lock = match acquire(&settings, &key, &fingerprint).await {
        Ok(lock) => lock,
        Err(answer) => return Ok(answer),
    };
    let mut guard = ReleaseOnDrop {
        settings: settings.clone(),
        key: key.clone(),
        lock: Some(lock.clone()),
    };
    let result = inner
        .call(Request::from_parts(parts, RequestBody::buffered(body)))
        .await;
    let response = match result {
        Ok(response) => response,
        Err(err) => {
            release(&settings, &key, &lock, "the service failed").await;
            guard.disarm();
            return Err(err);
        }
    };
    let status = response.status();
    if !kept(status) {
        release(&settings, &key, &lock, status.as_str()).await;
        guard.disarm();
        return Ok(response.map(boxed));
    }
    let (parts, body) = response.into_parts();
    let (body, stored_body) = match read_response(boxed(body), settings.max_response_bytes).await {
        Read::Whole(resumed, bytes) => (resumed, Some(bytes)),
        Read::TooLarge(resumed) => {
            if settings.warned_large.swap(true, Ordering::Relaxed) {
                tracing::debug!(target: TARGET, key = key.key(), limit = settings.max_response_bytes, "response too large to keep; replays send its status and headers only");
            } else {
                tracing::warn!(target: TARGET, key = key.key(), limit = settings.max_response_bytes, "response too large to keep; replays send its status and headers only (logged once)");
            }
            (resumed, None)
        }
        Read::Failed(resumed) => {
            release(&settings, &key, &lock, "the response body failed").await;
            guard.disarm();
            return Ok(Response::from_parts(parts, boxed(resumed)));
        }
    };
    let record = StoredResponse::new(
        fingerprint,
        status,
        storable_headers(&parts.headers, stored_body.is_none()),
        stored_body.clone().unwrap_or_default(),
        stored_body.is_none(),
    );
    match settings
        .store
        .complete(&key, &lock, &record, settings.ttl)
        .await
    {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            target: TARGET,
            key = key.key(),
            lock_ttl = ?settings.lock_ttl,
            "the key's lock expired before the response was kept; a retry will run again"
        ),
        Err(err) => tracing::error!(
            target: TARGET,
            key = key.key(),
            error = %err,
            "the response could not be kept; a retry will run again once the lock expires"
        ),
    }
    guard.disarm();
    Ok(Response::from_parts(parts, boxed(body)))
}

/// Releases the key when a keyed request's future is dropped while it holds the lock: the
/// client went away, or the guard's timeout cancelled the handler. Like any failed request,
/// the client may then retry at once rather than meet a 409 until the lock expires.
struct ReleaseOnDrop {
    settings: Arc<Settings>,
    key: StoreKey,
    lock: Option<Lock>,
}

impl ReleaseOnDrop {
    /// The request finished: the key is completed or released already.
    fn disarm(&mut self) {
        self.lock = None;
    }
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let Some(lock) = self.lock.take() else {
            return;
        };
        // Without a runtime (dropped at shutdown) the lock expires by itself.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let settings = self.settings.clone();
            let key = self.key.clone();
            runtime.spawn(async move {
                release(&settings, &key, &lock, "the request was cancelled").await;
            });
        }
    }
}

/// Whether a response with `status` is kept and replayed. A server error, a request timeout
/// and a rate limit say the request did not (fully) take effect: the key is released instead.
fn kept(status: StatusCode) -> bool {
    !(status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS)
}

/// Takes the key's lock, or the answer to send instead (a replay, 409, 422, 503).
async fn acquire(
    settings: &Settings,
    key: &StoreKey,
    fingerprint: &Fingerprint,
) -> Result<Lock, Response<Body>> {
    let deadline = settings
        .wait_in_flight
        .and_then(|wait| Instant::now().checked_add(wait));
    let mut pause = Duration::from_millis(10);
    loop {
        let found = settings
            .store
            .begin(key, fingerprint, settings.lock_ttl)
            .await;
        match found {
            Ok(Begin::Acquired(lock)) => return Ok(lock),
            Ok(Begin::Completed(stored)) if stored.fingerprint() == fingerprint => {
                tracing::debug!(target: TARGET, key = key.key(), "replaying the stored response");
                return Err(replay(&stored));
            }
            Ok(Begin::Completed(_)) => return Err(reused()),
            Ok(Begin::InFlight { fingerprint: held }) if held != *fingerprint => {
                return Err(reused());
            }
            Ok(Begin::InFlight { .. }) => {
                let now = Instant::now();
                match deadline {
                    Some(deadline) if now < deadline => {
                        // Poll the store: a Redis store has no way to wake this request when
                        // the other finishes, and a short wait is what this option is for.
                        tokio::time::sleep(pause.min(deadline - now)).await;
                        pause = (pause * 2).min(Duration::from_millis(250));
                    }
                    _ => return Err(in_flight()),
                }
            }
            Err(err) => {
                tracing::warn!(target: TARGET, key = key.key(), error = %err, "idempotency store unavailable: request refused");
                return Err(store_unavailable(&err).into_response());
            }
        }
    }
}

async fn release(settings: &Settings, key: &StoreKey, lock: &Lock, why: &str) {
    match settings.store.release(key, lock).await {
        Ok(_) => {
            tracing::debug!(target: TARGET, key = key.key(), why, "request failed: key released for a retry");
        }
        Err(err) => tracing::warn!(
            target: TARGET,
            key = key.key(),
            error = %err,
            "the key could not be released; a retry gets 409 until the lock expires"
        ),
    }
}

fn replay(stored: &StoredResponse) -> Response<Body> {
    let mut response = Response::new(full(stored.body().clone()));
    *response.status_mut() = stored.status();
    *response.headers_mut() = stored.headers().clone();
    let headers = response.headers_mut();
    headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    if stored.body_omitted() {
        headers.insert(IDEMPOTENT_BODY_OMITTED, HeaderValue::from_static("true"));
    }
    response
}

/// The `503 idempotency_store_unavailable` answer to a store that cannot answer.
fn store_unavailable(err: &StoreError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        codes::STORE_UNAVAILABLE,
        "the idempotency store is unavailable; retry later with the same key",
    )
    .with_retry_after(err.retry_after())
}

fn reused() -> Response<Body> {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        codes::KEY_REUSED,
        "this Idempotency-Key was used for a different request",
    )
    .into_response()
}

fn in_flight() -> Response<Body> {
    ApiError::new(
        StatusCode::CONFLICT,
        codes::KEY_IN_FLIGHT,
        "a request with this Idempotency-Key is still being processed",
    )
    .with_retry_after(Duration::from_secs(1))
    .into_response()
}

/// Reads a keyed request's body, up to `limit` bytes.
async fn read_request<B>(body: B, limit: usize) -> Result<Bytes, ApiError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    if body.size_hint().lower() > limit as u64 {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.as_mut().frame().await {
        let frame = frame.map_err(|err| {
            let err: BoxError = err.into();
            // The guard's body limit answers for itself (it turns the answer into its 413).
            if let Some(limited) = err.downcast_ref::<LengthLimitError>() {
                return ApiError::payload_too_large(limited.limit());
            }
            tracing::debug!(target: TARGET, error = %err, "request body could not be read");
            ApiError::bad_request("the request body could not be read")
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(ApiError::payload_too_large(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(value: &'static str) -> Result<Option<String>, String> {
        let mut headers = HeaderMap::new();
        headers.insert(IDEMPOTENCY_KEY, HeaderValue::from_static(value));
        parse_key(&headers, 10).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn keys_as_structured_strings_or_bare() {
        assert_eq!(key("\"abc\"").unwrap().as_deref(), Some("abc"));
        assert_eq!(key("abc-123").unwrap().as_deref(), Some("abc-123"));
        assert_eq!(
            key(" \"a \\\"b\\\\\" ").unwrap().as_deref(),
            Some("a \"b\\")
        );
        assert!(parse_key(&HeaderMap::new(), 10).unwrap().is_none());
        for bad in [
            "",
            "\"\"",
            "\"abc",
            "\"a\"b",
            "a b",
            "\"a\\b\"",
            "01234567890",
        ] {
            assert!(key(bad).is_err(), "{bad:?}");
        }
        let mut two = HeaderMap::new();
        two.append(IDEMPOTENCY_KEY, HeaderValue::from_static("a"));
        two.append(IDEMPOTENCY_KEY, HeaderValue::from_static("b"));
        assert_eq!(parse_key(&two, 10).unwrap_err().code(), codes::KEY_INVALID);
    }
}
