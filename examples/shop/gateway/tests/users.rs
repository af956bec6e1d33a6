//! The gateway binary with end-user tokens next to its API keys: an identity provider's RS256
//! JWKS in a file, the role map (default, or a TOML file), and stand-ins for orders, inventory
//! and notifications on loopback that check the gateway's service token and keep the orders'
//! `customer_id` like the orders service does. A customer reads its own orders and not
//! another's, an admin reads every order, an API key keeps full access, and missing, tampered
//! or expired credentials are 401.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chassis_http::auth::{RequireServiceTokenLayer, SigningKey};
use serde_json::{Value, json};
use shop_common::auth::verifier_from_pem;
use shop_contract::free_port;
use tempfile::NamedTempFile;

const API_KEY: &str = "users-test-key";
const IDP: &str = "https://idp.test/realms/shop";
/// A committed test-only RSA key (see chassis-http/tests/fixtures/README.md): identity providers
/// publish RS256 keys.
const IDP_KEY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../chassis-http/tests/fixtures/test-only-rsa2048.pem"
);

type Orders = Arc<Mutex<HashMap<String, String>>>;

/// Orders, inventory and notifications on one loopback server, each behind the service-token
/// check for its own audience. Orders keep each order's `customer_id` and answer with it, as
/// the orders service does.
async fn services(gateway_public_key: &str) -> String {
    let orders: Orders = Arc::default();
    let require = |audience: &str| {
        RequireServiceTokenLayer::new(
            verifier_from_pem(audience, gateway_public_key, "shop-1").unwrap(),
        )
    };
    let router = Router::new()
        .route("/internal/orders", post(place))
        .route("/internal/orders/{id}", get(order))
        .route_layer(require("orders"))
        .with_state(orders)
        .merge(
            Router::new()
                .route(
                    "/internal/products",
                    get(|| async { Json(json!({"success": true, "data": [{"sku": "tea"}]})) }),
                )
                .route_layer(require("inventory")),
        )
        .merge(
            Router::new()
                .route(
                    "/api/v1/notifications",
                    get(|| async { Json(json!({"success": true, "data": []})) }),
                )
                .route_layer(require("notifications")),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

async fn place(State(orders): State<Orders>, Json(body): Json<Value>) -> impl IntoResponse {
    let customer = body["customer_id"].as_str().unwrap_or_default().to_owned();
    let mut orders = orders.lock().unwrap();
    let id = format!("0190d5f2-7c1e-7a00-8000-{:012}", orders.len() + 1);
    orders.insert(id.clone(), customer.clone());
    (
        StatusCode::ACCEPTED,
        [("location", format!("/internal/orders/{id}"))],
        Json(
            json!({"success": true, "data": {"id": id, "customer_id": customer, "status": "PENDING"}}),
        ),
    )
}

async fn order(State(orders): State<Orders>, Path(id): Path<String>) -> impl IntoResponse {
    match orders.lock().unwrap().get(&id) {
        Some(customer) => (
            StatusCode::OK,
            Json(
                json!({"success": true, "data": {"id": id, "customer_id": customer, "status": "PENDING"}}),
            ),
        ),
        None => (
            StatusCode::NOT_FOUND,
            Json(
                json!({"success": false, "error": {"code": "order_not_found", "message": "no such order"}}),
            ),
        ),
    }
}

/// The identity provider: its key and its JWKS document in a file.
struct Idp {
    key: SigningKey,
    jwks: NamedTempFile,
}

fn idp() -> Idp {
    let key = SigningKey::from_pem_file(IDP_KEY)
        .unwrap()
        .with_kid("idp-1")
        .unwrap();
    let mut jwks = NamedTempFile::new().unwrap();
    let document = json!({ "keys": [key.public_jwk().unwrap()] });
    jwks.write_all(document.to_string().as_bytes()).unwrap();
    Idp { key, jwks }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

impl Idp {
    /// A user token for `sub`, valid for 5 minutes, with `extra` claims (the roles).
    fn token(&self, sub: &str, extra: Value) -> String {
        let now = now();
        let mut claims =
            json!({"iss": IDP, "aud": "shop-api", "sub": sub, "iat": now, "exp": now + 300});
        for (k, v) in extra.as_object().unwrap() {
            claims[k] = v.clone();
        }
        self.key.sign_claims(&claims).unwrap()
    }
}

/// The gateway binary in front of `services`, with `env` added; its base URL.
async fn gateway(services: &str, service_key: &SigningKey, env: &[(&str, &str)]) -> Gateway {
    let (port, admin_port) = (free_port(), free_port());
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop-gateway"));
    command
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
        .env("GATEWAY_API_KEYS", format!("{API_KEY}:tools"))
        .env("ORDERS_URL", services)
        .env("INVENTORY_URL", services)
        .env("NOTIFICATIONS_URL", services)
        .env(
            "SERVICE_TOKEN_PRIVATE_KEY",
            service_key.to_pkcs8_pem().unwrap(),
        )
        .env("LOG_FORMAT", "json")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("GATEWAY_USER_JWKS")
        .env_remove("GATEWAY_RBAC_FILE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().unwrap();
    let base = format!("http://127.0.0.1:{port}");
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
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the gateway exited: {status}");
        }
        assert!(Instant::now() < deadline, "the gateway did not get ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Gateway {
        _child: child,
        base,
        http,
    }
}

struct Gateway {
    _child: tokio::process::Child,
    base: String,
    http: reqwest::Client,
}

/// Status, `WWW-Authenticate` and JSON body of an answer.
type Answer = (u16, Option<String>, Value);

impl Gateway {
    async fn send(&self, req: reqwest::RequestBuilder, bearer: Option<&str>) -> Answer {
        let req = match bearer {
            Some(b) => req.bearer_auth(b),
            None => req,
        };
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let challenge = r
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_owned());
        (status, challenge, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str, bearer: Option<&str>) -> Answer {
        self.send(self.http.get(format!("{}{path}", self.base)), bearer)
            .await
    }

    async fn place(&self, customer: &str, bearer: Option<&str>) -> Answer {
        let order = json!({"customer_id": customer, "items": [{"sku": "tea", "quantity": 1}], "payment_method": "card_ok"});
        self.send(
            self.http
                .post(format!("{}/api/v1/orders", self.base))
                .json(&order),
            bearer,
        )
        .await
    }

    /// Places an order for `customer` with the API key; its id.
    async fn order_for(&self, customer: &str) -> String {
        let (status, _, body) = self.place(customer, Some(API_KEY)).await;
        assert_eq!(status, 202, "{body}");
        body["data"]["order_id"].as_str().unwrap().to_owned()
    }
}

fn assert_status(answer: &Answer, status: u16, code: &str) {
    assert_eq!(answer.0, status, "{}", answer.2);
    assert_eq!(answer.2["error"]["code"], code, "{}", answer.2);
    let challenge = answer.1.as_deref().unwrap_or_default();
    match code {
        "missing_token" => assert_eq!(challenge, "Bearer realm=\"shop\""),
        code => assert!(
            challenge.contains(&format!("error=\"{code}\"")),
            "{challenge}"
        ),
    }
}

async fn setup(extra_env: &[(&str, &str)]) -> (Idp, Gateway) {
    let idp = idp();
    let service_key = SigningKey::generate_ed25519().unwrap();
    let services = services(&service_key.public_key_pem().unwrap()).await;
    let jwks = idp.jwks.path().to_str().unwrap().to_owned();
    let mut env = vec![
        ("GATEWAY_USER_JWKS", jwks.as_str()),
        ("GATEWAY_USER_ISSUER", IDP),
    ];
    env.extend_from_slice(extra_env);
    let gw = gateway(&services, &service_key, &env).await;
    (idp, gw)
}

#[tokio::test]
async fn customers_read_their_own_orders_admins_read_all_api_keys_keep_full_access() {
    let (idp, gw) = setup(&[]).await;
    let customer = idp.token("c-1", json!({"roles": ["customer"]}));
    let admin = idp.token("ada", json!({"roles": ["admin"]}));

    // An API key is a trusted client: it places and reads orders of any customer, as today.
    let others = gw.order_for("c-2").await;
    let (status, _, body) = gw
        .get(&format!("/api/v1/orders/{others}"), Some(API_KEY))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["customer_id"], "c-2");
    assert_eq!(gw.get("/api/v1/notifications", Some(API_KEY)).await.0, 200);

    // A customer places an order for itself and reads it.
    let (status, _, body) = gw.place("c-1", Some(&customer)).await;
    assert_eq!(status, 202, "{body}");
    let own = body["data"]["order_id"].as_str().unwrap().to_owned();
    let (status, _, body) = gw
        .get(&format!("/api/v1/orders/{own}"), Some(&customer))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["customer_id"], "c-1");

    // Another customer's order: 403, naming the permission that would allow it.
    let answer = gw
        .get(&format!("/api/v1/orders/{others}"), Some(&customer))
        .await;
    assert_status(&answer, 403, "insufficient_scope");
    assert!(answer.1.unwrap().contains("scope=\"orders:read:any\""));
    // Nor may it place one for someone else, or list notifications; products are fine.
    assert_status(
        &gw.place("c-2", Some(&customer)).await,
        403,
        "insufficient_scope",
    );
    assert_status(
        &gw.get("/api/v1/notifications", Some(&customer)).await,
        403,
        "insufficient_scope",
    );
    assert_eq!(gw.get("/api/v1/products", Some(&customer)).await.0, 200);
    // An order that does not exist is 404 for a customer too.
    let missing = "0190d5f2-7c1e-7a00-8000-999999999999";
    assert_eq!(
        gw.get(&format!("/api/v1/orders/{missing}"), Some(&customer))
            .await
            .0,
        404
    );

    // An admin reads every order.
    for id in [&own, &others] {
        let (status, _, body) = gw.get(&format!("/api/v1/orders/{id}"), Some(&admin)).await;
        assert_eq!(status, 200, "{body}");
    }

    // A token without a role the map knows: authenticated, allowed nothing.
    let nobody = idp.token("c-3", json!({"roles": ["visitor"]}));
    assert_status(
        &gw.get(&format!("/api/v1/orders/{own}"), Some(&nobody))
            .await,
        403,
        "insufficient_scope",
    );
}

#[tokio::test]
async fn missing_unknown_tampered_and_expired_credentials_are_401() {
    let (idp, gw) = setup(&[]).await;
    let order = gw.order_for("c-1").await;
    let path = format!("/api/v1/orders/{order}");

    // No token and no key.
    assert_status(&gw.get(&path, None).await, 401, "missing_token");
    // A bearer that is neither a known key nor a token.
    assert_status(
        &gw.get(&path, Some("not-a-known-key")).await,
        401,
        "invalid_token",
    );

    // A customer's token whose roles were edited to admin: the signature no longer matches.
    let token = idp.token("c-2", json!({"roles": ["customer"]}));
    let parts: Vec<&str> = token.split('.').collect();
    let mut claims: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    claims["roles"] = json!(["admin"]);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        parts[2]
    );
    let answer = gw.get(&path, Some(&tampered)).await;
    assert_status(&answer, 401, "invalid_token");
    assert_eq!(answer.2["error"]["details"]["reason"], "invalid_signature");
    // The same token untouched is only a customer, and c-1's order is not its own.
    assert_status(
        &gw.get(&path, Some(&token)).await,
        403,
        "insufficient_scope",
    );

    // Expired an hour ago.
    let then = now() - 3600;
    let expired = idp.token(
        "c-1",
        json!({"roles": ["customer"], "iat": then, "exp": then + 300}),
    );
    let answer = gw.get(&path, Some(&expired)).await;
    assert_status(&answer, 401, "invalid_token");
    assert_eq!(answer.2["error"]["details"]["reason"], "token_expired");

    // For another API, or from another issuer.
    let other_aud = idp.token("c-1", json!({"roles": ["customer"], "aud": "other-api"}));
    assert_status(&gw.get(&path, Some(&other_aud)).await, 401, "invalid_token");
    let other_iss = idp.token(
        "c-1",
        json!({"roles": ["customer"], "iss": "https://evil.test"}),
    );
    assert_status(&gw.get(&path, Some(&other_iss)).await, 401, "invalid_token");
}

