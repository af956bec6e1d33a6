//! End users with bearer JWTs from an identity provider, next to the API keys.
//!
//! When `GATEWAY_USER_JWKS` is set, a request whose `Authorization: Bearer …` is not a known API
//! key is checked as an end-user token (chassis
//! [`RequireUserTokenLayer`]: signature against the provider's JWKS, issuer, audience, expiry)
//! and its roles are mapped to permissions ([`RbacConfig`]). Without it the gateway takes API
//! keys only, as before. An API key stays a trusted client with full access (the workload, soak
//! and chaos tools use one).
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `GATEWAY_USER_JWKS` | the provider's JWKS: a file path, or an `http://` / `https://` URL | unset: no user tokens |
//! | `GATEWAY_USER_ISSUER` | the `iss` user tokens must carry | required with `GATEWAY_USER_JWKS` |
//! | `GATEWAY_USER_AUDIENCE` | the `aud` user tokens must name | `shop-api` |
//! | `GATEWAY_RBAC_FILE` | a TOML file with an `[rbac]` table (`role_claims`, `[rbac.roles]`) | [`default_rbac`] |
//!
//! The permissions the routes need ([`permissions`]):
//!
//! | route | permission |
//! |---|---|
//! | `POST /api/v1/orders` | `orders:write`, and `orders:write:any` when `customer_id` is not the token's `sub` |
//! | `GET /api/v1/orders/{id}` | `orders:read:any`, or `orders:read:own` when the order's `customer_id` is the token's `sub` |
//! | `GET /api/v1/products` | `products:read` |
//! | `GET /api/v1/notifications` | `notifications:read` (the list is not filtered per customer) |
//!
//! A token without the permission is `403 insufficient_scope`; a missing, expired, forged or
//! edited token `401` (RFC 6750).
//!
//! # Example
//! ```
//! use shop_gateway::users::{default_rbac, permissions, rbac_from_toml};
//!
//! let rbac = rbac_from_toml(
//!     r#"
//!     [rbac]
//!     role_claims = ["groups"]
//!
//!     [rbac.roles]
//!     customer = ["orders:read:own", "orders:write", "products:read"]
//!     "#,
//! )
//! .unwrap();
//! assert_eq!(rbac.role_claims, ["groups"]);
//! assert!(rbac.permissions_of(["customer"]).contains(permissions::ORDERS_READ_OWN));
//! assert!(default_rbac().permissions_of(["admin"]).contains(permissions::ORDERS_READ_ANY));
//! ```

use std::time::Duration;

use chassis_core::BoxError;
use chassis_http::auth::user::{RbacConfig, RequireUserTokenLayer};
use chassis_http::auth::{JwksKeySource, TokenVerifier};
use serde::Deserialize;
use shop_common::service::env;

/// The audience user tokens must name unless `GATEWAY_USER_AUDIENCE` says otherwise.
pub const DEFAULT_AUDIENCE: &str = "shop-api";

/// The realm of the gateway's `WWW-Authenticate` challenges.
pub const REALM: &str = "shop";

/// The permissions the gateway's routes check.
pub mod permissions {
    /// Read any order.
    pub const ORDERS_READ_ANY: &str = "orders:read:any";
    /// Read the orders whose `customer_id` is the user's `sub`.
    pub const ORDERS_READ_OWN: &str = "orders:read:own";
    /// Place an order for oneself (`customer_id` = `sub`).
    pub const ORDERS_WRITE: &str = "orders:write";
    /// Place an order for any customer.
    pub const ORDERS_WRITE_ANY: &str = "orders:write:any";
    /// List the products.
    pub const PRODUCTS_READ: &str = "products:read";
    /// List notifications.
    pub const NOTIFICATIONS_READ: &str = "notifications:read";
}

/// The role map used when `GATEWAY_RBAC_FILE` is not set: roles from the `roles` claim;
/// `customer` places and reads its own orders and lists products, `admin` does everything.
pub fn default_rbac() -> RbacConfig {
    use permissions::*;
    RbacConfig::new()
        .role("customer", &[ORDERS_READ_OWN, ORDERS_WRITE, PRODUCTS_READ])
        .role(
            "admin",
            &[
                ORDERS_READ_ANY,
                ORDERS_WRITE,
                ORDERS_WRITE_ANY,
                PRODUCTS_READ,
                NOTIFICATIONS_READ,
            ],
        )
}

