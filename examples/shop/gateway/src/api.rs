//! The public API: its routes, the end-user checks in front of them (API key or user token,
//! per-caller rate limit, request size) and the calls to the services behind them.
//!
//! # Who may call
//!
//! Every route needs `Authorization: Bearer <credential>`:
//! - a configured API key: a trusted client with full access (today's behaviour; the workload,
//!   soak and chaos tools use one);
//! - otherwise, when user tokens are configured ([`crate::users`]), an end user's JWT: it must
//!   verify (401 `invalid_token` if not), and its roles' permissions decide per route (403
//!   `insufficient_scope`): a customer places orders for itself and reads only its own orders
//!   (the order's `customer_id` is the token's `sub`), an admin reads every order.
//!
//! Neither: 401 with `WWW-Authenticate: Bearer realm="shop"`. The rate limit applies per API
//! key's client or per user ([`crate::rate_limit`]; in Redis when the gateway has replicas):
//! `429 rate_limited` with `Retry-After`, `RateLimit-Policy` and `RateLimit`.
//!
//! # Idempotent order placement
//!
//! `POST /api/v1/orders` with an `Idempotency-Key` goes through the chassis idempotency layer
//! (`chassis_http::idempotency`), keyed per caller (two clients may choose the same key): a
//! retry of a placement that was answered replays that answer with `Idempotent-Replayed: true`
//! and does not reach orders again, also when it reaches another replica of the gateway (the
//! keys are in Redis then); a retry while the first still runs is `409
//! idempotency_key_in_flight` (or waits for it, see `GATEWAY_IDEMPOTENCY_WAIT`); the same key
//! with another body is `422 idempotency_key_reused`. The key is also sent on to orders, which
//! applies the placement once by itself. A replay does not count against the rate limit.
//!
//! | route | behind it |
//! |---|---|
//! | `POST /api/v1/orders` | orders `POST /internal/orders` (a write, see below) |
//! | `GET /api/v1/orders/{id}` (`?wait_ms=N`) | orders `GET /internal/orders/{id}` |
//! | `GET /api/v1/orders/{id}/details` | orders, payments and notifications at once (see below) |
//! | `GET /api/v1/products` | inventory `GET /internal/products` |
//! | `GET /api/v1/notifications` | notifications `GET /api/v1/notifications` |
//!
//! # Sizes are checked here, before anything is forwarded
//!
//! - A request body over [`MAX_API_BODY_BYTES`] (64 KiB) is answered `413 payload_too_large`
//!   by the chassis body limit ([`router`] sets it on `StandardLayers`), before the handler runs.
//! - An order placement is read into its typed shape (`customer_id`, `items`,
//!   `payment_method`; other fields are dropped, never forwarded) and each field is checked
//!   against its limit (`shop_common::limits`): a field outside it is `422
//!   unprocessable_entity` naming the field and the limit in `details`. A body that is not such
//!   an object is `400 bad_request`. Both carry the chassis JSON error body with the trace id,
//!   and orders is not called.
//! - An `Idempotency-Key` must be 1..=200 (`MAX_IDEMPOTENCY_KEY_LEN`) visible ASCII
//!   characters (400 otherwise).
//!
//! The services check the same limits themselves (defence in depth): the gateway is not the only
//! way in.
//!
//! # A write that succeeded is never reported as a failure
//!
//! The placement is sent with [`downstream::write`], which looks at the status before reading
//! the body. When orders answers 2xx, the order exists, whatever happens to the answer's body:
//!
//! - the body read whole (at most `downstream::MAX_RELAYED_BODY_BYTES`, 1 MiB) and an order
//!   in it: the status orders gave (202), `{"order_id", "status"}` in the success envelope,
//!   and `Location: /api/v1/orders/{id}`;
//! - the body larger than that, cut off, or not the expected JSON: still orders' status (202),
//!   never a 5xx; the order id comes from orders' `Location` header (orders always sends it,
//!   before the body), answered as `Location: /api/v1/orders/{id}` and in
//!   `{"order_id": id, "status": null, "detail": "…"}`; `order_id` is `null` only if orders
//!   sent no usable `Location`. The client knows the order was placed and where to read it
//!   (`GET /api/v1/orders/{id}`), so it does not place it again. The gateway logs the lost
//!   answer once, as a warning.
//!
//! This is what a client of an API gateway expects: the status of a write is the service's
//! decision and is relayed as it was taken; only the representation that could not be relayed
//! is replaced (as proxies do with `Location` on a `201`/`202`). A `5xx` would tell the client
//! the write failed, and a client retrying without an idempotency key would place a second
//! order. A non-2xx answer is mapped as in [`downstream`] (its body is read up to the same
//! limit; a longer or unreadable one keeps the status with a generic code).
//!
//! # One call, three services: `GET /api/v1/orders/{id}/details`
//!
//! The order's details gather, concurrently and within [`DETAILS_DEADLINE`] for the whole
//! call, the order (orders: required), its payment (payments) and its notifications
//! (notifications), each through its resilient client:
//!
//! ```json
//! {"success":true,"data":{"order":{..},"payment":{..}|null,"notifications":[..]|null,
//!  "missing":[{"part":"payment","reason":"payments is unavailable: .."}]},"traceId":".."}
//! ```
//!
//! The order decides the answer: if orders fails, times out or says 404, so does the call, and
//! a customer gets the details of its own orders only (the same rule as `GET
//! /api/v1/orders/{id}`). A payment or the notifications that fail or miss the deadline are left
//! out (`null`) and named in `missing` with the reason, so the client shows what it has
//! instead of an error; a payment orders never asked for (`404` from payments, e.g. an order
//! refused for stock) is `null` and not missing.
//!
//! # Example
//! ```
//! use shop_gateway::api::MAX_API_BODY_BYTES;
//!
//! assert_eq!(MAX_API_BODY_BYTES, 64 * 1024);
//! ```

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chassis_http::auth::user::{RequireUserTokenLayer, UserPrincipal};
use chassis_http::client::{ClientBody, HttpClient, IDEMPOTENCY_KEY};
use chassis_http::layers::StandardLayers;
use chassis_http::{ApiError, ApiResponse, ResultExt};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use shop_common::events::Item;
use shop_common::limits;
use tower::{Layer, ServiceExt};

