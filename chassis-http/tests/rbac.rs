//! End-user tokens and role-based access (`chassis_http::auth::user`): an identity provider
//! signing RS256 user tokens, its JWKS read from a file, roles mapped to permissions, routes
//! guarded per permission under axum. Every role/permission combination, a token without roles,
//! an edited roles claim, an expired token, MicroProfile's `groups` claim and a handler-level
//! ownership check.

mod common;

use std::convert::Infallible;
use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::Path;
use axum::routing::get;
use axum::{Extension, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chassis_http::ApiError;
use chassis_http::auth::user::{
    RbacConfig, RequirePermissionLayer, RequireUserTokenLayer, UserPrincipal,
};
use chassis_http::auth::{AuthErrorKind, JwksKeySource, SigningKey, TokenVerifier};
use common::status_challenge_body;
use http::header::AUTHORIZATION;
use http::{Method, Request, StatusCode};
use serde_json::{Value, json};
use tempfile::NamedTempFile;
use tower::ServiceExt;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const IDP: &str = "https://idp.test/realms/shop";
const AUDIENCE: &str = "shop-api";

/// The identity provider: an RSA key (RS256, as providers publish them) and its JWKS in a file.
struct Idp {
    key: SigningKey,
    jwks: NamedTempFile,
}

fn idp() -> Idp {
    let key = SigningKey::from_pem_file(format!("{FIXTURES}/test-only-rsa2048.pem"))
        .unwrap()
        .with_kid("idp-2026")
        .unwrap();
    let mut jwks = NamedTempFile::new().unwrap();
    let document = json!({ "keys": [key.public_jwk().unwrap()] });
    jwks.write_all(document.to_string().as_bytes()).unwrap();
    Idp { key, jwks }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Idp {
    /// A user token for `sub` with `extra` claims (e.g. the roles), valid for 5 minutes.
    fn token(&self, sub: &str, extra: Value) -> String {
        let now = now();
        let mut claims = json!({ "iss": IDP, "aud": AUDIENCE, "sub": sub, "iat": now,
                                 "exp": now + 300, "azp": "shop-web" });
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        self.key.sign_claims(&claims).unwrap()
    }

    async fn verifier(&self) -> TokenVerifier {
        let source = JwksKeySource::from_file(self.jwks.path())
            .load()
            .await
            .unwrap();
        TokenVerifier::builder(AUDIENCE)
            .trust_issuer(IDP)
            .jwks(source)
            .require_jti(false)
            .build()
            .unwrap()
    }
}

/// The role map, as it comes from configuration.
fn rbac(role_claims: &[&str]) -> RbacConfig {
    serde_json::from_value(json!({
        "role_claims": role_claims,
        "roles": {
            "customer": ["orders:read:own", "orders:write"],
            "admin": ["orders:read:any", "orders:write", "reports:read"],
            "auditor": ["reports:read"],
        }
    }))
    .unwrap()
}

/// The API: `/me` for any valid token, the rest guarded per permission, and
/// `/orders/{customer}` checking ownership in the handler.
fn api(layer: RequireUserTokenLayer) -> Router {
    let guarded = |path: &'static str, permissions: &'static [&'static str]| {
        Router::new()
            .route(path, get(|| async { "ok" }).post(|| async { "created" }))
            .route_layer(RequirePermissionLayer::new(permissions).realm(AUDIENCE))
    };
    Router::new()
        .route(
            "/me",
            get(|Extension(user): Extension<UserPrincipal>| async move {
                axum::Json(json!({
                    "sub": user.subject, "iss": user.issuer, "roles": user.roles,
                    "permissions": user.permissions,
                }))
            }),
        )
        .route("/orders/{customer}", get(order_of))
        .merge(guarded("/orders", &["orders:read:any"]))
        .merge(guarded("/orders/new", &["orders:write"]))
        .merge(guarded("/reports", &["reports:read"]))
        .merge(guarded(
            "/reports/orders",
            &["reports:read", "orders:read:any"],
        ))
        .layer(layer)
}

/// A customer reads its own orders; reading another's needs `orders:read:any`.
async fn order_of(
    Extension(user): Extension<UserPrincipal>,
    Path(customer): Path<String>,
) -> axum::response::Response {
    let allowed = if customer == user.subject {
        user.require("orders:read:own")
    } else {
        user.require("orders:read:any")
    };
    match allowed {
        Ok(()) => axum::response::IntoResponse::into_response(format!("orders of {customer}")),
        Err(err) => ApiError::from(err)
            .into_response()
            .map(axum::body::Body::new),
    }
}

struct Answer {
    status: StatusCode,
    challenge: Option<String>,
    body: Value,
}

async fn call(app: &Router, method: Method, path: &str, token: Option<&str>) -> Answer {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        req = req.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = app
        .clone()
        .oneshot(req.body(axum::body::Body::empty()).unwrap())
        .await
        .unwrap();
    let (status, challenge, bytes) = status_challenge_body(response).await;
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Answer {
        status,
        challenge,
        body,
    }
}

async fn app_for(idp: &Idp, role_claims: &[&str]) -> Router {
    let layer = RequireUserTokenLayer::new(idp.verifier().await, rbac(role_claims)).unwrap();
    api(layer)
}

fn assert_invalid_token(answer: &Answer, reason: &str) {
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", answer.body);
    let challenge = answer.challenge.as_deref().unwrap();
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_eq!(answer.body["error"]["code"], "invalid_token");
    assert_eq!(answer.body["error"]["details"]["reason"], reason);
}

#[tokio::test]
async fn every_role_and_permission_combination() {
    let idp = idp();
    let app = app_for(&idp, &["roles"]).await;
    const OK: StatusCode = StatusCode::OK;
    const NO: StatusCode = StatusCode::FORBIDDEN;
    // roles → (GET /orders: orders:read:any, POST /orders/new: orders:write,
    //          GET /reports: reports:read, GET /reports/orders: reports:read + orders:read:any)
    let table: [(&[&str], [StatusCode; 4]); 7] = [
        (&[], [NO, NO, NO, NO]),
        (&["customer"], [NO, OK, NO, NO]),
        (&["admin"], [OK, OK, OK, OK]),
        (&["auditor"], [NO, NO, OK, NO]),
        (&["customer", "auditor"], [NO, OK, OK, NO]),
        (&["customer", "admin"], [OK, OK, OK, OK]),
        (&["superuser"], [NO, NO, NO, NO]),
    ];
    let routes = [
        (Method::GET, "/orders"),
        (Method::POST, "/orders/new"),
        (Method::GET, "/reports"),
        (Method::GET, "/reports/orders"),
    ];
    for (roles, expected) in table {
        let token = idp.token("u-1", json!({ "roles": roles }));
        for ((method, path), status) in routes.iter().zip(expected) {
            let answer = call(&app, method.clone(), path, Some(&token)).await;
            assert_eq!(
                answer.status, status,
                "{roles:?} {method} {path}: {}",
                answer.body
            );
            if status == NO {
                let challenge = answer.challenge.unwrap();
                assert!(
                    challenge
                        .starts_with("Bearer realm=\"shop-api\", error=\"insufficient_scope\""),
                    "{challenge}"
                );
                assert_eq!(answer.body["error"]["code"], "insufficient_scope");
                assert!(answer.body["error"]["details"]["missingPermissions"].is_array());
            }
        }
    }
}

#[tokio::test]
async fn the_principal_reaches_the_handler() {
    let idp = idp();
    let app = app_for(&idp, &["roles"]).await;
    let token = idp.token("c-42", json!({ "roles": ["customer", "beta-tester"] }));
    let answer = call(&app, Method::GET, "/me", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(answer.body["sub"], "c-42");
    assert_eq!(answer.body["iss"], IDP);
    // An unmapped role is listed but grants nothing.
    assert_eq!(answer.body["roles"], json!(["customer", "beta-tester"]));
    assert_eq!(
        answer.body["permissions"],
        json!(["orders:read:own", "orders:write"])
    );
}

#[tokio::test]
async fn a_token_without_the_role_is_forbidden_not_unauthenticated() {
    let idp = idp();
    let app = app_for(&idp, &["roles"]).await;
    // Valid, but no roles claim at all: authenticated, so /me works; permissions are missing.
    let token = idp.token("c-1", json!({}));
    assert_eq!(
        call(&app, Method::GET, "/me", Some(&token)).await.status,
        StatusCode::OK
    );
    let answer = call(&app, Method::GET, "/orders", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert_eq!(
        answer.challenge.as_deref(),
        Some("Bearer realm=\"shop-api\", error=\"insufficient_scope\", scope=\"orders:read:any\"")
    );
    assert_eq!(answer.body["error"]["code"], "insufficient_scope");
    assert_eq!(
        answer.body["error"]["details"]["missingPermissions"],
        json!(["orders:read:any"])
    );
}

#[tokio::test]
async fn a_tampered_roles_claim_breaks_the_signature() {
    let idp = idp();
    let app = app_for(&idp, &["roles"]).await;
    let token = idp.token("c-1", json!({ "roles": ["customer"] }));
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["roles"] = json!(["admin"]);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let answer = call(&app, Method::GET, "/orders", Some(&tampered)).await;
    assert_invalid_token(&answer, "invalid_signature");
    // The untampered token is the customer it was issued for.
    let answer = call(&app, Method::GET, "/orders", Some(&token)).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn expired_missing_and_foreign_tokens_are_401() {
    let idp = idp();
    let app = app_for(&idp, &["roles"]).await;
    let then = now() - 3600;
    let expired = idp.token(
        "c-1",
        json!({ "roles": ["admin"], "iat": then, "exp": then + 300 }),
    );
    assert_invalid_token(
        &call(&app, Method::GET, "/orders", Some(&expired)).await,
        "token_expired",
    );

    let answer = call(&app, Method::GET, "/orders", None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.challenge.as_deref(),
        Some("Bearer realm=\"shop-api\"")
    );
    assert_eq!(answer.body["error"]["code"], "missing_token");

    let other_api = idp.token("c-1", json!({ "roles": ["admin"], "aud": "other-api" }));
    assert_invalid_token(
        &call(&app, Method::GET, "/orders", Some(&other_api)).await,
        "wrong_audience",
    );
    let other_idp = idp.token(
        "c-1",
        json!({ "roles": ["admin"], "iss": "https://evil.test" }),
    );
    assert_invalid_token(
        &call(&app, Method::GET, "/orders", Some(&other_idp)).await,
        "untrusted_issuer",
    );
    // Signed by a key the provider does not publish, under the provider's kid.
    let stranger = SigningKey::from_pem_file(format!("{FIXTURES}/test-only-rsa2048-b.pem"))
        .unwrap()
        .with_kid("idp-2026")
        .unwrap();
    let now = now();
    let forged = stranger
        .sign_claims(
            &json!({ "iss": IDP, "aud": AUDIENCE, "sub": "c-1", "iat": now,
                              "exp": now + 300, "roles": ["admin"] }),
        )
        .unwrap();
    assert_invalid_token(
        &call(&app, Method::GET, "/orders", Some(&forged)).await,
        "invalid_signature",
    );
    // A roles claim that is not a list of strings is a malformed token, not "no roles".
    let odd = idp.token("c-1", json!({ "roles": { "admin": true } }));
    assert_invalid_token(
        &call(&app, Method::GET, "/me", Some(&odd)).await,
        "invalid_claim",
    );
}

#[tokio::test]
async fn microprofile_groups_claim() {
    let idp = idp();
    let app = app_for(&idp, &["groups"]).await;
    let token = idp.token("ada", json!({ "groups": ["admin"], "roles": ["customer"] }));
    let answer = call(&app, Method::GET, "/me", Some(&token)).await;
    assert_eq!(
        answer.body["roles"],
        json!(["admin"]),
        "only the configured claim"
    );
    assert_eq!(
        call(&app, Method::GET, "/orders", Some(&token))
            .await
            .status,
        StatusCode::OK
    );
    let customer = idp.token("c-1", json!({ "roles": ["admin"] }));
    assert_eq!(
        call(&app, Method::GET, "/orders", Some(&customer))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn ownership_checked_in_the_handler() {
    let idp = idp();
    let app = app_for(&idp, &["roles"]).await;
    let customer = idp.token("c-1", json!({ "roles": ["customer"] }));
    let admin = idp.token("ada", json!({ "roles": ["admin"] }));
    let cases = [
        (&customer, "/orders/c-1", StatusCode::OK),
        (&customer, "/orders/c-2", StatusCode::FORBIDDEN),
        (&admin, "/orders/c-2", StatusCode::OK),
    ];
    for (token, path, status) in cases {
        let answer = call(&app, Method::GET, path, Some(token)).await;
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
    }
    let answer = call(&app, Method::GET, "/orders/c-2", Some(&customer)).await;
    assert_eq!(answer.body["error"]["code"], "insufficient_scope");
    assert!(
        answer
            .challenge
            .unwrap()
            .contains("error=\"insufficient_scope\", scope=\"orders:read:any\"")
    );
}

#[tokio::test]
async fn a_permission_layer_without_the_token_layer_fails_closed() {
    let svc = tower::ServiceBuilder::new()
        .layer(RequirePermissionLayer::new(&["orders:read:any"]))
        .service(tower::service_fn(|_req: Request<String>| async {
            Ok::<_, Infallible>(http::Response::new(String::from("leaked")))
        }));
    let response = svc.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn authenticate_outside_a_layer() {
    let idp = idp();
    let layer = RequireUserTokenLayer::new(idp.verifier().await, rbac(&["roles"])).unwrap();
    let token = idp.token("ada", json!({ "roles": ["admin"] }));
    let user = layer.authenticate(&token).await.unwrap();
    assert!(user.has_permission("orders:read:any"));
    assert!(user.has_role("admin"));
    let err = layer.authenticate("x.y.z").await.unwrap_err();
    assert_eq!(err.kind(), &AuthErrorKind::MalformedToken);
    // A role map whose permissions cannot be named in a challenge is refused up front.
    let bad = RbacConfig::new().role("x", &["has space"]);
    assert!(RequireUserTokenLayer::new(idp.verifier().await, bad).is_err());
}
