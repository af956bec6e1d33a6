//! [`ResponseCache`]: the service of the response cache layer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use tower_service::Service;

use super::layer::{ResponseCache, Settings};
use super::store::{CacheKey, CachedResponse};
use super::{CACHE_STATUS, cacheable};
use crate::body::{Body, BoxError, boxed, full};
use crate::stored::{Read, ResponseFuture, read_response, storable_headers};

const TARGET: &str = "chassis_http::response_cache";

impl<S, ReqB, ResB> Service<Request<ReqB>> for ResponseCache<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S::Error>;

    chassis_core::__forward_poll_ready!();

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            return ResponseFuture::inner(self.inner.call(req));
        }
        // NOTE: `poll_ready` readied `self.inner`; the call happens after the store lookup, so
        // the ready service moves into the future and a fresh clone stays.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::boxed(Box::pin(cached(self.settings.clone(), inner, req)))
    }
}

/// The `Cache-Control` directives the layer reads.
#[derive(Debug, Default, PartialEq, Eq)]
struct CacheControl {
    no_store: bool,
    no_cache: bool,
    private: bool,
    public: bool,
    max_age: Option<u64>,
    s_maxage: Option<u64>,
}

impl CacheControl {
    fn of(headers: &HeaderMap) -> Self {
        let mut cc = Self::default();
        let directives = headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for directive in directives {
            let (name, value) = match directive.split_once('=') {
                Some((name, value)) => (name, Some(value.trim().trim_matches('"'))),
                None => (directive, None),
            };
            let seconds = || value.and_then(|v| v.parse::<u64>().ok());
            match name.trim().to_ascii_lowercase().as_str() {
                "no-store" => cc.no_store = true,
                // `no-cache="field"` only forbids reusing the named fields: taken as a whole
                // `no-cache`, which is stricter.
                "no-cache" => cc.no_cache = true,
                "private" => cc.private = true,
                "public" => cc.public = true,
                // A malformed age is taken as 0 (RFC 9111 §4.2.1: stale).
                "max-age" => cc.max_age = Some(seconds().unwrap_or(0)),
                "s-maxage" => cc.s_maxage = Some(seconds().unwrap_or(0)),
                _ => {}
            }
        }
        cc
    }
}

/// What the `Cache-Status` of a response forwarded to the handler says.
enum Forward {
    /// Nothing usable was cached.
    Miss,
    /// The request's `Cache-Control` asked for a fresh response.
    Request,
    /// A response was cached, but older than the request's `max-age` allows.
    Stale,
    /// The store did not answer.
    StoreUnavailable,
}

/// A `GET` or `HEAD`: look the key up, answer from the cache or run the handler and keep its
/// response when it may be.
async fn cached<S, ReqB, ResB>(
    settings: Arc<Settings>,
    mut inner: S,
    req: Request<ReqB>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let asked = CacheControl::of(req.headers());
    let (parts, body) = req.into_parts();
    let vary: Vec<Vec<&[u8]>> = settings
        .vary
        .iter()
        .map(|name| {
            parts
                .headers
                .get_all(name)
                .iter()
                .map(HeaderValue::as_bytes)
                .collect()
        })
        .collect();
    let scope = settings.scope.as_ref().and_then(|s| s.scope(&parts));
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let key = CacheKey::of(&parts.method, path, &vary, scope.as_deref());
    drop(vary);
    let authorized = parts.headers.contains_key(header::AUTHORIZATION);

    let forward = if asked.no_store || asked.no_cache || asked.max_age == Some(0) {
        Forward::Request
    } else {
        match settings.store.get(&key).await {
            Ok(found) => {
                store_answered(&settings);
                let now = SystemTime::now();
                match found {
                    Some(hit) if hit.age(now) < hit.ttl() => {
                        let age = hit.age(now);
                        if asked
                            .max_age
                            .is_none_or(|max| age <= Duration::from_secs(max))
                        {
                            tracing::debug!(target: TARGET, key = %key, "cache hit");
                            return Ok(replay(&hit, age));
                        }
                        Forward::Stale
                    }
                    _ => Forward::Miss,
                }
            }
            Err(err) => {
                if settings.store_down.swap(true, Ordering::Relaxed) {
                    tracing::debug!(target: TARGET, error = %err, "cache store unavailable: request passed to the handler");
                } else {
                    tracing::warn!(target: TARGET, error = %err, "cache store unavailable: requests pass to the handler until it answers again (logged once)");
                }
                Forward::StoreUnavailable
            }
        }
    };

    let response = inner.call(Request::from_parts(parts, body)).await?;
    let ttl = (!asked.no_store && !matches!(forward, Forward::StoreUnavailable))
        .then(|| storable_for(&settings, &response, authorized))
        .flatten();
    let mut status_field = match forward {
        Forward::Miss => "chassis; fwd=miss",
        Forward::Request => "chassis; fwd=request",
        Forward::Stale => "chassis; fwd=stale",
        Forward::StoreUnavailable => "chassis; fwd=miss; detail=store-unavailable",
    }
    .to_owned();
    let Some(ttl) = ttl else {
        let mut response = response.map(boxed);
        set_status(response.headers_mut(), &status_field);
        return Ok(response);
    };
    let (mut head, body) = response.into_parts();
    let body = match read_response(boxed(body), settings.max_body_bytes).await {
        Read::Whole(resumed, bytes) => {
            let record = CachedResponse::new(
                head.status,
                storable_headers(&head.headers, false),
                bytes,
                SystemTime::now(),
                ttl,
            );
            match settings.store.put(&key, &record).await {
                Ok(()) => {
                    store_answered(&settings);
                    status_field.push_str("; stored");
                }
                Err(err) => {
                    tracing::debug!(target: TARGET, key = %key, error = %err, "the response could not be cached");
                }
            }
            resumed
        }
        Read::TooLarge(resumed) => {
            tracing::debug!(target: TARGET, key = %key, limit = settings.max_body_bytes, "response too large to cache");
            resumed
        }
        Read::Failed(resumed) => resumed,
    };
    set_status(&mut head.headers, &status_field);
    Ok(Response::from_parts(head, boxed(body)))
}