/// The `[rbac]` table of a TOML document (other tables are ignored, so it can be a section of
/// a larger configuration file).
pub fn rbac_from_toml(text: &str) -> Result<RbacConfig, BoxError> {
    #[derive(Deserialize)]
    struct File {
        rbac: RbacConfig,
    }
    let file: File = toml::from_str(text)?;
    file.rbac.validate()?;
    Ok(file.rbac)
}

/// Where user tokens come from and what their roles allow.
#[derive(Debug, Clone)]
pub struct UserAuthConfig {
    /// The provider's JWKS: a file path or an `http(s)://` URL.
    pub jwks: String,
    /// The `iss` of the provider.
    pub issuer: String,
    /// The `aud` user tokens must name.
    pub audience: String,
    /// Roles to permissions.
    pub rbac: RbacConfig,
}

impl UserAuthConfig {
    /// The configuration from `GATEWAY_USER_JWKS`, `GATEWAY_USER_ISSUER`,
    /// `GATEWAY_USER_AUDIENCE` and `GATEWAY_RBAC_FILE` (see the [module docs](self)); `None`
    /// when `GATEWAY_USER_JWKS` is not set.
    pub fn from_env() -> Result<Option<Self>, BoxError> {
        let jwks = env("GATEWAY_USER_JWKS", "");
        if jwks.is_empty() {
            return Ok(None);
        }
        let issuer = env("GATEWAY_USER_ISSUER", "");
        if issuer.is_empty() {
            return Err("GATEWAY_USER_ISSUER is required with GATEWAY_USER_JWKS".into());
        }
        let rbac = match env("GATEWAY_RBAC_FILE", "").as_str() {
            "" => default_rbac(),
            path => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("GATEWAY_RBAC_FILE {path}: {e}"))?;
                rbac_from_toml(&text).map_err(|e| format!("GATEWAY_RBAC_FILE {path}: {e}"))?
            }
        };
        Ok(Some(Self {
            jwks,
            issuer,
            audience: env("GATEWAY_USER_AUDIENCE", DEFAULT_AUDIENCE),
            rbac,
        }))
    }

    /// Loads the JWKS (failing when it cannot be read, so a misconfigured gateway does not
    /// start) and builds the layer. The keys are refreshed every 5 minutes and refetched when a
    /// token names an unknown key id.
    pub async fn layer(&self) -> Result<RequireUserTokenLayer, BoxError> {
        let source = if self.jwks.starts_with("http://") || self.jwks.starts_with("https://") {
            JwksKeySource::from_url(&self.jwks)?.load().await?
        } else {
            JwksKeySource::from_file(&self.jwks).load().await?
        };
        let verifier = TokenVerifier::builder(&self.audience)
            .trust_issuer(&self.issuer)
            .jwks(source)
            // Identity providers' access tokens do not all carry a jti, and live up to a day.
            .require_jti(false)
            .max_token_lifetime(Duration::from_secs(24 * 3600))
            .build()?;
        Ok(RequireUserTokenLayer::new(verifier, self.rbac.clone())?.realm(REALM))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_roles() {
        use permissions::*;
        let rbac = default_rbac();
        rbac.validate().unwrap();
        let customer = rbac.permissions_of(["customer"]);
        assert!(customer.contains(ORDERS_READ_OWN) && customer.contains(ORDERS_WRITE));
        assert!(!customer.contains(ORDERS_READ_ANY) && !customer.contains(NOTIFICATIONS_READ));
        let admin = rbac.permissions_of(["admin"]);
        assert!(admin.contains(ORDERS_READ_ANY) && admin.contains(ORDERS_WRITE_ANY));
    }

    #[test]
    fn rbac_files_are_checked() {
        assert!(rbac_from_toml("[other]\nx = 1").is_err(), "no [rbac] table");
        assert!(rbac_from_toml("[rbac.roles]\nadmin = [\"two words\"]").is_err());
        assert!(
            rbac_from_toml("[rbac]\nrole_claim = \"groups\"").is_err(),
            "a typo"
        );
        let rbac = rbac_from_toml("[rbac.roles]\nadmin = [\"orders:read:any\"]").unwrap();
        assert_eq!(rbac.role_claims, ["roles"]);
    }
}
