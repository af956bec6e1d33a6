//! The gateway, `shop-gateway`: the shop's only public API.
//!
//! It runs telemetry and HTTP, nothing else: it keeps no data and publishes nothing, so it has
//! no database, no outbox relay and no RabbitMQ connection. Each request is authenticated with
//! an API key, rate limited per key, checked against the size limits, and routed to orders,
//! inventory or notifications with the resilient client and a service token (see
//! `shop_gateway::api` and `shop_gateway::downstream`).
//!
//! Environment: `HTTP_ADDR` (default `127.0.0.1:8080`), `ADMIN_ADDR` (probes and
//! `/metrics`, default `127.0.0.1:9080`), `GATEWAY_API_KEYS` (`key:client,…`,
//! default `demo-key-0001:demo`), `GATEWAY_RATE_LIMIT` (requests/s per key, default 500),
//! `GATEWAY_RATE_BURST`, `GATEWAY_RATE_LIMIT_FAIL`, `GATEWAY_RATE_LIMIT_TIMEOUT_MS`, `REDIS_URL` (the rate limit and the
//! idempotency keys shared by replicas; in memory without it), `GATEWAY_REDIS_PREFIX`,
//! `GATEWAY_IDEMPOTENCY_TTL`, `GATEWAY_IDEMPOTENCY_WAIT`,
//! `ORDERS_URL`, `INVENTORY_URL`, `NOTIFICATIONS_URL`, `PAYMENTS_URL`, optionally `ORDERS_POLICY`,
//! `INVENTORY_POLICY`, `NOTIFICATIONS_POLICY` (a JSON `ResiliencePolicy` per downstream,
//! default `shop_gateway::downstream::default_policy`), `SERVICE_TOKEN_PRIVATE_KEY`, the
//! end-user tokens' `GATEWAY_USER_JWKS`, `GATEWAY_USER_ISSUER`, `GATEWAY_USER_AUDIENCE`,
//! `GATEWAY_RBAC_FILE` (see `shop_gateway::users`; `--help` lists them all), and the chassis'
//! `LOG_FORMAT`, `RUST_LOG`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `PRE_STOP_DELAY`, ….

use chassis_core::lifecycle::{App, LifecycleConfig};
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::{BoxError, ServiceInfo};
use chassis_http::health::HealthLayer;
use chassis_http::idempotency::{IdempotencyLayer, MemoryStore, RedisStore, RedisStoreConfig};
use chassis_http::server::HttpServer;
use shop_common::auth;
use shop_common::service::{env, server_config};
use shop_gateway::api::{self, Gateway};
use shop_gateway::downstream;
use shop_gateway::keys::ApiKeys;
use shop_gateway::rate_limit::{CallerLimiter, RateLimitSettings};
use shop_gateway::users::UserAuthConfig;

