//! Oversized fields against the orders binary, through the gateway's public API (its router
//! served in this test, with the chassis layers and a resilient client to orders) and sent to
//! orders directly: the gateway refuses them before forwarding, orders refuses them itself with
//! a 422 naming the field, and no order is written (orders' own `/internal/stats` counts them).
//!
//! Only the HTTP path is under test: orders is given a broker address where nothing listens,
//! so it runs degraded (orders wait in its outbox) and leaves nothing on the shared broker.

use std::process::Stdio;
use std::time::{Duration, Instant};

use chassis_http::auth::SigningKey;
use serde_json::{Map, Value, json};
use shop_common::limits::{
    MAX_CUSTOMER_ID_LEN, MAX_PAYMENT_METHOD_LEN, MAX_SCOPED_IDEMPOTENCY_KEY_LEN, MAX_SKU_LEN,
};
use shop_contract::free_port;
use shop_gateway::api::{self, Gateway};
use shop_gateway::downstream;
use shop_gateway::keys::ApiKeys;
use shop_gateway::rate_limit::{CallerLimiter, RateLimitSettings};

const API_KEY: &str = "orders-limits-key";

fn order(customer_id: &str) -> Value {
    json!({"customer_id": customer_id, "items": [{"sku": "tea", "quantity": 1}], "payment_method": "card_ok"})
}

struct System {
    _orders: tokio::process::Child,
    _dir: tempfile::TempDir,
    orders: String,
    gateway: String,
    token: String,
    http: reqwest::Client,
}

impl System {
    async fn start() -> Self {
        let key = SigningKey::generate_ed25519()
            .unwrap()
            .with_kid("k1")
            .unwrap();
        let pem = key.to_pkcs8_pem().unwrap();
        let issuer = shop_common::auth::issuer_from_pem(&pem, "k1").unwrap();
        let token = issuer.issue("orders", &["orders:write"]).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let orders_url = format!("http://127.0.0.1:{port}");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop-orders"))
            .env_remove("DATABASE_URL")
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("DATA_DIR", dir.path())
            .env(
                "AMQP_URL",
                format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port()),
            )
            .env("SHOP_NAMESPACE", "orders-limits.")
            .env("SERVICE_TOKEN_KID", "k1")
            .env("SERVICE_TOKEN_PUBLIC_KEY", key.public_key_pem().unwrap())
            .env("LOG_FORMAT", "json")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();

        let unused = format!("http://127.0.0.1:{}", free_port());
        let gateway = Gateway::new(
            ApiKeys::parse(&format!("{API_KEY}:limits")).unwrap(),
            CallerLimiter::memory(&RateLimitSettings::new(1000, 1000)).unwrap(),
            downstream::client("orders", &orders_url, &issuer, None).unwrap(),
            downstream::client("inventory", &unused, &issuer, None).unwrap(),
            downstream::client("notifications", &unused, &issuer, None).unwrap(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gateway_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, api::router(gateway)).await });

        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = http
                .get(format!("http://127.0.0.1:{admin_port}/health/ready"))
                .send()
                .await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(Instant::now() < deadline, "orders did not get ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            _orders: child,
            _dir: dir,
            orders: orders_url,
            gateway: gateway_url,
            token: token.as_str().to_owned(),
            http,
        }
    }

    async fn via_gateway(&self, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/api/v1/orders", self.gateway))
            .bearer_auth(API_KEY)
            .json(body)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    async fn direct(&self, body: &Value, key: Option<&str>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/internal/orders", self.orders))
            .bearer_auth(&self.token)
            .json(body);
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    /// Orders by status, from orders' own API.
    async fn counts(&self) -> Map<String, Value> {
        let r: Value = self
            .http
            .get(format!("{}/internal/stats", self.orders))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        r["data"].as_object().cloned().unwrap()
    }
}

fn assert_422(status: u16, body: &Value, field: &str) {
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"]["code"], "unprocessable_entity", "{body}");
    assert_eq!(body["error"]["details"]["field"], field, "{body}");
    assert!(body.to_string().len() < 2048, "the value is not echoed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_fields_are_refused_at_the_gateway_and_by_orders_and_nothing_is_written() {
    let sys = System::start().await;
    let megabyte = "c".repeat(1_000_000);

    // Through the gateway: a 1 MB customer_id is refused at the edge.
    let (status, body) = sys.via_gateway(&order(&megabyte)).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(
        (&body["success"], &body["error"]["code"]),
        (&json!(false), &json!("payload_too_large"))
    );
    let (status, body) = sys
        .via_gateway(&order(&"c".repeat(MAX_CUSTOMER_ID_LEN + 1)))
        .await;
    assert_422(status, &body, "customer_id");

    // Sent to orders directly (past the gateway): orders refuses them itself.
    let (status, body) = sys.direct(&order(&megabyte), None).await;
    assert_422(status, &body, "customer_id");
    let mut long_sku = order("c-1");
    long_sku["items"][0]["sku"] = "s".repeat(MAX_SKU_LEN + 1).into();
    let (status, body) = sys.direct(&long_sku, None).await;
    assert_422(status, &body, "items[0].sku");
    let mut long_method = order("c-1");
    long_method["payment_method"] = "p".repeat(MAX_PAYMENT_METHOD_LEN + 1).into();
    let (status, body) = sys.direct(&long_method, None).await;
    assert_422(status, &body, "payment_method");
    let mut many = order("c-1");
    many["items"] = (0..51)
        .map(|i| json!({"sku": format!("s{i}"), "quantity": 1}))
        .collect();
    let (status, body) = sys.direct(&many, None).await;
    assert_422(status, &body, "items");
    let long_key = "k".repeat(MAX_SCOPED_IDEMPOTENCY_KEY_LEN + 1);
    let (status, body) = sys.direct(&order("c-1"), Some(&long_key)).await;
    assert_422(status, &body, "Idempotency-Key");
    let r = sys
        .http
        .get(format!(
            "{}/internal/orders/{}",
            sys.orders,
            "o".repeat(100)
        ))
        .bearer_auth(&sys.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);

    assert!(sys.counts().await.is_empty(), "no order was written");

    // Within the limits, through the gateway: placed (the count can move).
    let (status, body) = sys.via_gateway(&order("c-1")).await;
    assert_eq!(status, 202, "{body}");
    assert!(body["data"]["order_id"].is_string(), "{body}");
    assert_eq!(sys.counts().await.get("PENDING"), Some(&json!(1)));
}
