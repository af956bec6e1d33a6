//! The gateway: `shop-gateway` (env: `HTTP_ADDR` (default `127.0.0.1:8080`), `GATEWAY_API_KEYS`
//! (`key:client,…`, default `demo-key-0001:demo`), `GATEWAY_RATE_LIMIT` (requests/s per key,
//! default 500), `ORDERS_URL`, `INVENTORY_URL`, `NOTIFICATIONS_URL`; see `shop_common::runtime`).

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chassis_core::BoxError;
use chassis_core::resilience::policy::ResiliencePolicy;
use chassis_http::auth::TokenIssuer;
use chassis_http::error::ApiError;
use serde_json::{Value, json};
use shop_common::runtime::{App, Spec};
use shop_common::web::{ApiErr, ok};
use shop_gateway::keys::ApiKeys;
use shop_gateway::rate_limit::KeyedRateLimiter;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt, service_fn};

/// One downstream request (cloned per retry attempt).
#[derive(Debug, Clone)]
struct Call {
    method: reqwest::Method,
    url: String,
    body: Option<Bytes>,
    idempotency_key: Option<String>,
    authorization: Option<HeaderValue>,
}

type Downstream = BoxCloneSyncService<Call, (StatusCode, Bytes), BoxError>;

fn downstream(name: &str, retries: bool) -> Result<Downstream, BoxError> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let policy: ResiliencePolicy = serde_json::from_value(json!({
        "name": name,
        "timeout": "5s",
        "retry": {"max_attempts": if retries { 3 } else { 1 }, "deadline": "10s", "backoff": {"base": "20ms", "max": "200ms", "jitter": "full"}},
        "circuit_breaker": {"minimum_number_of_calls": 20, "sliding_window_size": 50, "wait_duration_in_open_state": "5s"}
    }))?;
    let inner = service_fn(move |call: Call| {
        let http = http.clone();
        async move {
            let mut headers = http::HeaderMap::new();
            chassis_observability::propagation::inject_current(
                &mut chassis_observability::propagation::HeaderInjector(&mut headers),
            );
            if let Some(token) = call.authorization {
                headers.insert(http::header::AUTHORIZATION, token);
            }
            let mut req = http.request(call.method, &call.url).headers(headers);
            if let Some(key) = call.idempotency_key {
                req = req.header("idempotency-key", key);
            }
            if let Some(body) = call.body {
                req = req.header("content-type", "application/json").body(body);
            }
            let resp = req.send().await?;
            let status = StatusCode::from_u16(resp.status().as_u16())?;
            let body = resp.bytes().await?;
            if status.is_server_error() {
                return Err(BoxError::from(format!("{} answered {status}", call.url)));
            }
            Ok::<_, BoxError>((status, body))
        }
    });
    Ok(BoxCloneSyncService::new(policy.build()?.layer(inner)))
}

#[derive(Clone)]
struct Ctx {
    tokens: Arc<TokenIssuer>,
    keys: ApiKeys,
    limiter: Arc<KeyedRateLimiter>,
    reads: Downstream,
    writes: Downstream,
    orders: String,
    inventory: String,
    notifications: String,
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

    /// Calls a service with a service token for `audience`.
    async fn call(
        &self,
        svc: &Downstream,
        audience: &str,
        mut call: Call,
    ) -> Result<Response, ApiErr> {
        let token = self.tokens.issue(audience, &[]).map_err(ApiErr::internal)?;
        call.authorization = Some(token.bearer_header().map_err(ApiErr::internal)?);
        match svc.clone().oneshot(call).await {
            Ok((status, body)) => Ok((
                status,
                [(http::header::CONTENT_TYPE, "application/json")],
                body,
            )
                .into_response()),
            Err(e) => {
                tracing::warn!(error = %e, "downstream call failed");
                Err(ApiErr::from(ApiError::from_box_error(&e)))
            }
        }
    }
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
    let ctx = Ctx {
        tokens: Arc::new(shop_common::auth::issuer_from_env()?),
        keys: ApiKeys::parse(&env("GATEWAY_API_KEYS", "demo-key-0001:demo"))?,
        limiter: Arc::new(KeyedRateLimiter::new(
            rate,
            u32::try_from(rate as i64).unwrap_or(u32::MAX).max(1),
        )),
        reads: downstream("gateway-reads", true)?,
        writes: downstream("gateway-writes", false)?,
        orders: env("ORDERS_URL", "http://127.0.0.1:8081"),
        inventory: env("INVENTORY_URL", "http://127.0.0.1:8082"),
        notifications: env("NOTIFICATIONS_URL", "http://127.0.0.1:8084"),
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
    let call = Call {
        method: reqwest::Method::POST,
        url: format!("{}/internal/orders", ctx.orders),
        body: Some(Bytes::from(
            serde_json::to_vec(&order).map_err(ApiErr::internal)?,
        )),
        idempotency_key: key,
        authorization: None,
    };
    let resp = ctx.call(&ctx.writes, "orders", call).await?;
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
    let call = Call {
        method: reqwest::Method::GET,
        url: format!("{}/internal/orders/{id}", ctx.orders),
        body: None,
        idempotency_key: None,
        authorization: None,
    };
    ctx.call(&ctx.reads, "orders", call).await
}

async fn products(State(ctx): State<Ctx>, headers: HeaderMap) -> Result<Response, ApiErr> {
    ctx.admit(&headers)?;
    let call = Call {
        method: reqwest::Method::GET,
        url: format!("{}/internal/products", ctx.inventory),
        body: None,
        idempotency_key: None,
        authorization: None,
    };
    ctx.call(&ctx.reads, "inventory", call).await
}

async fn notifications(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiErr> {
    ctx.admit(&headers)?;
    let query = q.map(|q| format!("?{q}")).unwrap_or_default();
    let call = Call {
        method: reqwest::Method::GET,
        url: format!("{}/api/v1/notifications{query}", ctx.notifications),
        body: None,
        idempotency_key: None,
        authorization: None,
    };
    ctx.call(&ctx.reads, "notifications", call).await
}
