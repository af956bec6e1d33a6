//! Service-to-service tokens for the shop: the gateway signs short-lived JWTs (chassis
//! [`TokenIssuer`], Ed25519), every internal API verifies them ([`RequireServiceTokenLayer`]).
//!
//! Keys come from the environment: `SERVICE_TOKEN_PRIVATE_KEY` (PKCS#8 PEM, the gateway only),
//! `SERVICE_TOKEN_PUBLIC_KEY` (SPKI PEM, every verifier) and `SERVICE_TOKEN_KID` (the key id,
//! default `shop-1`). The launcher generates a fresh pair per run; Compose and Kubernetes take them
//! from a secret.
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
