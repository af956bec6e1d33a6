//! Service-token auth: one test per attack, each run against every key type (Ed25519, P-256,
//! RSA pinned to RS256 and to PS256), the RFC 6750 status/error pairs, the happy paths, RSA keys
//! from PEM and JWKS, JWKS refetch and rotation against a real JWKS server, the client layer's
//! caching, and a real axum server with a real client.

mod common;

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::routing::{get, post};
use axum::{Extension, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use chassis_http::auth::{
    AddServiceTokenLayer, Algorithm, AuthErrorKind, JwksKeySource, KeySet,
    RequireServiceTokenLayer, ServiceIdentity, ServiceTokenSource, SigningKey, TokenIssuer,
    TokenVerifier, VerificationKey,
};
use common::{LogBuffer, status_challenge_body};
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::AlgorithmParameters;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tower::{ServiceBuilder, ServiceExt, service_fn};

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn issuer_with(key: SigningKey) -> TokenIssuer {
    TokenIssuer::builder("orders")
        .signing_key(key)
        .build()
        .unwrap()
}

fn verifier_for(keys: KeySet) -> TokenVerifier {
    TokenVerifier::builder("billing")
        .trust_issuer("orders")
        .keys(keys)
        .build()
        .unwrap()
}

/// Calls a `RequireServiceTokenLayer`-protected echo service once and returns status, the
/// `WWW-Authenticate` header and the JSON (or text) body.
async fn call(
    layer: RequireServiceTokenLayer,
    method: Method,
    path: &str,
    authorization: Option<&str>,
) -> (StatusCode, Option<String>, Value) {
    let svc = ServiceBuilder::new()
        .layer(layer)
        .service(service_fn(|req: Request<Full<Bytes>>| async move {
            let id = req.extensions().get::<ServiceIdentity>().cloned();
            let body = match id {
                Some(id) => json!({ "sub": id.subject, "iss": id.issuer, "scopes": id.scopes, "jti": id.jti }),
                None => json!({ "error": "no identity" }),
            };
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body.to_string()))))
        }));
    let mut req = Request::builder().method(method).uri(path);
    if let Some(value) = authorization {
        req = req.header(AUTHORIZATION, value);
    }
    let response = svc
        .oneshot(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let (status, challenge, bytes) = status_challenge_body(response).await;
    (status, challenge, serde_json::from_slice(&bytes).unwrap())
}

async fn call_with_token(
    verifier: &TokenVerifier,
    token: &str,
) -> (StatusCode, Option<String>, Value) {
    call(
        RequireServiceTokenLayer::new(verifier.clone()),
        Method::GET,
        "/x",
        Some(&format!("Bearer {token}")),
    )
    .await
}

fn assert_invalid_token(result: &(StatusCode, Option<String>, Value)) {
    let (status, challenge, body) = result;
    assert_eq!(*status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        challenge
            .as_deref()
            .unwrap()
            .contains("error=\"invalid_token\""),
        "{challenge:?}"
    );
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "invalid_token", "{body}");
    assert!(body["error"]["details"]["reason"].is_string(), "{body}");
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(aud: &str) -> Value {
    let now = now_secs();
    json!({ "iss": "orders", "sub": "orders", "aud": aud, "iat": now, "nbf": now,
            "exp": now + 300, "jti": "0b7a4a7e-1b1c-4f3c-9d0e-6f1a2b3c4d5e", "scope": "invoices:write" })
}

// ---------------------------------------------------------------------------------------------
// Happy paths

#[tokio::test]
async fn eddsa_token_is_accepted_and_identity_reaches_the_handler() {
    let issuer = issuer_with(SigningKey::generate_ed25519().unwrap());
    let verifier = verifier_for(issuer.key_set());
    let token = issuer
        .issue("billing", &["invoices:write", "invoices:read"])
        .unwrap();
    let (status, _, body) = call(
        RequireServiceTokenLayer::new(verifier).require_scopes(&["invoices:write"]),
        Method::POST,
        "/invoices",
        Some(&format!("Bearer {}", token.as_str())),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["sub"], "orders");
    assert_eq!(body["iss"], "orders");
    assert_eq!(body["scopes"], json!(["invoices:write", "invoices:read"]));
    assert_eq!(body["jti"], token.jti);
}

