//! A keyed rate limiter behind the guard layer's error responses: 429 with `Retry-After` and the IETF
//! `RateLimit-Policy` / `RateLimit` fields, per key.

use std::time::Duration;

use bytes::Bytes;
use chassis_core::resilience::keyed_rate_limit::{
    KeyedRateLimitConfig, KeyedRateLimitLayer, KeyedRateLimiter,
};
use chassis_http::layers::guard::{GuardLayer, LimitedBody};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tower::{ServiceBuilder, ServiceExt, service_fn};

/// What the rate-limited service is called with: the guard's body wrapper.
type Req = Request<LimitedBody<Empty<Bytes>>>;

fn api_key(req: &Req) -> String {
    req.headers()
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned()
}

fn request(key: &str) -> Request<Empty<Bytes>> {
    Request::builder()
        .header("x-api-key", key)
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn over_the_limit_is_a_429_with_retry_after_and_ratelimit_fields() {
    // Per API key: 1 call per 2 s, bursts of 2.
    let limiter = KeyedRateLimiter::new(
        KeyedRateLimitConfig::new("api-key")
            .rate(1)
            .period(Duration::from_secs(2))
            .burst(2),
    )
    .unwrap();
    let svc = ServiceBuilder::new()
        .layer(GuardLayer::errors_only())
        .layer(KeyedRateLimitLayer::new(limiter, api_key))
        .service(service_fn(|_req: Req| async {
            Ok::<_, std::convert::Infallible>(Response::new("ok".to_owned()))
        }));

    for _ in 0..2 {
        let res = svc.clone().oneshot(request("alice")).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = svc.clone().oneshot(request("alice")).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = res.headers();
    // The next permit is about 2 s away, the full burst about 4 s.
    assert_eq!(headers["retry-after"], "2");
    assert_eq!(headers["ratelimit-policy"], "\"api-key\";q=2;w=4");
    assert_eq!(headers["ratelimit"], "\"api-key\";r=0;t=4");

    // Bob's key has its own quota.
    let res = svc.oneshot(request("bob")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().get("ratelimit").is_none());
}