use chassis_http::idempotency::{IdempotencyLayer, MemoryStore};

use crate::downstream::{self, WriteAnswer};
use crate::keys::ApiKeys;
use crate::rate_limit::CallerLimiter;
use crate::users::permissions;

pub use shop_common::limits::MAX_API_BODY_BYTES;

/// What the handlers share: the API keys, the user-token layer (if configured), the rate
/// limiter and a client per service.
#[derive(Clone, Debug)]
pub struct Gateway {
    keys: ApiKeys,
    users: Option<RequireUserTokenLayer>,
    limiter: Arc<CallerLimiter>,
    /// The `Idempotency-Key` layer of order placement.
    idempotency: IdempotencyLayer,
    orders: HttpClient,
    inventory: HttpClient,
    notifications: HttpClient,
    /// Only the order details read payments; without it their payment part is missing.
    payments: Option<HttpClient>,
}

/// How long `GET /api/v1/orders/{id}/details` waits for its parts, all together (see the
/// [module docs](self)).
pub const DETAILS_DEADLINE: Duration = Duration::from_secs(3);

/// Who a request comes from, once [`router`]'s authentication let it in.
#[derive(Clone, Debug)]
pub enum Caller {
    /// A trusted client with an API key (its name): full access.
    Client(String),
    /// An end user with a verified token: what its permissions allow.
    User(UserPrincipal),
}

/// The client of the request's API key, as the authentication step found it.
#[derive(Clone, Debug)]
struct ApiClient(String);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        if let Some(ApiClient(client)) = parts.extensions.get::<ApiClient>() {
            return Ok(Caller::Client(client.clone()));
        }
        if let Some(user) = parts.extensions.get::<UserPrincipal>() {
            return Ok(Caller::User(user.clone()));
        }
        // Only reached if the authentication step is missing from the stack: fail closed.
        Err(unauthorized())
    }
}