#[tokio::test]
async fn es256_token_is_accepted() {
    let issuer = issuer_with(SigningKey::generate_es256().unwrap());
    assert_eq!(issuer.jwks().keys.len(), 1);
    let verifier = verifier_for(issuer.key_set());
    let token = issuer.issue("billing", &[]).unwrap();
    let header = jsonwebtoken::decode_header(token.as_str()).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    let (status, _, body) = call_with_token(&verifier, token.as_str()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn openssl_generated_pem_keys_sign_and_verify() {
    for (private, public, alg) in [
        (
            "test-only-ed25519.pem",
            "test-only-ed25519.pub.pem",
            Algorithm::EdDSA,
        ),
        (
            "test-only-p256.pem",
            "test-only-p256.pub.pem",
            Algorithm::ES256,
        ),
    ] {
        let key = SigningKey::from_pem_file(format!("{KEYS}/{private}")).unwrap();
        assert_eq!(key.algorithm(), alg);
        let public =
            VerificationKey::from_public_pem_file(key.kid(), format!("{KEYS}/{public}")).unwrap();
        assert_eq!(public.algorithm(), alg);
        let issuer = issuer_with(key);
        let verifier = verifier_for(KeySet::new().with(public));
        let token = issuer.issue("billing", &[]).unwrap();
        let identity = verifier.verify(token.as_str()).await.unwrap();
        assert_eq!(identity.subject, "orders");
    }
}

#[tokio::test]
async fn rs256_and_ps256_tokens_are_accepted() {
    let pem = format!("{FIXTURES}/test-only-rsa2048.pem");
    for (alg, key) in [
        (Algorithm::RS256, SigningKey::from_pem_file(&pem).unwrap()),
        (
            Algorithm::PS256,
            SigningKey::from_pem_with_algorithm(std::fs::read(&pem).unwrap(), Algorithm::PS256)
                .unwrap(),
        ),
    ] {
        assert_eq!(key.algorithm(), alg);
        let issuer = issuer_with(key.clone());
        // The verifier holds only the public key, from the SPKI and from the PKCS#1 PEM.
        for public in [
            "test-only-rsa2048.pub.pem",
            "test-only-rsa2048.pkcs1.pub.pem",
        ] {
            let public = VerificationKey::from_public_pem_with_algorithm(
                key.kid(),
                std::fs::read(format!("{FIXTURES}/{public}")).unwrap(),
                alg,
            )
            .unwrap();
            let verifier = verifier_for(KeySet::new().with(public));
            let token = issuer.issue("billing", &["invoices:write"]).unwrap();
            let header = jsonwebtoken::decode_header(token.as_str()).unwrap();
            assert_eq!(header.alg, alg);
            assert_eq!(header.kid.as_deref(), Some(key.kid()));
            let (status, _, body) = call_with_token(&verifier, token.as_str()).await;
            assert_eq!(status, StatusCode::OK, "{alg:?}: {body}");
            assert_eq!(body["scopes"], json!(["invoices:write"]));
        }
        // The issuer publishes the RSA key in its JWKS with its algorithm.
        let jwks: Value = serde_json::from_str(&issuer.jwks_json()).unwrap();
        assert_eq!(jwks["keys"][0]["kty"], "RSA");
        assert_eq!(jwks["keys"][0]["alg"], format!("{alg:?}"));
        assert!(jwks["keys"][0].get("d").is_none(), "no private part");
    }
}

#[test]
fn rsa_keys_below_2048_bits_are_refused() {
    for result in [
        SigningKey::from_pem_file(format!("{FIXTURES}/test-only-rsa1024.pem")).map(|_| ()),
        VerificationKey::from_public_pem_file("k", format!("{FIXTURES}/test-only-rsa1024.pub.pem"))
            .map(|_| ()),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err.kind(), AuthErrorKind::RsaKeySize { bits: 1024, .. }),
            "{err:?}"
        );
    }
    // In a JWKS the small key is skipped; the good one next to it loads.
    let small = VerificationKey::from_jwk(&small_rsa_jwk()).unwrap_err();
    assert!(matches!(
        small.kind(),
        AuthErrorKind::RsaKeySize { bits: 1024, .. }
    ));
    let good = key(KeyKind::Rs256).public_jwk().unwrap().clone();
    let jwks = json!({ "keys": [small_rsa_jwk(), good] });
    let set = KeySet::from_jwks_json(jwks.to_string().as_bytes()).unwrap();
    assert_eq!(set.len(), 1);
    assert!(set.get("small").is_none());
}

/// The 1024-bit fixture as a JWK (`kid: small`, no `alg`), as a careless provider would publish it.
fn small_rsa_jwk() -> jsonwebtoken::jwk::Jwk {
    let pem = std::fs::read(format!("{FIXTURES}/test-only-rsa1024.pub.pem")).unwrap();
    let decoding = jsonwebtoken::DecodingKey::from_rsa_pem(&pem).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_decoding_key(&decoding, None).unwrap();
    jwk.common.key_id = Some("small".into());
    jwk
}

#[tokio::test]
async fn hs256_works_only_when_configured_explicitly() {
    let secret = [42u8; 32];
    let issuer = issuer_with(SigningKey::hs256_shared_secret("shared-1", &secret).unwrap());
    assert!(issuer.jwks().keys.is_empty(), "secrets are never published");
    let verifier = verifier_for(
        KeySet::new().with(VerificationKey::hs256_shared_secret("shared-1", &secret).unwrap()),
    );
    let token = issuer.issue("billing", &[]).unwrap();
    assert!(verifier.verify(token.as_str()).await.is_ok());
}

// ---------------------------------------------------------------------------------------------
// Attacks: every one against each key type (Ed25519, P-256, RSA pinned to RS256, RSA pinned to
// PS256).

/// The key types the attack tests run against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    Ed25519,
    Es256,
    Rs256,
    Ps256,
}

const KEY_KINDS: [KeyKind; 4] = [
    KeyKind::Ed25519,
    KeyKind::Es256,
    KeyKind::Rs256,
    KeyKind::Ps256,
];

/// A signing key of `kind`: generated for Ed25519 and P-256; for RSA one of the committed
/// fixtures (`second` picks an unrelated one), since RSA generation is slow in debug builds.
fn key_of(kind: KeyKind, second: bool) -> SigningKey {
    let rsa = |alg| {
        let file = if second {
            "test-only-rsa2048-b.pem"
        } else {
            "test-only-rsa2048.pem"
        };
        SigningKey::from_pem_file(format!("{FIXTURES}/{file}"))
            .unwrap()
            .with_algorithm(alg)
            .unwrap()
    };
    match kind {
        KeyKind::Ed25519 => SigningKey::generate_ed25519().unwrap(),
        KeyKind::Es256 => SigningKey::generate_es256().unwrap(),
        KeyKind::Rs256 => rsa(Algorithm::RS256),
        KeyKind::Ps256 => rsa(Algorithm::PS256),
    }
}

