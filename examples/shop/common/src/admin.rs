//! The admin API of a shop service: the chassis control registry (its breakers, retry
//! budgets, health checks, outbox, consumers' queues, ...; a service with a [`Shop`](crate::Shop)
//! takes its registry from [`Shop::control`](crate::Shop::control)) served on the admin listener by `chassis_http::control::ControlService`, behind a
//! service token of audience [`AUDIENCE`] with the `admin` scope, signed by the gateway's key.
//! The launcher's `--keep-running` dashboard reads every service's API with one such token.
//!
//! Off unless configured: without `SERVICE_TOKEN_PUBLIC_KEY` the admin listener serves the
//! probes and `/metrics` only.
//!
//! # Example
//! ```
//! use chassis_core::health::HealthRegistry;
//! use chassis_http::server::{HttpServer, ServerConfig};
//!
//! let control = shop_common::admin::registry("orders", &HealthRegistry::new());
//! assert_eq!(control.service(), "orders");
//! // The application service is whatever the service serves; `()` stands in for it here.
//! let server = shop_common::admin::with_admin(HttpServer::new(ServerConfig::default(), ()), control);
//! assert!(server.is_ok());
//! ```

use chassis_core::BoxError;
use chassis_core::control::ControlRegistry;
use chassis_core::health::HealthRegistry;
use chassis_http::control::ControlService;
use chassis_http::server::HttpServer;

/// The audience of admin tokens: one operator token reaches every service.
pub const AUDIENCE: &str = "admin";

/// The control registry of `service`, with its health checks registered (for a service
/// without a [`Shop`](crate::Shop): the gateway).
pub fn registry(service: &str, health: &HealthRegistry) -> ControlRegistry {
    let control = ControlRegistry::new(service);
    control.register_health(health.clone());
    control
}

/// `server` serving `control` on its admin listener, when `SERVICE_TOKEN_PUBLIC_KEY` is set
/// (the key's id from `SERVICE_TOKEN_KID`, default `shop-1`); `server` as it was otherwise.
pub fn with_admin<S>(
    server: HttpServer<S>,
    control: ControlRegistry,
) -> Result<HttpServer<S>, BoxError> {
    let Some(pem) = std::env::var("SERVICE_TOKEN_PUBLIC_KEY")
        .ok()
        .filter(|k| !k.is_empty())
    else {
        return Ok(server);
    };
    let kid = crate::service::env("SERVICE_TOKEN_KID", "shop-1");
    let verifier = crate::auth::verifier_from_pem(AUDIENCE, &pem, &kid)?;
    Ok(server.admin_service(ControlService::new(control).with_token(verifier)))
}
