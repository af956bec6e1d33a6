//! Service-to-service tokens for the shop: the gateway signs short-lived JWTs (chassis
//! [`TokenIssuer`], Ed25519), every internal API verifies them ([`RequireServiceTokenLayer`]).
//!
//! Keys come from the environment: `SERVICE_TOKEN_PRIVATE_KEY` (PKCS#8 PEM, the gateway only),
//! `SERVICE_TOKEN_PUBLIC_KEY` (SPKI PEM, every verifier) and `SERVICE_TOKEN_KID` (the key id,
//! default `shop-1`). The launcher generates a fresh pair per run; Compose and Kubernetes take them
//! from a secret.
//!
//! The orders service calls the inventory's gRPC API with tokens of its own (issuer `orders`):
//! `ORDERS_TOKEN_PRIVATE_KEY` for orders, `ORDERS_TOKEN_PUBLIC_KEY` for inventory, a second
//! pair the launcher generates as well.
//!
//! # Example
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use chassis_http::auth::SigningKey;
//! use shop_common::auth::{issuer_from_pem, verifier_from_pem};
//!
//! let key = SigningKey::generate_ed25519().unwrap();
//! let issuer = issuer_from_pem(&key.to_pkcs8_pem().unwrap(), "k1").unwrap();
//! let verifier = verifier_from_pem("orders", &key.public_key_pem().unwrap(), "k1").unwrap();
//! let token = issuer.issue("orders", &["orders:write"]).unwrap();
//! assert_eq!(verifier.verify(token.as_str()).await.unwrap().subject, "gateway");
//! # }
//! ```

use chassis_core::BoxError;
use chassis_http::auth::{
    KeySet, RequireServiceTokenLayer, SigningKey, TokenIssuer, TokenVerifier, VerificationKey,
};

/// The only caller of the internal APIs.
pub const ISSUER: &str = "gateway";

fn kid() -> String {
    std::env::var("SERVICE_TOKEN_KID")
        .ok()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "shop-1".into())
}

/// An issuer (`iss` = `sub` = `gateway`) from a private key PEM.
pub fn issuer_from_pem(pem: &str, kid: &str) -> Result<TokenIssuer, BoxError> {
    let key = SigningKey::from_pem(pem)?.with_kid(kid)?;
    Ok(TokenIssuer::builder(ISSUER).signing_key(key).build()?)
}

/// A verifier for `audience` trusting the gateway's public key.
pub fn verifier_from_pem(audience: &str, pem: &str, kid: &str) -> Result<TokenVerifier, BoxError> {
    let key = VerificationKey::from_public_pem(kid, pem)?;
    Ok(TokenVerifier::builder(audience)
        .trust_issuer(ISSUER)
        .keys(KeySet::new().with(key))
        .build()?)
}

/// The gateway's issuer from `SERVICE_TOKEN_PRIVATE_KEY`.
pub fn issuer_from_env() -> Result<TokenIssuer, BoxError> {
    let pem = std::env::var("SERVICE_TOKEN_PRIVATE_KEY").map_err(
        |_| "SERVICE_TOKEN_PRIVATE_KEY (PKCS#8 PEM) is required; the launcher generates one",
    )?;
    issuer_from_pem(&pem, &kid())
}

/// The issuer of the orders service's own tokens: its calls to the inventory's gRPC API.
pub const ORDERS_ISSUER: &str = "orders";
/// The key id of the orders service's tokens.
pub const ORDERS_KID: &str = "orders-1";

/// The orders service's issuer (`iss` = `sub` = `orders`, key id [`ORDERS_KID`]) from
/// `ORDERS_TOKEN_PRIVATE_KEY` (PKCS#8 PEM), or `None` when it is unset. The orders service
/// has a key of its own, so a verifier can tell its calls from the gateway's and the
/// gateway's key stays with the gateway.
pub fn orders_issuer_from_env() -> Result<Option<TokenIssuer>, BoxError> {
    let Some(pem) = std::env::var("ORDERS_TOKEN_PRIVATE_KEY")
        .ok()
        .filter(|p| !p.is_empty())
    else {
        return Ok(None);
    };
    let key = SigningKey::from_pem(&pem)?.with_kid(ORDERS_KID)?;
    Ok(Some(
        TokenIssuer::builder(ORDERS_ISSUER)
            .signing_key(key)
            .build()?,
    ))
}

/// The server layer for `audience` admitting the orders service's tokens
/// (`ORDERS_TOKEN_PUBLIC_KEY`, SPKI PEM), or `None` when that key is unset.
pub fn require_orders_from_env(
    audience: &str,
) -> Result<Option<RequireServiceTokenLayer>, BoxError> {
    let Some(pem) = std::env::var("ORDERS_TOKEN_PUBLIC_KEY")
        .ok()
        .filter(|p| !p.is_empty())
    else {
        return Ok(None);
    };
    let key = VerificationKey::from_public_pem(ORDERS_KID, &pem)?;
    let verifier = TokenVerifier::builder(audience)
        .trust_issuer(ORDERS_ISSUER)
        .keys(KeySet::new().with(key))
        .build()?;
    Ok(Some(RequireServiceTokenLayer::new(verifier)))
}

/// The server layer for `audience` from `SERVICE_TOKEN_PUBLIC_KEY`: 401 without a valid token
/// (one for another audience is not valid here, RFC 6750), 403 with one lacking a scope.
pub fn require_from_env(audience: &str) -> Result<RequireServiceTokenLayer, BoxError> {
    let pem = std::env::var("SERVICE_TOKEN_PUBLIC_KEY").map_err(
        |_| "SERVICE_TOKEN_PUBLIC_KEY (SPKI PEM) is required; the launcher generates one",
    )?;
    Ok(RequireServiceTokenLayer::new(verifier_from_pem(
        audience,
        &pem,
        &kid(),
    )?))
}