impl Caller {
    /// The rate-limit key and idempotency-key scope: the client's name, or `user:<sub>`.
    fn scope(&self) -> String {
        match self {
            Caller::Client(client) => client.clone(),
            Caller::User(user) => format!("user:{}", user.subject),
        }
    }

    /// `Ok` for a client; for a user, `Ok` when its roles grant `permission`, else 403.
    fn require(&self, permission: &str) -> Result<(), ApiError> {
        match self {
            Caller::Client(_) => Ok(()),
            Caller::User(user) => Ok(user.require(permission)?),
        }
    }
}

/// 401 for a request with neither a known API key nor (when configured) a user token.
fn unauthorized() -> ApiError {
    ApiError::unauthorized("a valid API key is required (Authorization: Bearer <key>)").with_header(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"shop\""),
    )
}

impl Gateway {
    /// The gateway over these keys, limiter and downstream clients, with idempotency keys kept
    /// in memory (see [`with_idempotency`](Self::with_idempotency)).
    pub fn new(
        keys: ApiKeys,
        limiter: CallerLimiter,
        orders: HttpClient,
        inventory: HttpClient,
        notifications: HttpClient,
    ) -> Self {
        Self {
            keys,
            users: None,
            limiter: Arc::new(limiter),
            idempotency: idempotency_layer(IdempotencyLayer::new(MemoryStore::new())),
            orders,
            inventory,
            notifications,
            payments: None,
        }
    }

    /// Also reads payments, for the order details.
    pub fn with_payments(mut self, payments: HttpClient) -> Self {
        self.payments = Some(payments);
        self
    }

    /// Also accepts end users' bearer JWTs, checked by `users` (see [`crate::users`]).
    pub fn with_users(mut self, users: RequireUserTokenLayer) -> Self {
        self.users = Some(users);
        self
    }

    /// Keeps the idempotency keys of order placement with `layer` (e.g. on a Redis store shared
    /// by the replicas); the gateway sets the scope (per caller), methods and size limits.
    pub fn with_idempotency(mut self, layer: IdempotencyLayer) -> Self {
        self.idempotency = idempotency_layer(layer);
        self
    }

    /// Rate limits the caller (per API key client, per user).
    async fn admit(&self, caller: &Caller) -> Result<(), ApiError> {
        self.limiter
            .check(&caller.scope())
            .await
            .map_err(|e| ApiError::from_core(&e))
    }

    /// Sends a read `req` to `svc` (the client adds the service token, the trace context and
    /// the policy) and answers with the downstream's JSON body and status, or the chassis error
    /// for the failure (see [`downstream`]).
    async fn call(
        &self,
        svc: &HttpClient,
        req: http::Request<ClientBody>,
    ) -> Result<Response, ApiError> {
        Ok(relay(Self::fetch(svc, req).await?))
    }

    /// Sends a read `req` to `svc` and returns its answer, or the chassis error for the failure.
    async fn fetch(
        svc: &HttpClient,
        req: http::Request<ClientBody>,
    ) -> Result<http::Response<Bytes>, ApiError> {
        svc.execute(req).await.map_err(|e| {
            tracing::warn!(error = %e, attempts = e.attempts(), "downstream call failed");
            downstream::to_api_error(&e)
        })
    }
}

/// `layer` scoped per caller (API key client or user, as [`authenticate`] found it), on `POST`
/// only, with the gateway's key and body limits.
fn idempotency_layer(layer: IdempotencyLayer) -> IdempotencyLayer {
    layer
        .methods([http::Method::POST])
        .max_key_length(limits::MAX_IDEMPOTENCY_KEY_LEN)
        .max_request_bytes(MAX_API_BODY_BYTES)
        .scope(|parts: &Parts| {
            if let Some(ApiClient(client)) = parts.extensions.get::<ApiClient>() {
                return Some(client.clone());
            }
            let user = parts.extensions.get::<UserPrincipal>()?;
            Some(format!("user:{}", user.subject))
        })
}

