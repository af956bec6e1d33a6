//! A service with an admin API over real sockets: its `HttpClient` (breaker `inventory`) calls
//! a real downstream server, its admin listener serves `ControlService` behind service tokens
//! with the `admin` scope (audience `admin`, issuer `ops`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use chassis_core::control::ControlRegistry;
use chassis_core::health::{HealthRegistry, fn_check};
use chassis_core::resilience::circuit_breaker::CircuitBreakerConfig;
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::shutdown::Shutdown;
use chassis_http::auth::{KeySet, SigningKey, TokenIssuer, TokenVerifier};
use chassis_http::client::HttpClient;
use chassis_http::control::ControlService;
use chassis_http::server::{Server, ServerConfig};

/// The audience of every admin token: one operator token reaches every service.
pub(crate) const ADMIN_AUDIENCE: &str = "admin";

pub(crate) fn issuer() -> TokenIssuer {
    TokenIssuer::builder("ops")
        .signing_key(SigningKey::generate_ed25519().unwrap())
        .build()
        .unwrap()
}

pub(crate) fn verifier(keys: KeySet) -> TokenVerifier {
    TokenVerifier::builder(ADMIN_AUDIENCE)
        .trust_issuer("ops")
        .keys(keys)
        .build()
        .unwrap()
}

fn config(admin: bool) -> ServerConfig {
    let config = ServerConfig::default()
        .bind("127.0.0.1:0".parse().unwrap())
        .drain_timeout(Duration::from_secs(2));
    if admin {
        config.admin("127.0.0.1:0".parse().unwrap())
    } else {
        config
    }
}

/// One service of the test system.
pub(crate) struct TestService {
    pub(crate) name: String,
    pub(crate) admin: SocketAddr,
    pub(crate) control: ControlRegistry,
    pub(crate) client: HttpClient,
    stops: Vec<Shutdown>,
}

impl TestService {
    /// `GET /stock` on the downstream through the service's client (and its breaker).
    pub(crate) async fn get_stock(
        &self,
    ) -> Result<http::Response<Bytes>, chassis_http::client::ClientError> {
        self.client
            .execute(
                http::Request::get("/stock")
                    .body(Default::default())
                    .unwrap(),
            )
            .await
    }

    /// Starts the downstream and the service `name`, whose admin API trusts `keys`.
    pub(crate) async fn start(name: &str, keys: KeySet) -> Self {
        let downstream = Server::bind(config(false))
            .await
            .unwrap()
            .handle_signals(false);
        let downstream_url = format!("http://{}", downstream.local_addr());
        let downstream_stop = downstream.shutdown_handle();
        tokio::spawn(downstream.serve(
            axum::Router::new().route("/stock", axum::routing::get(|| async { "{\"left\":3}" })),
        ));

        let client = HttpClient::builder("inventory")
            .base_url(downstream_url)
            .policy(
                ResiliencePolicy::new()
                    .timeout(Duration::from_secs(5))
                    .circuit_breaker(CircuitBreakerConfig::new("inventory")),
            )
            .build()
            .unwrap();
        let health = HealthRegistry::with_cache_ttl(Duration::ZERO);
        health.register(
            fn_check("database", || async { Ok(()) }),
            chassis_core::health::CheckOptions::required(),
        );
        health.mark_started();
        let control = ControlRegistry::new(name);
        control
            .register_breaker(client.circuit_breaker().unwrap().clone())
            .register_health(health);

        let server = Server::bind(config(true))
            .await
            .unwrap()
            .admin_service(ControlService::new(control.clone()).with_token(verifier(keys)))
            .handle_signals(false);
        let admin = server.admin_addr().unwrap();
        let stop = server.shutdown_handle();
        tokio::spawn(server.serve(axum::Router::new()));
        Self {
            name: name.to_owned(),
            admin,
            control,
            client,
            stops: vec![stop, downstream_stop],
        }
    }

    pub(crate) fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        for stop in &self.stops {
            stop.trigger();
        }
    }
}