fn key(kind: KeyKind) -> SigningKey {
    key_of(kind, false)
}

#[tokio::test]
async fn alg_none_is_rejected() {
    for kind in KEY_KINDS {
        let key = key(kind);
        let verifier = verifier_for(issuer_with(key.clone()).key_set());
        let header = json!({ "alg": "none", "typ": "JWT", "kid": key.kid() });
        for token in [
            format!("{}.{}.", b64(&header), b64(&claims("billing"))),
            format!("{}.{}.c2ln", b64(&header), b64(&claims("billing"))),
        ] {
            let result = call_with_token(&verifier, &token).await;
            assert_invalid_token(&result);
            assert_eq!(
                result.2["error"]["details"]["reason"], "malformed_token",
                "{kind:?}"
            );
        }
    }
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_rejected() {
    for kind in KEY_KINDS {
        let key = key(kind);
        let verifier = verifier_for(issuer_with(key.clone()).key_set());
        let public_pem = key.public_key_pem().unwrap();
        let jwk = key.public_jwk().unwrap();
        // The raw public key material an attacker would try as the HMAC secret.
        let raw = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(p) => URL_SAFE_NO_PAD.decode(&p.x).unwrap(),
            AlgorithmParameters::EllipticCurve(p) => URL_SAFE_NO_PAD.decode(&p.x).unwrap(),
            AlgorithmParameters::RSA(p) => URL_SAFE_NO_PAD.decode(&p.n).unwrap(),
            other => panic!("unexpected {other:?}"),
        };
        let jwk_json = serde_json::to_vec(jwk).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(key.kid().to_owned());
        for secret in [public_pem.as_bytes(), &raw[..], &jwk_json[..]] {
            let forged = jsonwebtoken::encode(
                &header,
                &claims("billing"),
                &EncodingKey::from_secret(secret),
            )
            .unwrap();
            let err = verifier.verify(&forged).await.unwrap_err();
            assert_eq!(
                err.kind(),
                &AuthErrorKind::AlgorithmMismatch {
                    expected: key.algorithm(),
                    found: Algorithm::HS256
                },
                "{kind:?}"
            );
            assert_invalid_token(&call_with_token(&verifier, &forged).await);
        }
    }
}

/// A token naming a key's kid but another algorithm is refused before any signature check,
/// even when it is validly signed: an RSA key pinned to RS256 with an ES256 header (signed by
/// the attacker's P-256 key), a PS256-pinned key with an RS256 header (signed by the right RSA
/// key!), and every other pairing.
#[tokio::test]
async fn a_header_alg_other_than_the_keys_is_rejected() {
    let signers: Vec<SigningKey> = KEY_KINDS.iter().map(|k| key(*k)).collect();
    for kind in KEY_KINDS {
        let key = key(kind);
        let verifier = verifier_for(issuer_with(key.clone()).key_set());
        for signer in &signers {
            if signer.algorithm() == key.algorithm() {
                continue;
            }
            // Same kid as the verifier's key; header alg and signature from `signer`.
            let forged = signer.clone().with_kid(key.kid()).unwrap();
            let token = forged.sign_claims(&claims("billing")).unwrap();
            let err = verifier.verify(&token).await.unwrap_err();
            assert_eq!(
                err.kind(),
                &AuthErrorKind::AlgorithmMismatch {
                    expected: key.algorithm(),
                    found: signer.algorithm()
                },
                "{kind:?} key, {:?} header",
                signer.algorithm()
            );
            let result = call_with_token(&verifier, &token).await;
            assert_invalid_token(&result);
            assert_eq!(result.2["error"]["details"]["reason"], "algorithm_mismatch");
        }
    }
}

/// A token for `billing` without scopes, issued at `at`.
fn issued_at(issuer: &TokenIssuer, at: SystemTime) -> String {
    issuer
        .issue_at("billing", &[], at)
        .unwrap()
        .as_str()
        .to_owned()
}

/// For every key kind: the token `mint` makes with that kind's key (and an issuer with it
/// that the verifier trusts) is answered 401 `invalid_token` with `reason`.
async fn rejected_with_every_key_kind(
    reason: &str,
    mint: impl Fn(&TokenIssuer, &SigningKey) -> String,
) {
    for kind in KEY_KINDS {
        let key = key(kind);
        let issuer = issuer_with(key.clone());
        let verifier = verifier_for(issuer.key_set());
        let token = mint(&issuer, &key);
        let result = call_with_token(&verifier, &token).await;
        assert_invalid_token(&result);
        assert_eq!(result.2["error"]["details"]["reason"], reason, "{kind:?}");
    }
}

#[tokio::test]
async fn expired_token_is_rejected() {
    rejected_with_every_key_kind("token_expired", |issuer, _| {
        issued_at(issuer, SystemTime::now() - Duration::from_secs(600))
    })
    .await;
}

#[tokio::test]
async fn not_yet_valid_token_is_rejected() {
    rejected_with_every_key_kind("token_not_yet_valid", |issuer, _| {
        issued_at(issuer, SystemTime::now() + Duration::from_secs(300))
    })
    .await;
}