/// A downstream's JSON answer, relayed with its status.
fn relay(resp: http::Response<Bytes>) -> Response {
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        [(http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// Lets a request in with a known API key ([`Caller::Client`]) or, when configured, a valid
/// user token ([`Caller::User`], verified by the chassis user-token layer, which answers 401
/// itself); otherwise 401.
async fn authenticate(State(gw): State<Gateway>, mut req: Request, next: Next) -> Response {
    let client = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|auth| gw.keys.client_for(auth))
        .map(str::to_owned);
    if let Some(client) = client {
        req.extensions_mut().insert(ApiClient(client));
        return next.run(req).await;
    }
    match &gw.users {
        Some(users) => match users.layer(next).oneshot(req).await {
            Ok(response) => response.map(axum::body::Body::new),
            Err(never) => match never {},
        },
        None => IntoResponse::into_response(unauthorized()),
    }
}

/// The public API's routes in the chassis standard layers, with the request body limited to
/// [`MAX_API_BODY_BYTES`]. Probes and `/metrics` are not here: the server serves them on its
/// admin port only (see `main.rs`), so this public router answers them 404.
pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/api/v1/orders", post(place_order))
        // Inside the authentication (added below, so it runs first): the scope reads the caller.
        .route_layer(gateway.idempotency.clone())
        .route("/api/v1/orders/{id}", get(get_order))
        .route("/api/v1/orders/{id}/details", get(order_details))
        .route("/api/v1/products", get(products))
        .route("/api/v1/notifications", get(notifications))
        // On the routes only, so an unknown path stays a 404.
        .route_layer(middleware::from_fn_with_state(
            gateway.clone(),
            authenticate,
        ))
        .with_state(gateway)
        .layer(StandardLayers::new().body_limit(MAX_API_BODY_BYTES))
}

fn get_request(path: String) -> Result<http::Request<ClientBody>, ApiError> {
    http::Request::get(path)
        .header(http::header::ACCEPT, "application/json")
        .body(ClientBody::default())
        .or_internal()
}

/// An order placement as the public API takes it; only these fields are forwarded.
#[derive(Debug, Deserialize)]
struct PlaceOrder {
    customer_id: String,
    items: Vec<Item>,
    payment_method: String,
}

/// What orders is sent: the placement and the client it came from.
#[derive(Debug, Serialize)]
struct ForwardedOrder<'a> {
    customer_id: &'a str,
    items: &'a [Item],
    payment_method: &'a str,
    client_id: &'a str,
}

async fn place_order(
    State(gw): State<Gateway>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    gw.admit(&caller).await?;
    caller.require(permissions::ORDERS_WRITE)?;
    let client = caller.scope();
    let order: PlaceOrder = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be an order {{customer_id, items, payment_method}}: {e}"
        ))
    })?;
    limits::check_order(&order.customer_id, &order.items, &order.payment_method).map_err(|e| {
        tracing::info!(field = e.field(), error = %e, "order refused at the edge");
        ApiError::from(e)
    })?;
    if let Caller::User(user) = &caller
        && order.customer_id != user.subject
    {
        // Placing an order for someone else.
        caller.require(permissions::ORDERS_WRITE_ANY)?;
    }
    // A key is scoped to its client (or user): two clients may use the same key string.
    let key = match headers.get("idempotency-key").map(|v| v.to_str()) {
        Some(Ok(k)) if !k.is_empty() && k.len() <= limits::MAX_IDEMPOTENCY_KEY_LEN => {
            Some(format!("{client}:{k}"))
        }
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "Idempotency-Key must be 1..={} visible ASCII characters",
                limits::MAX_IDEMPOTENCY_KEY_LEN
            )));
        }
        None => None,
    };
    let forwarded = ForwardedOrder {
        customer_id: &order.customer_id,
        items: &order.items,
        payment_method: &order.payment_method,
        client_id: match &caller {
            Caller::Client(client) => client,
            Caller::User(_) => "user",
        },
    };
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
            serde_json::to_vec(&forwarded).or_internal()?,
        ))
        .or_internal()?;
    let answer = downstream::write(&gw.orders, req).await?;
    Ok(placed(&answer))
}

