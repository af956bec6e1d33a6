//! Service-token claims (chassis_http::auth::TokenVerifier): the input is the JWT payload, which
//! this target signs with the HS256 test key so every input reaches claim checking. Time
//! placeholders keep seeds valid as the clock moves: `NOW` becomes the current Unix time, `EXP`
//! the current time plus 300 s. An accepted token's identity must say what its claims say.
#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chassis_fuzz::{HS256_SECRET, test_verifier};
use chassis_http::auth::{AuthErrorKind, TokenVerifier};
use futures_executor::block_on;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

static VERIFIER: LazyLock<TokenVerifier> = LazyLock::new(test_verifier);
static KEY: LazyLock<EncodingKey> = LazyLock::new(|| EncodingKey::from_secret(HS256_SECRET));
const HEADER: &str = r#"{"alg":"HS256","kid":"hs","typ":"JWT"}"#;

fn replace(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut rest = data;
    while let Some(at) = rest.windows(from.len()).position(|w| w == from) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(to);
        rest = &rest[at + from.len()..];
    }
    out.extend_from_slice(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let payload = replace(data, b"NOW", now.to_string().as_bytes());
    let payload = replace(&payload, b"EXP", (now + 300).to_string().as_bytes());

    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(&payload)
    );
    let signature = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &KEY, Algorithm::HS256)
        .expect("HMAC signing");
    let token = format!("{signing_input}.{signature}");

    match block_on(VERIFIER.verify(&token)) {
        Ok(identity) => {
            let claims: Map<String, Value> =
                serde_json::from_slice(&payload).expect("accepted claims are a JSON object");
            let text = |k: &str| claims[k].as_str().expect("a string claim").to_owned();
            assert_eq!(text("iss"), "orders");
            assert_eq!(identity.issuer, "orders");
            assert_eq!(identity.subject, text("sub"));
            assert_eq!(identity.jti, text("jti"));
            assert!(!identity.subject.is_empty() && !identity.jti.is_empty());
            match &claims["aud"] {
                Value::String(a) => assert_eq!(a, "billing"),
                Value::Array(a) => assert!(a.iter().any(|v| v == "billing")),
                other => panic!("accepted aud {other}"),
            }
            let scopes: Vec<String> = claims
                .get("scope")
                .and_then(Value::as_str)
                .map(|s| s.split_ascii_whitespace().map(str::to_owned).collect())
                .unwrap_or_default();
            assert_eq!(identity.scopes, scopes);
            // Not expired beyond the 30 s leeway, not longer-lived than an hour.
            assert!(identity.expires_at + Duration::from_secs(30) > SystemTime::now());
        }
        Err(err) => assert!(
            matches!(
                err.kind(),
                AuthErrorKind::MalformedToken
                    | AuthErrorKind::MissingClaim { .. }
                    | AuthErrorKind::Expired
                    | AuthErrorKind::NotYetValid
                    | AuthErrorKind::LifetimeTooLong
                    | AuthErrorKind::UntrustedIssuer { .. }
                    | AuthErrorKind::WrongAudience
            ),
            "a correctly signed token failed with {err}"
        ),
    }
});