/// The store answered: an outage it was in is over.
fn store_answered(settings: &Settings) {
    if settings.store_down.swap(false, Ordering::Relaxed) {
        tracing::info!(target: TARGET, "cache store answers again");
    }
}

/// How long `response` may be kept, or `None` when it may not: its status is not cacheable,
/// its `Cache-Control` forbids it (`no-store`, `no-cache`, `private` in a shared cache, an age
/// of 0), it varies on a field the key does not hold, it sets a cookie in a shared cache, or
/// it answers an `Authorization` request of an unscoped shared cache without `public` or
/// `s-maxage`.
fn storable_for<B>(
    settings: &Settings,
    response: &Response<B>,
    authorized: bool,
) -> Option<Duration> {
    if !cacheable(response.status()) {
        return None;
    }
    let headers = response.headers();
    let cc = CacheControl::of(headers);
    let shared = !settings.private;
    if cc.no_store || cc.no_cache || (cc.private && shared) {
        return None;
    }
    if shared && headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    if shared && authorized && settings.scope.is_none() && !(cc.public || cc.s_maxage.is_some()) {
        return None;
    }
    let varies_elsewhere = headers
        .get_all(header::VARY)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("*").split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .any(|name| {
            name == "*"
                || !settings
                    .vary
                    .iter()
                    .any(|v| v.as_str().eq_ignore_ascii_case(name))
        });
    if varies_elsewhere {
        return None;
    }
    let seconds = if shared {
        cc.s_maxage.or(cc.max_age)
    } else {
        cc.max_age
    };
    let ttl = seconds.map_or(settings.default_ttl, Duration::from_secs);
    (!ttl.is_zero()).then_some(ttl)
}

fn set_status(headers: &mut HeaderMap, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(CACHE_STATUS, value);
    }
}

fn replay(hit: &CachedResponse, age: Duration) -> Response<Body> {
    let mut response = Response::new(full(hit.body().clone()));
    *response.status_mut() = hit.status();
    *response.headers_mut() = hit.headers().clone();
    let headers = response.headers_mut();
    headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
    let left = hit.ttl().saturating_sub(age).as_secs();
    set_status(headers, &format!("chassis; hit; ttl={left}"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_directives() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("Public, max-age=\"30\", s-maxage=bad"),
        );
        headers.append(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache=\"set-cookie\""),
        );
        let cc = CacheControl::of(&headers);
        assert_eq!(
            cc,
            CacheControl {
                public: true,
                no_cache: true,
                max_age: Some(30),
                s_maxage: Some(0),
                ..CacheControl::default()
            }
        );
        assert_eq!(CacheControl::of(&HeaderMap::new()), CacheControl::default());
    }
}