#[tokio::test]
async fn a_role_map_file_with_the_groups_claim() {
    let mut file = NamedTempFile::new().unwrap();
    file.write_all(
        br#"
[rbac]
role_claims = ["groups"]

[rbac.roles]
shopper = ["orders:read:own", "orders:write"]
support = ["orders:read:any"]
"#,
    )
    .unwrap();
    let path = file.path().to_str().unwrap().to_owned();
    let (idp, gw) = setup(&[("GATEWAY_RBAC_FILE", &path)]).await;
    let shopper = idp.token("c-7", json!({"groups": ["shopper"]}));
    let support = idp.token("sam", json!({"groups": ["support"]}));
    // `roles` is not read with this map: this token grants nothing.
    let roles_claim = idp.token("c-7", json!({"roles": ["shopper", "support"]}));

    let (status, _, body) = gw.place("c-7", Some(&shopper)).await;
    assert_eq!(status, 202, "{body}");
    let id = body["data"]["order_id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/orders/{id}");
    assert_eq!(gw.get(&path, Some(&shopper)).await.0, 200);
    assert_eq!(gw.get(&path, Some(&support)).await.0, 200);
    assert_status(
        &gw.get(&path, Some(&roles_claim)).await,
        403,
        "insufficient_scope",
    );
    assert_status(
        &gw.place("c-7", Some(&support)).await,
        403,
        "insufficient_scope",
    );
}

