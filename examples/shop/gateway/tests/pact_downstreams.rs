//! The gateway's contracts with the services it calls (Pact, consumer side): for each call the
//! gateway makes, the request it sends and the parts of the answer it reads, as pact files in
//! `examples/shop/pacts/` (`gateway-orders.json`, `gateway-inventory.json`,
//! `gateway-notifications.json`, `gateway-payments.json`). Each service's `pact_verify` test
//! replays them against the real service.
//!
//! The gateway under test is the real one: [`api::router`] over [`downstream::client`]s
//! pointed at the Pact mock servers, called through its public API with an API key. A mock
//! server fails the test if the gateway sent a request the pact does not describe, or did not
//! send one it does.

use axum::Router;
use axum::body::Body;
use chassis_http::auth::{SigningKey, TokenIssuer};
use http::{HeaderMap, Request, StatusCode};
use pact_consumer::prelude::*;
use serde_json::{Value, json};
use shop_contract::pact;
use shop_gateway::api::{self, Gateway};
use shop_gateway::downstream;
use shop_gateway::keys::ApiKeys;
use shop_gateway::rate_limit::{CallerLimiter, RateLimitSettings};
use tower::ServiceExt;

const API_KEY: &str = "pact-key-0001";
/// The order the read interactions are about.
const ORDER: &str = "o-pact-1";
/// An order no service knows.
const NO_ORDER: &str = "o-pact-missing";
/// A URL where nothing is expected to be called.
const UNUSED: &str = "http://127.0.0.1:9";

/// The gateway's public API with its clients to these downstream URLs.
fn gateway(orders: &str, inventory: &str, notifications: &str, payments: &str) -> Router {
    let key = SigningKey::generate_ed25519().unwrap();
    let issuer = TokenIssuer::builder("gateway")
        .signing_key(key)
        .build()
        .unwrap();
    let client = |name: &str, url: &str| downstream::client(name, url, &issuer, None).unwrap();
    let gw = Gateway::new(
        ApiKeys::parse(&format!("{API_KEY}:pact")).unwrap(),
        CallerLimiter::memory(&RateLimitSettings::new(1000, 1000)).unwrap(),
        client("orders", orders),
        client("inventory", inventory),
        client("notifications", notifications),
    )
    .with_payments(client("payments", payments));
    api::router(gw)
}

/// Calls the gateway's public API; the answer's status, headers and JSON body.
async fn call(
    gw: &Router,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, HeaderMap, Value) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("content-type", "application/json");
    let req = match body {
        Some(body) => req.body(Body::from(body.to_string())).unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    let resp = gw.clone().oneshot(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, json)
}

/// The order as orders answers it, with what the gateway reads (`id`, `customer_id` for the
/// owner check, `status`) and relays.
fn order_body() -> JsonPattern {
    json_pattern!({
        "data": {
            "id": like!(ORDER),
            "customer_id": like!("c-pact"),
            "status": term!("^(PENDING|CONFIRMED|FAILED)$", "PENDING"),
            "payment_method": like!("card_ok"),
            "created_ms": like!(1_765_000_000_000_i64)
        }
    })
}

/// `GET /internal/orders/{id}` of an order that exists. Orders' ids are its own, so the
/// verification places an order and puts its id into the path (`${orderId}`).
fn order_exists(pact: &mut PactBuilder) {
    pact.interaction("a read of an order", "", |mut i| {
        i.given_with_params("an order exists", &json!({"customer_id": "c-pact"}));
        i.request
            .get()
            .path_from_provider_state(
                "/internal/orders/${orderId}",
                format!("/internal/orders/{ORDER}"),
            )
            .header("accept", "application/json");
        i.response
            .ok()
            .content_type("application/json")
            .json_body(order_body());
        i
    });
}