/// The order id in orders' `Location: /internal/orders/{id}`, if it is one.
fn id_from_location(headers: &HeaderMap) -> Option<&str> {
    let location = headers.get(http::header::LOCATION)?.to_str().ok()?;
    let id = location.strip_prefix("/internal/orders/")?;
    valid_order_id(id).then_some(id)
}

fn valid_order_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= limits::MAX_ORDER_ID_LEN
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The answer to a placement orders accepted (see the [module docs](self)): its status, the
/// order id and status when its body could be read, the id from its `Location` otherwise.
fn placed(answer: &WriteAnswer) -> Response {
    let from_body = answer
        .body
        .as_deref()
        .and_then(|b| serde_json::from_slice::<Value>(b).ok())
        .and_then(|upstream| {
            let data = upstream.get("data")?;
            let id = data.get("id")?.as_str().filter(|id| valid_order_id(id))?;
            Some((
                id.to_owned(),
                data.get("status").cloned().unwrap_or(Value::Null),
            ))
        });
    let (id, data) = match from_body {
        Some((id, status)) => (Some(id.clone()), json!({"order_id": id, "status": status})),
        None => {
            let id = id_from_location(&answer.headers).map(str::to_owned);
            tracing::warn!(
                status = answer.status.as_u16(),
                order_id = id.as_deref().unwrap_or_default(),
                "orders accepted the order but its answer could not be relayed"
            );
            let detail = format!(
                "orders accepted the order (status {}); its answer was not relayed (larger than {} bytes or unreadable): read the order at its Location",
                answer.status.as_u16(),
                downstream::MAX_RELAYED_BODY_BYTES
            );
            (
                id.clone(),
                json!({"order_id": id, "status": null, "detail": detail}),
            )
        }
    };
    let mut resp = ApiResponse::ok(data).with_status(answer.status);
    if let Some(location) =
        id.and_then(|id| HeaderValue::from_str(&format!("/api/v1/orders/{id}")).ok())
    {
        resp = resp.with_header(http::header::LOCATION, location);
    }
    IntoResponse::into_response(resp)
}

/// `?wait_ms=N` of `GET /api/v1/orders/{id}`: answer once the order is final, or after N ms
/// (the orders service caps it at 2 s).
#[derive(Debug, Deserialize)]
struct WaitQuery {
    wait_ms: Option<u64>,
}

/// `GET /api/v1/orders/{id}`. A user with `orders:read:own` only gets the order if its
/// `customer_id` is the user's `sub` (403 otherwise; answers other than 2xx are relayed as they
/// are, so a missing order is 404 for everyone).
async fn get_order(
    State(gw): State<Gateway>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> Result<Response, ApiError> {
    gw.admit(&caller).await?;
    let own_only = own_orders_only(&caller)?;
    if !valid_order_id(&id) {
        return Err(ApiError::bad_request("invalid order id"));
    }
    let path = match q.wait_ms {
        Some(ms) => format!("/internal/orders/{id}?wait_ms={ms}"),
        None => format!("/internal/orders/{id}"),
    };
    let answer = Gateway::fetch(&gw.orders, get_request(path)?).await?;
    if own_only && answer.status().is_success() {
        check_owner(&caller, &id, answer.body())?;
    }
    Ok(relay(answer))
}

/// Whether `caller` may read only its own orders (a user with `orders:read:own`); 403 for a
/// user who may read none.
fn own_orders_only(caller: &Caller) -> Result<bool, ApiError> {
    Ok(match caller {
        Caller::Client(_) => false,
        Caller::User(user) => {
            user.require_any(&[permissions::ORDERS_READ_ANY, permissions::ORDERS_READ_OWN])?
                == permissions::ORDERS_READ_OWN
        }
    })
}

/// 403 unless the order in orders' answer `body` belongs to the user `caller`.
fn check_owner(caller: &Caller, id: &str, body: &[u8]) -> Result<(), ApiError> {
    let Caller::User(user) = caller else {
        return Ok(());
    };
    let owner = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["data"]["customer_id"].as_str().map(str::to_owned));
    if owner.as_deref() != Some(user.subject.as_str()) {
        tracing::info!(sub = %user.subject, order = %id, "order of another customer refused");
        // The error names orders:read:any, the permission that would have let it through.
        user.require(permissions::ORDERS_READ_ANY)?;
    }
    Ok(())
}

