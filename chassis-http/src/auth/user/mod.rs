//! End-user tokens and role-based access: a resource server's view of the JWTs an identity
//! provider (Keycloak, Auth0, Entra ID, …) issues to users, in the manner of Spring Security's
//! resource server and MicroProfile JWT's `groups` → roles.
//!
//! - [`RequireUserTokenLayer`] verifies the user's bearer JWT with the same [`TokenVerifier`]
//!   as service tokens (key and algorithm pinned per key, RS256/PS256/ES256/EdDSA, the
//!   provider's JWKS through [`JwksKeySource`](crate::auth::JwksKeySource), issuer and audience
//!   checked), reads the roles from the claims [`RbacConfig`] names (`roles` by default,
//!   `groups` for MicroProfile JWT), maps them to permissions and inserts a [`UserPrincipal`]
//!   `{ subject, roles, permissions }` as a request extension.
//! - [`RequirePermissionLayer`] guards a route with permissions; or a handler checks with
//!   [`UserPrincipal::require`] (its error converts into the chassis [`ApiError`](crate::ApiError)).
//!
//! Answers follow RFC 6750 §3.1 (see [`AuthErrorKind`](crate::auth::AuthErrorKind)): no token
//! 401 with a bare `Bearer` challenge; an invalid token — including one whose roles were edited,
//! which breaks its signature, and an expired one — 401 `invalid_token`; a permission the roles
//! do not grant 403 `insufficient_scope`, body code `insufficient_scope`.
//!
//! The role map is configuration (`Deserialize`), e.g. in TOML:
//!
//! ```toml
//! [rbac.roles]
//! customer = ["orders:read:own", "orders:write"]
//! admin = ["orders:read:any", "orders:write"]
//! ```
//!
//! # Example
//! ```
//! use std::time::{SystemTime, UNIX_EPOCH};
//!
//! use chassis_http::auth::user::{
//!     RbacConfig, RequirePermissionLayer, RequireUserTokenLayer, UserPrincipal,
//! };
//! use chassis_http::auth::{KeySet, SigningKey, TokenVerifier};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // The identity provider's key; in production the verifier reads its JWKS:
//! // `JwksKeySource::from_url("https://idp.example/realms/shop/protocol/openid-connect/certs")`.
//! let idp = SigningKey::generate_es256()?;
//! let verifier = TokenVerifier::builder("shop-api")
//!     .trust_issuer("https://idp.example/realms/shop")
//!     .keys(KeySet::new().with(idp.verification_key()))
//!     .require_jti(false)
//!     .build()?;
//! let rbac = RbacConfig::new()
//!     .role("customer", &["orders:read:own", "orders:write"])
//!     .role("admin", &["orders:read:any", "orders:write"]);
//!
//! // GET /admin/orders needs orders:read:any.
//! let admin_route = ServiceBuilder::new()
//!     .layer(RequireUserTokenLayer::new(verifier, rbac)?)
//!     .layer(RequirePermissionLayer::new(&["orders:read:any"]))
//!     .service(service_fn(|req: Request<String>| async move {
//!         let user = req.extensions().get::<UserPrincipal>().expect("set by the layer");
//!         Ok::<_, std::convert::Infallible>(Response::new(user.subject.clone()))
//!     }));
//!
//! let token_for = |sub: &str, roles: &[&str]| {
//!     let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
//!     idp.sign_claims(&serde_json::json!({
//!         "iss": "https://idp.example/realms/shop", "aud": "shop-api", "sub": sub,
//!         "iat": now, "exp": now + 300, "roles": roles,
//!     }))
//! };
//! let call = |token: String| {
//!     let request = Request::get("/admin/orders")
//!         .header("authorization", format!("Bearer {token}"))
//!         .body(String::new())
//!         .unwrap();
//!     admin_route.clone().oneshot(request)
//! };
//! assert_eq!(call(token_for("ada", &["admin"])?).await?.status(), StatusCode::OK);
//! assert_eq!(call(token_for("c-42", &["customer"])?).await?.status(), StatusCode::FORBIDDEN);
//! assert_eq!(call("not-a-jwt".into()).await?.status(), StatusCode::UNAUTHORIZED);
//! # Ok(())
//! # }
//! ```
//!
//! Under axum: `Router::layer(RequireUserTokenLayer::new(v, rbac)?)` on the API,
//! `route_layer(RequirePermissionLayer::new(&["orders:read:any"]))` on the routes that need a
//! permission, and handlers take `Extension<UserPrincipal>`. Checks that depend on the data
//! (a customer reads only its own orders) belong in the handler:
//! `if order.customer_id != user.subject { user.require("orders:read:any")?; }`.
//!
//! [`TokenVerifier`]: crate::auth::TokenVerifier

mod layer;
mod permission;
mod principal;
mod rbac;

pub use crate::future::ResponseFuture;
pub use layer::{RequireUserToken, RequireUserTokenLayer};
pub use permission::{RequirePermission, RequirePermissionLayer};
pub use principal::UserPrincipal;
pub use rbac::{DEFAULT_ROLE_CLAIM, RbacConfig};
