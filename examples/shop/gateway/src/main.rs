//! The gateway, `shop-gateway`: the shop's only public API.
//!
//! It runs telemetry and HTTP, nothing else: it keeps no data and publishes nothing, so it has
//! no database, no outbox relay and no RabbitMQ connection. Each request is authenticated with
//! an API key, rate limited per key, and routed to orders, inventory or notifications with the
//! resilient client and a service token (see `shop_gateway::downstream`).
//!
//! Environment: `HTTP_ADDR` (default `127.0.0.1:8080`), `GATEWAY_API_KEYS` (`key:client,…`,
//! default `demo-key-0001:demo`), `GATEWAY_RATE_LIMIT` (requests/s per key, default 500),
//! `ORDERS_URL`, `INVENTORY_URL`, `NOTIFICATIONS_URL`, optionally `ORDERS_POLICY`,
//! `INVENTORY_POLICY`, `NOTIFICATIONS_POLICY` (a JSON `ResiliencePolicy` per downstream,
//! default `shop_gateway::downstream::default_policy`), `SERVICE_TOKEN_PRIVATE_KEY`, and the
//! chassis' `LOG_FORMAT`, `RUST_LOG`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `PRE_STOP_DELAY`, ….

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chassis_core::lifecycle::{App, LifecycleConfig};
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_core::{BoxError, ServiceInfo};
use chassis_http::client::{ClientBody, HttpClient, IDEMPOTENCY_KEY};
use chassis_http::health::HealthLayer;
use chassis_http::layers::StandardLayers;
use chassis_http::server::HttpServer;
use chassis_http::{ApiError, ApiResponse, ResultExt};
use serde_json::{Value, json};
use shop_common::auth;
use shop_common::service::{env, server_config};
use shop_gateway::downstream;
use shop_gateway::keys::ApiKeys;
use shop_gateway::rate_limit::KeyedRateLimiter;
use tower::ServiceBuilder;

#[derive(Clone)]
struct Ctx {
    keys: ApiKeys,
    limiter: Arc<KeyedRateLimiter>,
    orders: HttpClient,
    inventory: HttpClient,
    notifications: HttpClient,
}

impl Ctx {
    /// Authenticates and rate limits; returns the client name.
    fn admit(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let Some(client) = self.keys.client_for(auth) else {
            let mut e =
                ApiError::unauthorized("a valid API key is required (Authorization: Bearer <key>)");
            e = e.with_header(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"shop\""),
            );
            return Err(e);
        };
        if let Err(retry_after) = self.limiter.check(client) {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                chassis_http::error::codes::RATE_LIMITED,
                "rate limit exceeded",
            )
            .with_retry_after(retry_after));
        }
        Ok(client.to_owned())
    }

    /// Sends `req` to `svc` (the client adds the service token, the trace context and the
    /// policy) and answers with the downstream's JSON body and status, or the chassis error for
    /// the failure (see `shop_gateway::downstream`).
    async fn call(
        &self,
        svc: &HttpClient,
        req: http::Request<ClientBody>,
    ) -> Result<Response, ApiError> {
        match svc.execute(req).await {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                Ok((
                    parts.status,
                    [(http::header::CONTENT_TYPE, "application/json")],
                    body,
                )
                    .into_response())
            }
            Err(e) => {
                tracing::warn!(error = %e, attempts = e.attempts(), "downstream call failed");
                Err(downstream::to_api_error(&e))
            }
        }
    }
}

fn get_request(path: String) -> Result<http::Request<ClientBody>, ApiError> {
    http::Request::get(path)
        .header(http::header::ACCEPT, "application/json")
        .body(ClientBody::default())
        .or_internal()
}

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
    // One runtime thread unless SHOP_RUNTIME_THREADS says otherwise (see `shop_common::service::runtime`).
    shop_common::service::runtime()?.block_on(run())
}