/// `GET /api/v1/notifications?order_id=…` of an order with a notification.
fn order_notified(pact: &mut PactBuilder) {
    pact.interaction("a read of an order's notifications", "", |mut i| {
        i.given_with_params("order has a notification", &json!({"order_id": ORDER}));
        i.request
            .get()
            .path("/api/v1/notifications")
            .query_param("order_id", ORDER)
            .header("accept", "application/json");
        i.response
            .ok()
            .content_type("application/json")
            .json_body(json_pattern!({
                "data": each_like!({
                    "id": like!("0193a0b1-0000-7000-8000-000000000001"),
                    "order_id": ORDER,
                    "customer_id": like!("c-pact"),
                    "kind": term!("^order_(confirmed|failed)$", "order_confirmed"),
                    "message": like!("Your order is confirmed."),
                    "created_ms": like!(1_765_000_000_000_i64)
                })
            }));
        i
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn places_an_order() {
    let _writing = shop_contract::write_lock().await;
    let mut orders = pact("gateway", "orders");
    orders.interaction("a placement of an order", "", |mut i| {
        i.request
            .post()
            .path("/internal/orders")
            .content_type("application/json")
            .header("accept", "application/json")
            .json_body(json_pattern!({
                "customer_id": like!("c-pact"),
                "items": each_like!({"sku": like!("tea"), "quantity": like!(2)}),
                "payment_method": like!("card_ok"),
                "client_id": like!("pact")
            }));
        i.response
            .status(202)
            .header(
                "location",
                term!(
                    "^/internal/orders/[A-Za-z0-9-]+$",
                    format!("/internal/orders/{ORDER}")
                ),
            )
            .content_type("application/json")
            .json_body(json_pattern!({
                "data": {
                    "id": term!("^[A-Za-z0-9-]+$", ORDER),
                    "status": like!("PENDING")
                }
            }));
        i
    });
    orders.interaction(
        "a placement of an order with an idempotency key",
        "",
        |mut i| {
            i.request
                .post()
                .path("/internal/orders")
                .content_type("application/json")
                .header("accept", "application/json")
                // The caller's key, scoped to the caller: `<client>:<key>`.
                .header("idempotency-key", term!("^[^:]+:.+$", "pact:k-1"))
                .json_body(json_pattern!({
                    "customer_id": like!("c-pact"),
                    "items": each_like!({"sku": like!("tea"), "quantity": like!(2)}),
                    "payment_method": like!("card_ok"),
                    "client_id": like!("pact")
                }));
            i.response
                .status(202)
                .header(
                    "location",
                    term!(
                        "^/internal/orders/[A-Za-z0-9-]+$",
                        format!("/internal/orders/{ORDER}")
                    ),
                )
                .content_type("application/json")
                .json_body(json_pattern!({
                    "data": {
                        "id": term!("^[A-Za-z0-9-]+$", ORDER),
                        "status": like!("PENDING")
                    }
                }));
            i
        },
    );
    let server = orders.start_mock_server(None, None);
    let gw = gateway(server.url().as_str(), UNUSED, UNUSED, UNUSED);

    let order = json!({"customer_id": "c-pact", "items": [{"sku": "tea", "quantity": 2}], "payment_method": "card_ok"});
    let (status, headers, body) = call(&gw, "POST", "/api/v1/orders", Some(order.clone())).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["data"]["order_id"], ORDER, "{body}");
    assert_eq!(body["data"]["status"], "PENDING", "{body}");
    assert_eq!(headers["location"], format!("/api/v1/orders/{ORDER}"));

    let req = Request::post("/api/v1/orders")
        .header("authorization", format!("Bearer {API_KEY}"))
        .header("content-type", "application/json")
        .header("idempotency-key", "k-1")
        .body(Body::from(order.to_string()))
        .unwrap();
    let resp = gw.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_an_order() {
    let _writing = shop_contract::write_lock().await;
    let mut orders = pact("gateway", "orders");
    order_exists(&mut orders);
    orders.interaction("a read of an order that does not exist", "", |mut i| {
        i.request
            .get()
            .path(format!("/internal/orders/{NO_ORDER}"))
            .header("accept", "application/json");
        // The gateway relays a 4xx with the service's own error code and message.
        i.response
            .not_found()
            .content_type("application/json")
            .json_body(json_pattern!({
                "error": {"code": "not_found", "message": like!("no such order")}
            }));
        i
    });
    let server = orders.start_mock_server(None, None);
    let gw = gateway(server.url().as_str(), UNUSED, UNUSED, UNUSED);

    let (status, _, body) = call(&gw, "GET", &format!("/api/v1/orders/{ORDER}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["id"], ORDER);
    assert_eq!(body["data"]["customer_id"], "c-pact");

    let (status, _, body) = call(&gw, "GET", &format!("/api/v1/orders/{NO_ORDER}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_products() {
    let _writing = shop_contract::write_lock().await;
    let mut inventory = pact("gateway", "inventory");
    inventory.interaction("a read of the catalogue", "", |mut i| {
        i.given_with_params("product in stock", &json!({"sku": "tea"}));
        i.request
            .get()
            .path("/internal/products")
            .header("accept", "application/json");
        i.response
            .ok()
            .content_type("application/json")
            .json_body(json_pattern!({
                "data": each_like!({
                    "sku": like!("tea"),
                    "name": like!("Green tea"),
                    "price_cents": like!(450),
                    "stock": like!(100)
                })
            }));
        i
    });
    let server = inventory.start_mock_server(None, None);
    let gw = gateway(UNUSED, server.url().as_str(), UNUSED, UNUSED);

    let (status, _, body) = call(&gw, "GET", "/api/v1/products", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"][0]["sku"], "tea", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_notifications() {
    let _writing = shop_contract::write_lock().await;
    let mut notifications = pact("gateway", "notifications");
    order_notified(&mut notifications);
    let server = notifications.start_mock_server(None, None);
    let gw = gateway(UNUSED, UNUSED, server.url().as_str(), UNUSED);

    let path = format!("/api/v1/notifications?order_id={ORDER}");
    let (status, _, body) = call(&gw, "GET", &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"][0]["order_id"], ORDER, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathers_order_details() {
    let _writing = shop_contract::write_lock().await;
    let mut orders = pact("gateway", "orders");
    order_exists(&mut orders);
    let mut notifications = pact("gateway", "notifications");
    order_notified(&mut notifications);
    let mut payments = pact("gateway", "payments");
    payments.interaction("a read of an order's payment", "", |mut i| {
        i.given_with_params("order has a payment", &json!({"order_id": ORDER}));
        i.request
            .get()
            .path(format!("/internal/payments/{ORDER}"))
            .header("accept", "application/json");
        i.response
            .ok()
            .content_type("application/json")
            .json_body(json_pattern!({
                "data": {
                    "order_id": ORDER,
                    "status": term!("^(PENDING|CHARGED|DECLINED|FAILED|REFUNDED|CANCELLED)$", "CHARGED")
                }
            }));
        i
    });
    let orders = orders.start_mock_server(None, None);
    let notifications = notifications.start_mock_server(None, None);
    let payments = payments.start_mock_server(None, None);
    let gw = gateway(
        orders.url().as_str(),
        UNUSED,
        notifications.url().as_str(),
        payments.url().as_str(),
    );

    let path = format!("/api/v1/orders/{ORDER}/details");
    let (status, _, body) = call(&gw, "GET", &path, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let data = &body["data"];
    assert_eq!(data["order"]["id"], ORDER, "{body}");
    assert_eq!(data["payment"]["status"], "CHARGED", "{body}");
    assert_eq!(data["notifications"][0]["order_id"], ORDER, "{body}");
    assert_eq!(data["missing"], json!([]), "{body}");
}