/// A token minted for another service is an invalid token here: 401 `invalid_token`
/// (RFC 6750 §3.1), not 403.
#[tokio::test]
async fn wrong_audience_is_an_invalid_token() {
    rejected_with_every_key_kind("wrong_audience", |issuer, _| {
        let token = issuer.issue("shipping", &["invoices:write"]).unwrap();
        token.as_str().to_owned()
    })
    .await;
}

#[tokio::test]
async fn untrusted_issuer_is_rejected_even_with_a_known_key() {
    rejected_with_every_key_kind("untrusted_issuer", |_, key| {
        let mallory = TokenIssuer::builder("orders")
            .issuer("mallory")
            .signing_key(key.clone())
            .build()
            .unwrap();
        mallory.issue("billing", &[]).unwrap().as_str().to_owned()
    })
    .await;
}

#[tokio::test]
async fn tampered_payload_is_rejected() {
    for kind in KEY_KINDS {
        let issuer = issuer_with(key(kind));
        let verifier = verifier_for(issuer.key_set());
        let token = issuer.issue("billing", &["invoices:read"]).unwrap();
        let parts: Vec<&str> = token.as_str().split('.').collect();
        let mut payload: Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        payload["scope"] = json!("invoices:read invoices:write admin");
        let tampered = format!("{}.{}.{}", parts[0], b64(&payload), parts[2]);
        let err = verifier.verify(&tampered).await.unwrap_err();
        assert_eq!(err.kind(), &AuthErrorKind::InvalidSignature, "{kind:?}");
        assert_invalid_token(&call_with_token(&verifier, &tampered).await);
    }
}

