//! The gateway: `shop-gateway` (env: `HTTP_ADDR` (default `127.0.0.1:8080`), `GATEWAY_API_KEYS`
//! (`key:client,…`, default `demo-key-0001:demo`), `GATEWAY_RATE_LIMIT` (requests/s per key,
//! default 500), `ORDERS_URL`, `INVENTORY_URL`, `NOTIFICATIONS_URL`, and optionally
//! `ORDERS_POLICY`, `INVENTORY_POLICY`, `NOTIFICATIONS_POLICY` (JSON `ResiliencePolicy` per
//! downstream, default `shop_gateway::downstream::default_policy`); see `shop_common::runtime`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chassis_core::BoxError;
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_http::client::{ClientBody, HttpClient, IDEMPOTENCY_KEY};
use chassis_http::error::ApiError;
use serde_json::{Value, json};
use shop_common::runtime::{App, Spec};
use shop_common::web::{ApiErr, ok};
use shop_gateway::downstream;
use shop_gateway::keys::ApiKeys;
use shop_gateway::rate_limit::KeyedRateLimiter;

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
    fn admit(&self, headers: &HeaderMap) -> Result<String, ApiErr> {
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
            return Err(ApiErr::from(e));
        };
        if let Err(retry_after) = self.limiter.check(client) {
            return Err(ApiErr::from(
                ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    chassis_http::error::codes::RATE_LIMITED,
                    "rate limit exceeded",
                )
                .with_retry_after(retry_after),
            ));
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
    ) -> Result<Response, ApiErr> {
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
                Err(ApiErr::from(downstream::to_api_error(&e)))
            }
        }
    }
}

fn get_request(path: String) -> Result<http::Request<ClientBody>, ApiErr> {
    http::Request::get(path)
        .header(http::header::ACCEPT, "application/json")
        .body(ClientBody::default())
        .map_err(ApiErr::internal)
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

fn env(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let app = App::start(Spec {
        name: "gateway",
        default_port: 8080,
        schema: "",
    })
    .await?;
    let rate: f64 = env("GATEWAY_RATE_LIMIT", "500").parse()?;
    let tokens = shop_common::auth::issuer_from_env()?;
    let ctx = Ctx {
        keys: ApiKeys::parse(&env("GATEWAY_API_KEYS", "demo-key-0001:demo"))?,
        limiter: Arc::new(KeyedRateLimiter::new(
            rate,
            u32::try_from(rate as i64).unwrap_or(u32::MAX).max(1),
        )),
        orders: downstream::client(
            "orders",
            &env("ORDERS_URL", "http://127.0.0.1:8081"),
            &tokens,
            policy("orders")?,
        )?,
        inventory: downstream::client(
            "inventory",
            &env("INVENTORY_URL", "http://127.0.0.1:8082"),
            &tokens,
            policy("inventory")?,
        )?,
        notifications: downstream::client(
            "notifications",
            &env("NOTIFICATIONS_URL", "http://127.0.0.1:8084"),
            &tokens,
            policy("notifications")?,
        )?,
    };
    let router = Router::new()
        .route("/api/v1/orders", post(place_order))
        .route("/api/v1/orders/{id}", get(get_order))
        .route("/api/v1/products", get(products))
        .route("/api/v1/notifications", get(notifications))
        .with_state(ctx);
    app.serve(router).await
}

async fn place_order(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiErr> {
    let client = ctx.admit(&headers)?;
    let mut order: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiErr::bad_request(format!("invalid JSON: {e}")))?;
    if !order.is_object() {
        return Err(ApiErr::bad_request("the body must be a JSON object"));
    }
    // A key is scoped to its client: two clients may use the same key string.
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(k)) if !k.is_empty() && k.len() <= 200 => Some(format!("{client}:{k}")),
        Some(_) => {
            return Err(ApiErr::bad_request(
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
        .body(ClientBody::from(
            serde_json::to_vec(&order).map_err(ApiErr::internal)?,
        ))
        .map_err(ApiErr::internal)?;
    let resp = ctx.call(&ctx.orders, req).await?;
    if resp.status() != StatusCode::ACCEPTED {
        return Ok(resp);
    }
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .map_err(ApiErr::internal)?;
    let upstream: Value = serde_json::from_slice(&bytes).map_err(ApiErr::internal)?;
    let data = &upstream["data"];
    Ok(ok(
        StatusCode::ACCEPTED,
        json!({"order_id": data["id"], "status": data["status"]}),
    ))
}

async fn get_order(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiErr> {
    ctx.admit(&headers)?;
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ApiErr::bad_request("invalid order id"));
    }
    ctx.call(&ctx.orders, get_request(format!("/internal/orders/{id}"))?)
        .await
}

async fn products(State(ctx): State<Ctx>, headers: HeaderMap) -> Result<Response, ApiErr> {
    ctx.admit(&headers)?;
    ctx.call(&ctx.inventory, get_request("/internal/products".into())?)
        .await
}

async fn notifications(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiErr> {
    ctx.admit(&headers)?;
    let query = q.map(|q| format!("?{q}")).unwrap_or_default();
    ctx.call(
        &ctx.notifications,
        get_request(format!("/api/v1/notifications{query}"))?,
    )
    .await
}
