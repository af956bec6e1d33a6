//! The service-token check of an inbound request (chassis_http::auth::RequireServiceTokenLayer):
//! `Authorization` header parsing, the JWT header (base64url, JSON, `alg`, `kid`, `crit`) and the
//! signature. Input: the `Authorization` header fields, one per line. Nobody can sign for the
//! test keys here, so no request may pass: every refusal is a 401, or a 400 for a malformed
//! header, with a challenge and the chassis JSON error body.
#![no_main]

use std::convert::Infallible;
use std::sync::LazyLock;

use bytes::Bytes;
use chassis_fuzz::test_verifier;
use chassis_http::auth::{RequireServiceTokenLayer, TokenVerifier};
use chassis_http::error::ErrorBody;
use futures_executor::block_on;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use libfuzzer_sys::fuzz_target;
use tower::{Layer, ServiceExt, service_fn};

static VERIFIER: LazyLock<TokenVerifier> = LazyLock::new(test_verifier);

fuzz_target!(|data: &[u8]| {
    let mut req = Request::new(());
    for line in data.split(|b| *b == b'\n') {
        let Ok(value) = http::HeaderValue::from_bytes(line) else {
            return;
        };
        req.headers_mut().append(AUTHORIZATION, value);
    }
    let single = (req.headers().get_all(AUTHORIZATION).iter().count() == 1)
        .then(|| req.headers()[AUTHORIZATION].to_str().ok())
        .flatten()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim().to_owned());

    let svc = RequireServiceTokenLayer::new(VERIFIER.clone()).layer(service_fn(
        |_req: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"handled"))))
        },
    ));
    let response = block_on(svc.oneshot(req)).expect("infallible");
    let status = response.status();
    // RFC 6750: 401 for a missing or invalid token, 400 (`invalid_request`) for a malformed
    // request: several Authorization fields, or a Bearer field without exactly one token.
    assert!(
        status == StatusCode::UNAUTHORIZED || status == StatusCode::BAD_REQUEST,
        "a token nobody signed got {status}"
    );
    assert!(response.headers().contains_key(WWW_AUTHENTICATE));
    let body = block_on(response.into_body().collect())
        .expect("an error body is readable")
        .to_bytes();
    let body: ErrorBody = serde_json::from_slice(&body).expect("the chassis JSON error body");
    assert!(!body.success);

    if let Some(token) = single {
        let err = block_on(VERIFIER.verify(&token)).expect_err("a token nobody signed verified");
        assert!(err.is_rejection(), "{err}");
    }
});