#[tokio::test]
async fn unknown_kid_is_rejected_with_a_static_key_set() {
    for kind in KEY_KINDS {
        let key = key(kind);
        let verifier = verifier_for(issuer_with(key.clone()).key_set());
        let stranger = issuer_with(key_of(kind, true));
        let token = stranger.issue("billing", &[]).unwrap();
        let err = verifier.verify(token.as_str()).await.unwrap_err();
        assert!(
            matches!(err.kind(), AuthErrorKind::UnknownKey { kid: Some(_) }),
            "{kind:?}: {err:?}"
        );
        assert_invalid_token(&call_with_token(&verifier, token.as_str()).await);
        // The same kid on another key of the same type: the signature gives it away.
        let impostor = issuer_with(key_of(kind, true).with_kid(key.kid()).unwrap());
        let token = impostor.issue("billing", &[]).unwrap();
        assert_eq!(
            verifier.verify(token.as_str()).await.unwrap_err().kind(),
            &AuthErrorKind::InvalidSignature,
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn missing_scope_is_forbidden() {
    for kind in KEY_KINDS {
        let issuer = issuer_with(key(kind));
        let verifier = verifier_for(issuer.key_set());
        let token = issuer.issue("billing", &["invoices:read"]).unwrap();
        let layer = RequireServiceTokenLayer::new(verifier)
            .require_scopes(&["invoices:read"])
            .require_scopes_for_method(Method::POST, "/invoices", &["invoices:write"]);
        let bearer = format!("Bearer {}", token.as_str());
        // GET needs only invoices:read.
        let (status, _, _) = call(layer.clone(), Method::GET, "/invoices/7", Some(&bearer)).await;
        assert_eq!(status, StatusCode::OK, "{kind:?}");
        // POST below /invoices also needs invoices:write.
        let (status, challenge, body) =
            call(layer, Method::POST, "/invoices/7", Some(&bearer)).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let challenge = challenge.unwrap();
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{challenge}"
        );
        assert!(
            challenge.contains("scope=\"invoices:read invoices:write\""),
            "{challenge}"
        );
        assert_eq!(body["error"]["code"], "insufficient_scope");
        assert_eq!(
            body["error"]["details"]["missingScopes"],
            json!(["invoices:write"])
        );
    }
}

#[tokio::test]
async fn malformed_authorization_headers_are_rejected() {
    for kind in KEY_KINDS {
        let issuer = issuer_with(key(kind));
        let verifier = verifier_for(issuer.key_set());
        let layer = RequireServiceTokenLayer::new(verifier);
        let valid = issuer.issue("billing", &[]).unwrap();
        let two_segments = valid.as_str().rsplit_once('.').unwrap().0.to_owned();

        // No header at all, or another scheme: a bare challenge, no error code (RFC 6750 §3.1).
        for value in [
            None,
            Some(valid.as_str().to_owned()),
            Some("Basic dXNlcjpwYXNz".to_owned()),
        ] {
            let (status, challenge, body) =
                call(layer.clone(), Method::GET, "/", value.as_deref()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{value:?}");
            assert_eq!(challenge.as_deref(), Some("Bearer realm=\"billing\""));
            assert_eq!(body["error"]["code"], "missing_token");
        }
        // "Bearer" with nothing usable after it: a malformed request, 400 (RFC 6750 §3.1).
        let (status, challenge, body) =
            call(layer.clone(), Method::GET, "/", Some("Bearer ")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(challenge.unwrap().contains("error=\"invalid_request\""));
        assert_eq!(body["error"]["code"], "invalid_request");
        // Garbage, two segments, four segments, bad base64, JSON that is not a header.
        for token in [
            "garbage".to_owned(),
            two_segments,
            format!("{}.x", valid.as_str()),
            "!!!.???.###".to_owned(),
            format!("{}.{}.sig", b64(&json!([1, 2])), b64(&claims("billing"))),
        ] {
            let result = call(
                layer.clone(),
                Method::GET,
                "/",
                Some(&format!("Bearer {token}")),
            )
            .await;
            assert_invalid_token(&result);
        }
    }
}

#[tokio::test]
async fn missing_required_claims_are_rejected() {
    for kind in KEY_KINDS {
        let key = key(kind);
        let verifier = verifier_for(issuer_with(key.clone()).key_set());
        for claim in ["iss", "sub", "aud", "exp", "iat", "jti"] {
            let mut c = claims("billing");
            c.as_object_mut().unwrap().remove(claim);
            let token = key.sign_claims(&c).unwrap();
            let err = verifier.verify(&token).await.unwrap_err();
            assert_eq!(
                err.kind(),
                &AuthErrorKind::MissingClaim { claim },
                "{kind:?} {claim}"
            );
        }
        // A token valid for far longer than a service token should be is refused too.
        let mut c = claims("billing");
        c["exp"] = json!(now_secs() + 86_400);
        let token = key.sign_claims(&c).unwrap();
        assert_eq!(
            verifier.verify(&token).await.unwrap_err().kind(),
            &AuthErrorKind::LifetimeTooLong
        );
        // The untouched claims verify, so the failures above are the removed claims' doing.
        let token = key.sign_claims(&claims("billing")).unwrap();
        assert!(verifier.verify(&token).await.is_ok(), "{kind:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 6750 §3.1: status, `WWW-Authenticate` error and body code agree for every failure

/// Calls the echo service with these `Authorization` header values (several on purpose).
async fn call_with_headers(
    layer: RequireServiceTokenLayer,
    values: &[&str],
) -> (StatusCode, Option<String>, Value) {
    let svc = ServiceBuilder::new().layer(layer).service(service_fn(
        |_req: Request<Full<Bytes>>| async move {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}"))))
        },
    ));
    let mut req = Request::get("/x");
    for value in values {
        req = req.header(AUTHORIZATION, *value);
    }
    let response = svc
        .oneshot(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let (status, challenge, bytes) = status_challenge_body(response).await;
    (status, challenge, serde_json::from_slice(&bytes).unwrap())
}

/// The `error="…"` of a challenge, if it has one.
fn challenge_error(challenge: &str) -> Option<&str> {
    let start = challenge.find("error=\"")? + 7;
    challenge[start..].split('"').next()
}

/// A case, the `Authorization` values sent, and the status, challenge error, body code and
/// `details.reason` expected.
type Rfc6750Case<'a> = (
    &'a str,
    Vec<String>,
    StatusCode,
    Option<&'a str>,
    &'a str,
    &'a str,
);

#[tokio::test]
async fn rfc6750_status_and_error_codes_agree() {
    let key = key(KeyKind::Rs256);
    let issuer = issuer_with(key.clone());
    let layer = RequireServiceTokenLayer::new(verifier_for(issuer.key_set()))
        .require_scopes_for("/x", &["invoices:write"]);
    let bearer = |t: &str| format!("Bearer {t}");
    let good = issuer.issue("billing", &["invoices:write"]).unwrap();
    let no_scope = issuer.issue("billing", &[]).unwrap();
    let other_audience = issuer.issue("shipping", &["invoices:write"]).unwrap();
    let expired = issuer
        .issue_at(
            "billing",
            &["invoices:write"],
            SystemTime::now() - Duration::from_secs(600),
        )
        .unwrap();
    let mallory = TokenIssuer::builder("orders")
        .issuer("mallory")
        .signing_key(key.clone())
        .build()
        .unwrap()
        .issue("billing", &["invoices:write"])
        .unwrap();
    let stranger = issuer_with(key_of(KeyKind::Rs256, true))
        .issue("billing", &["invoices:write"])
        .unwrap();
    let mut bad_signature = good.as_str().to_owned();
    let i = bad_signature.len() - 10;
    let flipped = if bad_signature.as_bytes()[i] == b'A' {
        "B"
    } else {
        "A"
    };
    bad_signature.replace_range(i..=i, flipped);

    // (case, Authorization values, status, challenge error, body code, details.reason)
    let cases: Vec<Rfc6750Case<'_>> = vec![
        (
            "valid",
            vec![bearer(good.as_str())],
            StatusCode::OK,
            None,
            "",
            "",
        ),
        (
            "no credentials",
            vec![],
            StatusCode::UNAUTHORIZED,
            None,
            "missing_token",
            "missing_token",
        ),
        (
            "two Authorization headers",
            vec![bearer(good.as_str()), bearer(good.as_str())],
            StatusCode::BAD_REQUEST,
            Some("invalid_request"),
            "invalid_request",
            "malformed_authorization",
        ),
        (
            "Bearer without a token",
            vec!["Bearer".into()],
            StatusCode::BAD_REQUEST,
            Some("invalid_request"),
            "invalid_request",
            "malformed_authorization",
        ),
        (
            "two words after Bearer",
            vec!["Bearer a b".into()],
            StatusCode::BAD_REQUEST,
            Some("invalid_request"),
            "invalid_request",
            "malformed_authorization",
        ),
        (
            "malformed token",
            vec![bearer("a.b")],
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
            "invalid_token",
            "malformed_token",
        ),
        (
            "expired",
            vec![bearer(expired.as_str())],
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
            "invalid_token",
            "token_expired",
        ),
        (
            "wrong audience",
            vec![bearer(other_audience.as_str())],
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
            "invalid_token",
            "wrong_audience",
        ),
        (
            "wrong issuer",
            vec![bearer(mallory.as_str())],
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
            "invalid_token",
            "untrusted_issuer",
        ),
        (
            "bad signature",
            vec![bearer(&bad_signature)],
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
            "invalid_token",
            "invalid_signature",
        ),
        (
            "unknown kid",
            vec![bearer(stranger.as_str())],
            StatusCode::UNAUTHORIZED,
            Some("invalid_token"),
            "invalid_token",
            "unknown_key",
        ),
        (
            "insufficient scope",
            vec![bearer(no_scope.as_str())],
            StatusCode::FORBIDDEN,
            Some("insufficient_scope"),
            "insufficient_scope",
            "insufficient_scope",
        ),
    ];
    for (case, values, status, error, code, reason) in cases {
        let values: Vec<&str> = values.iter().map(String::as_str).collect();
        let (got_status, challenge, body) = call_with_headers(layer.clone(), &values).await;
        assert_eq!(got_status, status, "{case}: {body}");
        if status == StatusCode::OK {
            assert!(challenge.is_none(), "{case}");
            continue;
        }
        let challenge = challenge.unwrap_or_else(|| panic!("{case}: no WWW-Authenticate"));
        assert!(
            challenge.starts_with("Bearer realm=\"billing\""),
            "{case}: {challenge}"
        );
        assert_eq!(challenge_error(&challenge), error, "{case}: {challenge}");
        assert_eq!(body["error"]["code"], code, "{case}: {body}");
        assert_eq!(body["error"]["details"]["reason"], reason, "{case}: {body}");
        // The pairs themselves: 401 ⇔ invalid_token (or no code without credentials),
        // 403 ⇔ insufficient_scope, 400 ⇔ invalid_request.
        let expected_error = match got_status {
            StatusCode::UNAUTHORIZED if values.is_empty() => None,
            StatusCode::UNAUTHORIZED => Some("invalid_token"),
            StatusCode::FORBIDDEN => Some("insufficient_scope"),
            StatusCode::BAD_REQUEST => Some("invalid_request"),
            other => panic!("{case}: {other}"),
        };
        assert_eq!(challenge_error(&challenge), expected_error, "{case}");
        assert_eq!(
            body["error"]["code"],
            expected_error.unwrap_or("missing_token"),
            "{case}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// JWKS: file, URL, refetch on unknown kid (rate-limited), rotation

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

/// A verifier for audience `billing` trusting issuer `orders`, with the keys of `source`.
fn jwks_verifier(source: JwksKeySource) -> TokenVerifier {
    TokenVerifier::builder("billing")
        .trust_issuer("orders")
        .jwks(source)
        .build()
        .unwrap()
}

/// Serves `issuer`'s JWKS at `path` on loopback: its URL, and the number of fetches so far.
async fn counted_jwks(issuer: &TokenIssuer, path: &'static str) -> (String, Arc<AtomicUsize>) {
    let fetches = Arc::new(AtomicUsize::new(0));
    let counter = fetches.clone();
    let jwks = issuer.jwks_service();
    let router = Router::new().route_service(
        path,
        service_fn(move |req: Request<axum::body::Body>| {
            counter.fetch_add(1, Ordering::SeqCst);
            jwks.clone().oneshot(req)
        }),
    );
    let addr = serve(router).await;
    (format!("http://{addr}{path}"), fetches)
}

#[tokio::test]
async fn jwks_from_a_file() {
    let issuer = issuer_with(SigningKey::generate_ed25519().unwrap());
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(issuer.jwks_json().as_bytes()).unwrap();
    let source = JwksKeySource::from_file(file.path()).load().await.unwrap();
    assert_eq!(source.keys().len(), 1);
    let verifier = jwks_verifier(source);
    let token = issuer.issue("billing", &[]).unwrap();
    assert!(verifier.verify(token.as_str()).await.is_ok());
    assert!(
        JwksKeySource::from_file("/nonexistent/jwks.json")
            .load()
            .await
            .is_err(),
        "a missing key set fails at startup"
    );
}

/// An identity provider's JWKS as such providers publish it: RSA keys as `kty: RSA` with `n` and
/// `e`, one without `alg` (pinned to RS256), one with `alg: PS256`, next to a P-256 key and a
/// 1024-bit RSA key that is skipped; served over HTTP and read by `JwksKeySource`.
#[tokio::test]
async fn jwks_with_rsa_keys_from_an_identity_provider() {
    let rs = key(KeyKind::Rs256).with_kid("rsa-no-alg").unwrap();
    let ps = key_of(KeyKind::Ps256, true).with_kid("rsa-ps256").unwrap();
    let es = SigningKey::generate_es256().unwrap();
    let mut rs_jwk = serde_json::to_value(rs.public_jwk().unwrap()).unwrap();
    rs_jwk.as_object_mut().unwrap().remove("alg");
    let document = json!({ "keys": [
        rs_jwk,
        ps.public_jwk().unwrap(),
        es.public_jwk().unwrap(),
        small_rsa_jwk(),
    ]});
    let router = Router::new().route(
        "/certs",
        get(move || {
            let body = document.to_string();
            async move { ([("content-type", "application/json")], body) }
        }),
    );
    let addr = serve(router).await;
    let source = JwksKeySource::from_url(&format!("http://{addr}/certs"))
        .unwrap()
        .load()
        .await
        .unwrap();
    let keys = source.keys();
    assert_eq!(keys.len(), 3, "the 1024-bit key is skipped");
    assert_eq!(
        keys.get("rsa-no-alg").unwrap().algorithm(),
        Algorithm::RS256
    );
    assert_eq!(keys.get("rsa-ps256").unwrap().algorithm(), Algorithm::PS256);
    let verifier = jwks_verifier(source);
    for signer in [&rs, &ps, &es] {
        let token = issuer_with(signer.clone()).issue("billing", &[]).unwrap();
        let identity = verifier.verify(token.as_str()).await;
        assert!(identity.is_ok(), "{:?}: {identity:?}", signer.algorithm());
    }
    // The PS256 key's kid on an RS256 signature by the same RSA key: refused.
    let confused = ps.clone().with_algorithm(Algorithm::RS256).unwrap();
    let token = issuer_with(confused).issue("billing", &[]).unwrap();
    assert_eq!(
        verifier.verify(token.as_str()).await.unwrap_err().kind(),
        &AuthErrorKind::AlgorithmMismatch {
            expected: Algorithm::PS256,
            found: Algorithm::RS256
        }
    );
    // The RS256 key's kid on an ES256 signature (the attacker's P-256 key): refused.
    let forged = es.clone().with_kid("rsa-no-alg").unwrap();
    let token = issuer_with(forged).issue("billing", &[]).unwrap();
    assert_eq!(
        verifier.verify(token.as_str()).await.unwrap_err().kind(),
        &AuthErrorKind::AlgorithmMismatch {
            expected: Algorithm::RS256,
            found: Algorithm::ES256
        }
    );
}

#[tokio::test]
async fn jwks_url_refetches_once_on_unknown_kid_and_follows_rotation() {
    let issuer = issuer_with(SigningKey::generate_ed25519().unwrap());
    let (url, fetches) = counted_jwks(&issuer, "/.well-known/jwks.json").await;
    let min_refetch = Duration::from_secs(2);
    let source = JwksKeySource::from_url(&url)
        .unwrap()
        .min_refetch_interval(min_refetch)
        .load()
        .await
        .unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), 1);
    let verifier = jwks_verifier(source);

    // Known key: no fetch.
    let token = issuer.issue("billing", &[]).unwrap();
    assert!(verifier.verify(token.as_str()).await.is_ok());
    assert_eq!(fetches.load(Ordering::SeqCst), 1);

    // Rotation: the issuer switches keys; the first token with the new kid triggers a refetch
    // (once the minimum interval since the last fetch has passed) and is accepted.
    issuer.rotate(SigningKey::generate_es256().unwrap());
    tokio::time::sleep(min_refetch + Duration::from_millis(100)).await;
    let rotated = issuer.issue("billing", &[]).unwrap();
    assert!(verifier.verify(rotated.as_str()).await.is_ok());
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    // Tokens from before the rotation still verify: the old key stays published.
    assert!(verifier.verify(token.as_str()).await.is_ok());

    // A flood of unknown kids right after a fetch causes no further fetch, and is rejected.
    let stranger = issuer_with(SigningKey::generate_ed25519().unwrap());
    let bogus = stranger.issue("billing", &[]).unwrap();
    let results =
        futures_util::future::join_all((0..10).map(|_| verifier.verify(bogus.as_str()))).await;
    assert!(results.iter().all(|r| matches!(
        r.as_ref().unwrap_err().kind(),
        AuthErrorKind::UnknownKey { .. }
    )));
    assert_eq!(fetches.load(Ordering::SeqCst), 2, "refetch is rate-limited");
    // Through the layer, the refetch path answers 401 the same way.
    assert_invalid_token(&call_with_token(&verifier, bogus.as_str()).await);
}

#[tokio::test]
async fn jwks_refreshes_periodically_in_the_background() {
    let issuer = issuer_with(SigningKey::generate_ed25519().unwrap());
    let (url, fetches) = counted_jwks(&issuer, "/jwks").await;
    let refresh = Duration::from_millis(200);
    let source = JwksKeySource::from_url(&url)
        .unwrap()
        .refresh_interval(refresh)
        .min_refetch_interval(refresh)
        .load()
        .await
        .unwrap();
    let verifier = jwks_verifier(source.clone());
    let token = issuer.issue("billing", &[]).unwrap();
    issuer.rotate(SigningKey::generate_es256().unwrap());
    let new_kid = issuer.active_kid();
    assert!(source.keys().get(&new_kid).is_none());

    // Once the keys are older than the refresh interval, a verification (with a known key, so
    // no unknown-kid refetch) starts a background refresh; it does not wait for it.
    tokio::time::sleep(refresh + Duration::from_millis(50)).await;
    assert!(verifier.verify(token.as_str()).await.is_ok());
    tokio::time::timeout(Duration::from_secs(5), async {
        while source.keys().get(&new_kid).is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the background refresh loaded the rotated key");
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
}

// ---------------------------------------------------------------------------------------------
// Client layer

#[tokio::test(start_paused = true)]
async fn client_layer_caches_and_renews_before_expiry() {
    let issuer = issuer_with(SigningKey::generate_ed25519().unwrap());
    let verifier = verifier_for(issuer.key_set());
    let seen = Arc::new(Mutex::new(Vec::<HeaderValue>::new()));
    let recorder = seen.clone();
    let svc = ServiceBuilder::new()
        .layer(
            AddServiceTokenLayer::for_audience(issuer.clone(), "billing", &["invoices:write"])
                .unwrap(),
        )
        .service(service_fn(move |req: Request<()>| {
            recorder
                .lock()
                .unwrap()
                .push(req.headers()[AUTHORIZATION].clone());
            async { Ok::<_, Infallible>(()) }
        }));
    let ttl = issuer.ttl();
    svc.clone().oneshot(Request::new(())).await.unwrap();
    tokio::time::advance(ttl.mul_f64(0.5)).await;
    svc.clone().oneshot(Request::new(())).await.unwrap();
    tokio::time::advance(ttl.mul_f64(0.29)).await; // 79% of the TTL: still cached
    svc.clone().oneshot(Request::new(())).await.unwrap();
    tokio::time::advance(ttl.mul_f64(0.02)).await; // 81%: renewed
    svc.clone().oneshot(Request::new(())).await.unwrap();
    // A request with its own Authorization header keeps it.
    let mut own = Request::new(());
    own.headers_mut()
        .insert(AUTHORIZATION, HeaderValue::from_static("Bearer mine"));
    svc.clone().oneshot(own).await.unwrap();

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5);
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[1], seen[2]);
    assert_ne!(seen[2], seen[3], "renewed at 80% of the TTL");
    assert_eq!(seen[4], "Bearer mine");
    assert!(seen[0].is_sensitive());
    for value in &seen[..4] {
        let token = value.to_str().unwrap().strip_prefix("Bearer ").unwrap();
        let id = verifier.verify(token).await.unwrap();
        assert!(id.has_scope("invoices:write"));
    }
}

#[test]
fn token_source_rejects_bad_configuration() {
    let issuer = issuer_with(SigningKey::generate_ed25519().unwrap());
    assert!(ServiceTokenSource::new(issuer.clone(), "", &[]).is_err());
    assert!(ServiceTokenSource::new(issuer, "billing", &["two words"]).is_err());
}

// ---------------------------------------------------------------------------------------------
// Real server, real client, under axum; and nothing secret in the logs

#[tokio::test]
async fn real_server_with_axum_and_real_client() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Callsites another test thread registered while this subscriber was being set can keep a
    // stale "disabled" interest (tracing caches it process-wide): recompute it now.
    tracing::callsite::rebuild_interest_cache();

    let issuer = issuer_with(SigningKey::generate_ed25519().unwrap());
    let verifier = verifier_for(issuer.key_set());
    let auth = RequireServiceTokenLayer::new(verifier);
    let router = Router::new()
        .route(
            "/invoices",
            post(|Extension(id): Extension<ServiceIdentity>| async move {
                format!("created by {}", id.subject)
            }),
        )
        .route_layer(auth.clone().require_scopes(&["invoices:write"]))
        .merge(
            Router::new()
                .route(
                    "/whoami",
                    get(|Extension(id): Extension<ServiceIdentity>| async move { id.subject }),
                )
                .route_layer(auth),
        )
        .route_service("/.well-known/jwks.json", issuer.jwks_service());
    let addr = serve(router).await;

    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        .layer(
            AddServiceTokenLayer::for_audience(issuer.clone(), "billing", &["invoices:read"])
                .unwrap(),
        )
        .service(http.clone());
    let send = |method: Method, path: &str| {
        Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"))
            .body(Full::default())
            .unwrap()
    };

    let response = client
        .clone()
        .oneshot(send(Method::GET, "/whoami"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"orders");

    // The token grants only invoices:read: POST /invoices is forbidden.
    let response = client
        .clone()
        .oneshot(send(Method::POST, "/invoices"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    // A client with the right scope gets in.
    let writer_client = ServiceBuilder::new()
        .layer(
            AddServiceTokenLayer::for_audience(issuer.clone(), "billing", &["invoices:write"])
                .unwrap(),
        )
        .service(http.clone());
    let response = writer_client
        .oneshot(send(Method::POST, "/invoices"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // No token at all: 401 with the chassis JSON error body and a challenge.
    let response = http.request(send(Method::GET, "/whoami")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()[WWW_AUTHENTICATE],
        "Bearer realm=\"billing\""
    );
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["success"], false);
    assert_eq!(body["error"]["code"], "missing_token");
    assert!(body.get("traceId").is_some());

    // The JWKS endpoint serves the public key.
    let response = http
        .request(send(Method::GET, "/.well-known/jwks.json"))
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/jwk-set+json"
    );
    let jwks: Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(jwks["keys"][0]["kid"], issuer.active_kid());
    assert!(jwks["keys"][0].get("d").is_none(), "no private part");

    // An expired token is logged with its reason, but the token itself never is.
    let expired = issuer
        .issue_at("billing", &[], SystemTime::now() - Duration::from_secs(900))
        .unwrap();
    let mut req = send(Method::GET, "/whoami");
    req.headers_mut().insert(
        AUTHORIZATION,
        format!("Bearer {}", expired.as_str()).parse().unwrap(),
    );
    let response = http.request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let signature = expired.as_str().rsplit('.').next().unwrap().to_owned();
    // The server task logs through the default subscriber only if it runs on this thread;
    // check the verifier directly as well so the assertion always has log lines to inspect.
    let layer = RequireServiceTokenLayer::new(verifier_for(issuer.key_set()));
    let _ = call(
        layer,
        Method::GET,
        "/",
        Some(&format!("Bearer {}", expired.as_str())),
    )
    .await;
    let text = logs.text();
    assert!(text.contains("token expired"), "{text}");
    assert!(!text.contains(&signature), "a token leaked into the logs");
    assert!(!text.contains(expired.as_str()));
}
