//! Bearer-token auth: service-to-service tokens (short-lived signed JWTs, key rotation through
//! JWKS, a client layer that attaches them and a server layer that verifies them) and, in
//! [`user`], end-user tokens from an identity provider with role-based access.
//!
//! ## Pieces
//! - [`SigningKey`] / [`VerificationKey`] / [`KeySet`]: Ed25519 (`EdDSA`), P-256 (`ES256`) or
//!   RSA (`RS256`/`PS256`, 2048 to 4096 bits) keys with key ids, from PEM files, environment
//!   variables, JWKs (`kty` `OKP`, `EC`, `RSA`), or (Ed25519, P-256) generated. Each key is
//!   pinned to one algorithm. HS256 only through the explicitly named
//!   [`SigningKey::hs256_shared_secret`].
//! - [`TokenIssuer`]: signs tokens with `iss`, `sub` (the caller), `aud` (the target), `iat`,
//!   `nbf`, `exp` (default TTL 5 minutes), `jti` (a UUID) and `scope` (space-separated). It
//!   rotates keys and publishes the public ones as JWKS ([`TokenIssuer::jwks_service`]).
//! - [`JwksKeySource`]: a verifier's keys from a JWKS file or URL, refreshed periodically and
//!   refetched once (rate-limited) when a token names an unknown key id.
//! - [`TokenVerifier`]: checks shape, key, algorithm (pinned per key, never taken from the
//!   token), signature, `exp`/`nbf` with leeway (default 30 s), the issuer allow-list and the
//!   audience, and returns a [`ServiceIdentity`].
//! - [`AddServiceTokenLayer`] (client): attaches `Authorization: Bearer …` for one audience,
//!   caching the token and renewing it at 80% of its lifetime.
//! - [`RequireServiceTokenLayer`] (server): verifies, checks per-route scopes and inserts the
//!   [`ServiceIdentity`] as a request extension. RFC 6750 answers, status and codes always
//!   agreeing ([`AuthErrorKind`]): 401 `invalid_token` for an invalid, expired or wrong-audience
//!   token, 401 without an error code for a missing one, 400 `invalid_request` for a malformed
//!   `Authorization` header, 403 `insufficient_scope` for a missing scope; the chassis JSON
//!   error body and a `WWW-Authenticate` header. Logs carry key ids, subjects and reasons,
//!   never tokens or keys.
//! - [`user`]: [`RequireUserTokenLayer`](user::RequireUserTokenLayer) verifies end users'
//!   JWTs and maps their roles to permissions ([`UserPrincipal`](user::UserPrincipal));
//!   [`RequirePermissionLayer`](user::RequirePermissionLayer) guards routes.
//!
//! ## Example
//! ```
//! use chassis_http::auth::{
//!     AddServiceTokenLayer, RequireServiceTokenLayer, ServiceIdentity, SigningKey, TokenIssuer,
//!     TokenVerifier,
//! };
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! // The calling service ("orders") signs; in production the key comes from
//! // `SigningKey::from_pem_file` or `SigningKey::from_env`.
//! let issuer = TokenIssuer::builder("orders")
//!     .signing_key(SigningKey::generate_ed25519()?)
//!     .build()?;
//!
//! // The called service ("billing") verifies; in production its keys come from
//! // `JwksKeySource::from_url("http://orders/.well-known/jwks.json")?.load().await?`.
//! let verifier = TokenVerifier::builder("billing")
//!     .trust_issuer("orders")
//!     .keys(issuer.key_set())
//!     .build()?;
//! let billing = ServiceBuilder::new()
//!     .layer(RequireServiceTokenLayer::new(verifier).require_scopes(&["invoices:write"]))
//!     .service(service_fn(|req: Request<String>| async move {
//!         let caller = req.extensions().get::<ServiceIdentity>().expect("set by the layer");
//!         Ok::<_, std::convert::Infallible>(Response::new(caller.subject.clone()))
//!     }));
//!
//! // The client side attaches a token for "billing" to every request.
//! let client = ServiceBuilder::new()
//!     .layer(AddServiceTokenLayer::for_audience(issuer, "billing", &["invoices:write"])?)
//!     .service(billing);
//! let response = client.oneshot(Request::new(String::new())).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! # Ok(())
//! # }
//! ```
//!
//! Under axum, both layers apply unchanged: `Router::layer(RequireServiceTokenLayer::new(v))`
//! for a whole router, `route_layer(layer.require_scopes(&["orders:write"]))` on a sub-router
//! for per-route scopes, and handlers take `Extension<ServiceIdentity>`. Mount the JWKS
//! endpoint ([`TokenIssuer::jwks_service`]) outside the protected routes: verifiers fetch it
//! without a token.

mod attach;
mod claims;
mod error;
mod issuer;
mod jwks;
mod keys;
mod require;
mod service;
pub mod user;
mod verifier;

pub use crate::future::ResponseFuture as RequireServiceTokenFuture;
pub use attach::{
    AddServiceToken, AddServiceTokenLayer, DEFAULT_RENEW_FRACTION,
    ResponseFuture as AddServiceTokenFuture, ServiceTokenSource,
};
pub use claims::{ServiceClaims, ServiceIdentity};
pub use error::{AuthError, AuthErrorKind};
pub use issuer::{DEFAULT_TOKEN_TTL, IssuedToken, JwksService, TokenIssuer, TokenIssuerBuilder};
pub use jwks::{JwksKeySource, JwksKeySourceBuilder};
pub use keys::{
    KeySet, MAX_RSA_MODULUS_BITS, MIN_HS256_SECRET_LEN, MIN_RSA_MODULUS_BITS, SigningKey,
    VerificationKey,
};
pub use require::{RequireServiceToken, RequireServiceTokenLayer};
pub use verifier::{
    DEFAULT_LEEWAY, DEFAULT_MAX_TOKEN_LIFETIME, TokenVerifier, TokenVerifierBuilder,
};

/// Re-exported so callers can name algorithms and JWKS documents without a direct dependency.
pub use jsonwebtoken::{Algorithm, jwk::Jwk, jwk::JwkSet};