/// `GET /api/v1/orders/{id}/details`: see the [module docs](self).
async fn order_details(
    State(gw): State<Gateway>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    gw.admit(&caller).await?;
    let own_only = own_orders_only(&caller)?;
    if !valid_order_id(&id) {
        return Err(ApiError::bad_request("invalid order id"));
    }
    let deadline = tokio::time::Instant::now() + DETAILS_DEADLINE;
    let part = |client: Option<&HttpClient>, path: String| {
        let client = client.cloned();
        async move {
            let Some(client) = client else {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    chassis_http::error::codes::UNAVAILABLE,
                    "not configured at the gateway",
                ));
            };
            let answer = Gateway::fetch(&client, get_request(path)?);
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(answer) => answer,
                Err(_) => Err(ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    chassis_http::error::codes::TIMEOUT,
                    format!(
                        "no answer within the details deadline of {} ms",
                        DETAILS_DEADLINE.as_millis()
                    ),
                )),
            }
        }
    };
    let (order, payment, notifications) = tokio::join!(
        part(Some(&gw.orders), format!("/internal/orders/{id}")),
        part(gw.payments.as_ref(), format!("/internal/payments/{id}")),
        part(
            Some(&gw.notifications),
            format!("/api/v1/notifications?order_id={id}")
        ),
    );
    // The order decides: its failure, timeout or 404 is the answer.
    let order = order?;
    if !order.status().is_success() {
        return Ok(relay(order));
    }
    if own_only {
        check_owner(&caller, &id, order.body())?;
    }
    let mut missing = Vec::new();
    let mut optional = |name: &str, answer: Result<http::Response<Bytes>, ApiError>| {
        match answer {
            Ok(resp) if resp.status().is_success() => data_of(resp.body()).or_else(|| {
                missing
                    .push(json!({"part": name, "reason": "its answer is not the expected JSON"}));
                None
            }),
            // Nothing to show rather than a failure: e.g. no payment for an order refused
            // before payment.
            Ok(resp) if resp.status() == StatusCode::NOT_FOUND => None,
            Ok(resp) => {
                missing
                    .push(json!({"part": name, "reason": format!("answered {}", resp.status())}));
                None
            }
            Err(e) => {
                missing.push(json!({"part": name, "reason": e.message()}));
                None
            }
        }
    };
    let payment = optional("payment", payment);
    let notifications = optional("notifications", notifications);
    Ok(IntoResponse::into_response(ApiResponse::ok(json!({
        "order": data_of(order.body()),
        "payment": payment,
        "notifications": notifications,
        "missing": missing,
    }))))
}

/// The `data` of a success envelope.
fn data_of(body: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|mut v| v.get_mut("data").map(Value::take))
}

async fn products(State(gw): State<Gateway>, caller: Caller) -> Result<Response, ApiError> {
    gw.admit(&caller).await?;
    caller.require(permissions::PRODUCTS_READ)?;
    gw.call(&gw.inventory, get_request("/internal/products".into())?)
        .await
}

async fn notifications(
    State(gw): State<Gateway>,
    caller: Caller,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    gw.admit(&caller).await?;
    caller.require(permissions::NOTIFICATIONS_READ)?;
    let query = q.map(|q| format!("?{q}")).unwrap_or_default();
    gw.call(
        &gw.notifications,
        get_request(format!("/api/v1/notifications{query}"))?,
    )
    .await
}