async fn run() -> Result<(), BoxError> {
    // 1. Identity and telemetry.
    let info = ServiceInfo::from_env("gateway", env!("CARGO_PKG_VERSION"));
    let telemetry = shop_common::service::telemetry(info)?;
    let app = App::new("gateway").config(LifecycleConfig::from_env()?);

    // 2. The API keys, the rate limiter and a resilient client per downstream service.
    let rate: f64 = env("GATEWAY_RATE_LIMIT", "500").parse()?;
    let tokens = auth::issuer_from_env()?;
    let client = |name: &str, default_url: &str| {
        let url = env(&format!("{}_URL", name.to_ascii_uppercase()), default_url);
        downstream::client(name, &url, &tokens, policy(name)?)
    };
    let ctx = Ctx {
        keys: ApiKeys::parse(&env("GATEWAY_API_KEYS", "demo-key-0001:demo"))?,
        limiter: Arc::new(KeyedRateLimiter::new(
            rate,
            u32::try_from(rate as i64).unwrap_or(u32::MAX).max(1),
        )),
        orders: client("orders", "http://127.0.0.1:8081")?,
        inventory: client("inventory", "http://127.0.0.1:8082")?,
        notifications: client("notifications", "http://127.0.0.1:8084")?,
    };

    // 3. HTTP: the public API in the standard layers; probes and /metrics in front of them.
    let routes = Router::new()
        .route("/api/v1/orders", post(place_order))
        .route("/api/v1/orders/{id}", get(get_order))
        .route("/api/v1/products", get(products))
        .route("/api/v1/notifications", get(notifications))
        .with_state(ctx);
    let probes = HealthLayer::new(app.health().clone()).prometheus(telemetry.prometheus_handle());
    let service = ServiceBuilder::new()
        .layer(probes)
        .service(routes.layer(StandardLayers::new()));

    // 4. Run: on SIGTERM readiness fails, the listener closes, requests drain, telemetry flushes.
    app.component(telemetry)
        .component(HttpServer::new(server_config(8080)?, service))
        .run()
        .await?;
    Ok(())
}

async fn place_order(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let client = ctx.admit(&headers)?;
    let mut order: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON: {e}")))?;
    if !order.is_object() {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    }
    // A key is scoped to its client: two clients may use the same key string.
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(k)) if !k.is_empty() && k.len() <= 200 => Some(format!("{client}:{k}")),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Idempotency-Key must be 1..=200 visible ASCII characters",
            ));
        }
        None => None,
    };
    order["client_id"] = client.into();
    let mut req = http::Request::post("/internal/orders")
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json");
    if let Some(key) = &key {
        // With the key the orders service applies the placement once, so the client may retry
        // it; without one the client sends it exactly once.
        req = req.header(IDEMPOTENCY_KEY, key);
    }
    let req = req
        .body(ClientBody::from(serde_json::to_vec(&order).or_internal()?))
        .or_internal()?;
    let resp = ctx.call(&ctx.orders, req).await?;
    if resp.status() != StatusCode::ACCEPTED {
        return Ok(resp);
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .or_internal()?;
    let upstream: Value = serde_json::from_slice(&bytes).or_internal()?;
    let data = &upstream["data"];
    let placed = json!({"order_id": data["id"], "status": data["status"]});
    Ok(IntoResponse::into_response(ApiResponse::accepted(placed)))
}

/// `?wait_ms=N` of `GET /api/v1/orders/{id}`: answer once the order is final, or after N ms
/// (the orders service caps it at 2 s).
#[derive(Debug, serde::Deserialize)]
struct WaitQuery {
    wait_ms: Option<u64>,
}

async fn get_order(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    ctx.admit(&headers)?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ApiError::bad_request("invalid order id"));
    }
    let path = match q.wait_ms {
        Some(ms) => format!("/internal/orders/{id}?wait_ms={ms}"),
        None => format!("/internal/orders/{id}"),
    };
    ctx.call(&ctx.orders, get_request(path)?).await
}

async fn products(State(ctx): State<Ctx>, headers: HeaderMap) -> Result<Response, ApiError> {
    ctx.admit(&headers)?;
    ctx.call(&ctx.inventory, get_request("/internal/products".into())?)
        .await
}

async fn notifications(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    ctx.admit(&headers)?;
    let query = q.map(|q| format!("?{q}")).unwrap_or_default();
    ctx.call(
        &ctx.notifications,
        get_request(format!("/api/v1/notifications{query}"))?,
    )
    .await
}