#[tokio::test]
async fn without_an_identity_provider_only_api_keys_get_in() {
    let idp = idp();
    let service_key = SigningKey::generate_ed25519().unwrap();
    let services = services(&service_key.public_key_pem().unwrap()).await;
    let gw = gateway(&services, &service_key, &[]).await;
    let order = gw.order_for("c-1").await;
    let path = format!("/api/v1/orders/{order}");
    let admin = idp.token("ada", json!({"roles": ["admin"]}));
    for bearer in [None, Some(admin.as_str())] {
        let (status, challenge, body) = gw.get(&path, bearer).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(challenge.as_deref(), Some("Bearer realm=\"shop\""));
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    assert_eq!(gw.get(&path, Some(API_KEY)).await.0, 200);
}

#[tokio::test]
async fn a_misconfigured_identity_provider_stops_the_start() {
    let service_key = SigningKey::generate_ed25519().unwrap();
    // (settings, what the error names)
    let cases = [
        (
            vec![("GATEWAY_USER_JWKS", "/nonexistent/jwks.json")],
            "GATEWAY_USER_ISSUER",
        ),
        (
            vec![
                ("GATEWAY_USER_JWKS", "/nonexistent/jwks.json"),
                ("GATEWAY_USER_ISSUER", IDP),
            ],
            "/nonexistent/jwks.json",
        ),
    ];
    for (env, named) in cases {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_shop-gateway"));
        command
            .env("HTTP_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("ADMIN_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("GATEWAY_API_KEYS", format!("{API_KEY}:tools"))
            .env(
                "SERVICE_TOKEN_PRIVATE_KEY",
                service_key.to_pkcs8_pem().unwrap(),
            )
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("GATEWAY_RBAC_FILE")
            .kill_on_drop(true);
        for (k, v) in &env {
            command.env(k, v);
        }
        let out = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("the gateway should stop")
            .unwrap();
        assert!(!out.status.success(), "{env:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(named), "{env:?}: {stderr}");
    }
}

#[test]
fn help_lists_the_user_token_settings() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shop-gateway"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for var in [
        "GATEWAY_USER_JWKS",
        "GATEWAY_USER_ISSUER",
        "GATEWAY_USER_AUDIENCE",
        "GATEWAY_RBAC_FILE",
        "GATEWAY_API_KEYS",
    ] {
        assert!(text.contains(var), "{var} missing from --help");
    }
}