const HELP: &str = "\
shop-gateway: the shop's public API (configured from the environment)

  HTTP_ADDR              listen address of the public API (default 127.0.0.1:8080)
  ADMIN_ADDR             listen address of the probes and /metrics (default 127.0.0.1:9080);
                         keep it off the public network
  GATEWAY_API_KEYS       trusted clients' API keys, `key:client,...` (default demo-key-0001:demo);
                         a request with one has full access
  GATEWAY_RATE_LIMIT     requests per second per client or user (default 500)
  GATEWAY_RATE_BURST     requests a client or user may make at once (default: the rate)
  GATEWAY_RATE_LIMIT_FAIL  `open` (admit) or `closed` (429) while Redis cannot answer (default open)
  GATEWAY_RATE_LIMIT_TIMEOUT_MS  milliseconds a check waits for Redis (default 50)
  REDIS_URL              Redis keeping the rate limits and the idempotency keys, shared by every
                         replica (default: unset, both in this process's memory)
  GATEWAY_REDIS_PREFIX   prefix of the gateway's Redis keys (default shop:gateway:)
  GATEWAY_IDEMPOTENCY_TTL   seconds an order placement's answer is kept for its Idempotency-Key
                         (default 86400)
  GATEWAY_IDEMPOTENCY_WAIT  milliseconds a retry waits for the same key's first request still
                         running before answering 409 (default 0: answer 409 at once)
  GATEWAY_USER_JWKS      the identity provider's JWKS (a file path, or an http:// or https:// URL);
                         when set, end users' bearer JWTs are accepted too (default: unset, API keys only)
  GATEWAY_USER_ISSUER    the `iss` user tokens must carry (required with GATEWAY_USER_JWKS)
  GATEWAY_USER_AUDIENCE  the `aud` user tokens must name (default shop-api)
  GATEWAY_RBAC_FILE      TOML file with an [rbac] table: role_claims (default [\"roles\"]; [\"groups\"]
                         for MicroProfile JWT) and [rbac.roles] role = [permissions]; default:
                         customer = orders:read:own, orders:write, products:read;
                         admin = orders:read:any, orders:write, orders:write:any, products:read,
                         notifications:read
  ORDERS_URL, INVENTORY_URL, NOTIFICATIONS_URL, PAYMENTS_URL
                                                 the services (default 127.0.0.1:8081, :8082, :8084, :8083)
  ORDERS_POLICY, INVENTORY_POLICY, NOTIFICATIONS_POLICY   a JSON ResiliencePolicy per service
  SERVICE_TOKEN_PRIVATE_KEY, SERVICE_TOKEN_KID  the key signing service tokens to the services
  LOG_FORMAT, RUST_LOG, OTEL_EXPORTER_OTLP_ENDPOINT, PRE_STOP_DELAY, ...  the chassis' own
";

/// The policy of downstream `name`: `<NAME>_POLICY` (a JSON `ResiliencePolicy`) or the default.
fn policy(name: &str) -> Result<Option<ResiliencePolicy>, BoxError> {
    let key = format!("{}_POLICY", name.to_ascii_uppercase());
    Ok(match std::env::var(&key) {
        Ok(json) if !json.is_empty() => {
            Some(serde_json::from_str(&json).map_err(|e| format!("{key}: {e}"))?)
        }
        _ => None,
    })
}

fn main() -> Result<(), BoxError> {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return Ok(());
    }
    // One runtime thread unless SHOP_RUNTIME_THREADS says otherwise (see `shop_common::service::runtime`).
    shop_common::service::runtime()?.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    // 1. Identity and telemetry.
    let info = ServiceInfo::from_env("gateway", env!("CARGO_PKG_VERSION"));
    let telemetry = shop_common::service::telemetry(info)?;
    let app = App::new("gateway").config(LifecycleConfig::from_env()?);

    // 2. The API keys, the user tokens, the rate limiter, the idempotency keys and a resilient
    //    client per downstream. With REDIS_URL the limits and keys are in Redis, shared by every
    //    replica; a Redis that does not answer stops the start.
    let limits = RateLimitSettings::from_env()?;
    let ttl: u64 = env("GATEWAY_IDEMPOTENCY_TTL", "86400").parse()?;
    let wait: u64 = env("GATEWAY_IDEMPOTENCY_WAIT", "0").parse()?;
    let (limiter, idempotency) = match std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()) {
        Some(url) => {
            let prefix = env("GATEWAY_REDIS_PREFIX", "shop:gateway:");
            let limiter = CallerLimiter::redis(&limits, &url, &format!("{prefix}rl:")).await?;
            let store =
                RedisStore::connect(RedisStoreConfig::new(&url).prefix(format!("{prefix}idem:")))
                    .await?;
            tracing::info!(rate = limits.rate, burst = limits.burst, fail_mode = ?limits.fail_mode, %prefix, "rate limits and idempotency keys in Redis");
            (limiter, IdempotencyLayer::new(store))
        }
        None => (
            CallerLimiter::memory(&limits)?,
            IdempotencyLayer::new(MemoryStore::new()),
        ),
    };
    let idempotency = idempotency
        .ttl(std::time::Duration::from_secs(ttl.max(1)))
        .wait_in_flight((wait > 0).then(|| std::time::Duration::from_millis(wait)));
    let tokens = auth::issuer_from_env()?;
    let control = shop_common::admin::registry("gateway", app.health());
    let client = |name: &str, default_url: &str| {
        let url = env(&format!("{}_URL", name.to_ascii_uppercase()), default_url);
        let client = downstream::client(name, &url, &tokens, policy(name)?)?;
        client.register_control(&control);
        Ok::<_, BoxError>(client)
    };
    let mut gateway = Gateway::new(
        ApiKeys::parse(&env("GATEWAY_API_KEYS", "demo-key-0001:demo"))?,
        limiter,
        client("orders", "http://127.0.0.1:8081")?,
        client("inventory", "http://127.0.0.1:8082")?,
        client("notifications", "http://127.0.0.1:8084")?,
    )
    .with_payments(client("payments", "http://127.0.0.1:8083")?)
    .with_idempotency(idempotency);
    // End users' tokens, when an identity provider is configured (its JWKS must load).
    if let Some(users) = UserAuthConfig::from_env()? {
        tracing::info!(jwks = %users.jwks, issuer = %users.issuer, audience = %users.audience, "accepting end-user tokens");
        gateway = gateway.with_users(users.layer().await?);
    }

    // 3. HTTP: the public API in the standard layers (request bodies limited, see
    //    `shop_gateway::api`); probes and /metrics on the admin port only (`ADMIN_ADDR`), never
    //    on this public one.
    let probes = HealthLayer::new(app.health().clone()).prometheus(telemetry.prometheus_handle());
    let service = api::router(gateway);

    // 4. Run: on SIGTERM readiness fails, the listener closes, requests drain, telemetry flushes.
    app.component(telemetry)
        .component(shop_common::admin::with_admin(
            HttpServer::new(server_config(8080)?, service).probes(probes),
            control,
        )?)
        .run()
        .await?;
    Ok(())
}
