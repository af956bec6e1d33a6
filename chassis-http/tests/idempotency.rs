//! The `Idempotency-Key` layer on a real server on 127.0.0.1 with a real HTTP client, behind the
//! standard layers: replays, 422 for a reused key, 409 (or a wait) for a key in flight, a key
//! released after a 5xx, expiry, the size limits, malformed and missing keys, scopes. Every case
//! runs against the in-memory store and against the Redis on 127.0.0.1:6379 (feature `redis`,
//! a key prefix of its own per test); with Redis, two servers sharing one store replay each
//! other's responses, and a Redis of the test's own that is killed makes requests a prompt 503.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use chassis_http::idempotency::{IdempotencyLayer, IdempotencyStore, MemoryStore};
use chassis_http::layers::StandardLayers;
use common::stores::{self, Reply, big_body, send, store_cases};
#[cfg(feature = "redis")]
use common::stores::{REDIS, unique_prefix};
use http::{HeaderMap, Method, StatusCode};
use serde_json::json;
use tokio::sync::Barrier;
use tower::ServiceBuilder;

/// What the handlers count and wait on.
#[derive(Clone)]
struct App {
    runs: Arc<AtomicUsize>,
    flaky: Arc<AtomicUsize>,
    sleepy: Arc<AtomicUsize>,
    /// `/slow` meets the test here once it runs, then waits at `release`.
    entered: Arc<Barrier>,
    release: Arc<Barrier>,
}

impl App {
    fn new() -> Self {
        Self {
            runs: Arc::default(),
            flaky: Arc::default(),
            sleepy: Arc::default(),
            entered: Arc::new(Barrier::new(2)),
            release: Arc::new(Barrier::new(2)),
        }
    }

    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn router(&self) -> Router {
        async fn orders(State(app): State<App>, body: String) -> (StatusCode, HeaderMap, String) {
            let run = app.runs.fetch_add(1, Ordering::SeqCst) + 1;
            let mut headers = HeaderMap::new();
            headers.insert("location", format!("/orders/{run}").parse().unwrap());
            headers.insert("content-type", "application/json".parse().unwrap());
            let body = json!({ "run": run, "body": body }).to_string();
            (StatusCode::CREATED, headers, body)
        }
        async fn flaky(State(app): State<App>) -> (StatusCode, String) {
            let n = app.flaky.fetch_add(1, Ordering::SeqCst) + 1;
            if n == 1 {
                (StatusCode::INTERNAL_SERVER_ERROR, "try again".to_owned())
            } else {
                (StatusCode::CREATED, json!({ "run": n }).to_string())
            }
        }
        /// Takes 5 s the first time, no time after.
        async fn sleepy(State(app): State<App>) -> (StatusCode, String) {
            let n = app.sleepy.fetch_add(1, Ordering::SeqCst) + 1;
            if n == 1 {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            (StatusCode::CREATED, json!({ "run": n }).to_string())
        }
        async fn slow(State(app): State<App>) -> (StatusCode, String) {
            app.entered.wait().await;
            app.release.wait().await;
            let run = app.runs.fetch_add(1, Ordering::SeqCst) + 1;
            (StatusCode::CREATED, json!({ "run": run }).to_string())
        }
        async fn big(State(app): State<App>) -> axum::body::Body {
            app.runs.fetch_add(1, Ordering::SeqCst);
            big_body()
        }
        Router::new()
            .route("/orders", post(orders).patch(orders).put(orders))
            .route("/flaky", post(flaky))
            .route("/slow", post(slow))
            .route("/sleepy", post(sleepy))
            .route("/big", post(big))
            .with_state(self.clone())
    }
}

/// Serves `app` behind the standard layers and `layer` on a free loopback port.
async fn serve(layer: IdempotencyLayer, app: &App) -> SocketAddr {
    serve_with(StandardLayers::new(), layer, app).await
}

/// Serves `app` behind `layers` and `layer` on a free loopback port.
async fn serve_with(layers: StandardLayers, layer: IdempotencyLayer, app: &App) -> SocketAddr {
    stores::serve(
        ServiceBuilder::new()
            .layer(layers)
            .layer(layer)
            .service(app.router()),
    )
    .await
}

/// The scope of a request: its `x-api-key`.
fn api_key(parts: &http::request::Parts) -> Option<String> {
    parts
        .headers
        .get("x-api-key")?
        .to_str()
        .ok()
        .map(str::to_owned)
}

fn layer(store: &Arc<dyn IdempotencyStore>) -> IdempotencyLayer {
    IdempotencyLayer::with_store(store.clone()).scope(api_key)
}

impl Reply {
    fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }
}

/// `POST path` with `Idempotency-Key: key` and `X-Api-Key: client-1`.
async fn post_keyed(addr: SocketAddr, path: &str, key: &str, body: &str) -> Reply {
    send(
        addr,
        Method::POST,
        path,
        &[("idempotency-key", key), ("x-api-key", "client-1")],
        body,
    )
    .await
}

/// The cases every store runs.
mod cases {
    use super::*;

    pub(super) async fn replays_the_first_response(store: Arc<dyn IdempotencyStore>) {
        let app = App::new();
        let addr = serve(layer(&store), &app).await;
        let first = post_keyed(addr, "/orders", "\"order-1\"", "book").await;
        assert_eq!(first.status, StatusCode::CREATED);
        assert!(!first.replayed());
        assert_eq!(first.json(), json!({"run": 1, "body": "book"}));

        let again = post_keyed(addr, "/orders", "\"order-1\"", "book").await;
        assert_eq!(again.status, StatusCode::CREATED);
        assert!(again.replayed(), "{:?}", again.headers);
        assert_eq!(again.body, first.body);
        assert_eq!(again.headers["location"], "/orders/1");
        assert_eq!(again.headers["content-type"], "application/json");
        // The bare form of the same key is the same key.
        let bare = post_keyed(addr, "/orders", "order-1", "book").await;
        assert!(bare.replayed());
        assert_eq!(app.runs(), 1, "the retries did not run the handler");

        // Another client's key of the same name is its own.
        let other = send(
            addr,
            Method::POST,
            "/orders",
            &[("idempotency-key", "order-1"), ("x-api-key", "client-2")],
            "book",
        )
        .await;
        assert_eq!(other.json()["run"], 2);
        assert!(!other.replayed());

        // Without a key, and for methods the layer leaves alone, requests pass through.
        for method in [Method::POST, Method::POST, Method::PUT] {
            let reply = send(addr, method, "/orders", &[], "pen").await;
            assert_eq!(reply.status, StatusCode::CREATED);
            assert!(!reply.replayed());
        }
        let put = send(
            addr,
            Method::PUT,
            "/orders",
            &[("idempotency-key", "order-1"), ("x-api-key", "client-1")],
            "pen",
        )
        .await;
        assert!(!put.replayed());
        assert_eq!(app.runs(), 6);
    }

    pub(super) async fn a_reused_key_is_422(store: Arc<dyn IdempotencyStore>) {
        let app = App::new();
        let addr = serve(layer(&store), &app).await;
        assert_eq!(
            post_keyed(addr, "/orders", "k", "book").await.status,
            StatusCode::CREATED
        );
        let other_body = post_keyed(addr, "/orders", "k", "lamp").await;
        assert_eq!(other_body.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(other_body.code(), "idempotency_key_reused");
        assert_eq!(other_body.json()["success"], false);
        let other_path = post_keyed(addr, "/orders?express=1", "k", "book").await;
        assert_eq!(other_path.status, StatusCode::UNPROCESSABLE_ENTITY);
        let other_method = send(
            addr,
            Method::PATCH,
            "/orders",
            &[("idempotency-key", "k"), ("x-api-key", "client-1")],
            "book",
        )
        .await;
        assert_eq!(other_method.code(), "idempotency_key_reused");
        assert_eq!(app.runs(), 1);
    }

    pub(super) async fn a_key_in_flight_is_409(store: Arc<dyn IdempotencyStore>) {
        let app = App::new();
        let addr = serve(layer(&store), &app).await;
        let first = tokio::spawn(post_keyed(addr, "/slow", "slow-1", "x"));
        app.entered.wait().await; // the first request's handler runs
        let second = post_keyed(addr, "/slow", "slow-1", "x").await;
        assert_eq!(second.status, StatusCode::CONFLICT);
        assert_eq!(second.code(), "idempotency_key_in_flight");
        assert_eq!(second.headers["retry-after"], "1");
        // The same key for another request is still a reuse.
        let reuse = post_keyed(addr, "/slow", "slow-1", "y").await;
        assert_eq!(reuse.code(), "idempotency_key_reused");
        app.release.wait().await;
        let first = first.await.unwrap();
        assert_eq!(first.status, StatusCode::CREATED);
        let third = post_keyed(addr, "/slow", "slow-1", "x").await;
        assert!(third.replayed());
        assert_eq!(third.body, first.body);
        assert_eq!(app.runs(), 1);
    }

    pub(super) async fn a_key_in_flight_is_waited_for(store: Arc<dyn IdempotencyStore>) {
        let app = App::new();
        let addr = serve(layer(&store).wait_in_flight(Duration::from_secs(5)), &app).await;
        let first = tokio::spawn(post_keyed(addr, "/slow", "slow-2", "x"));
        app.entered.wait().await;
        let second = tokio::spawn(post_keyed(addr, "/slow", "slow-2", "x"));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!second.is_finished(), "the second request waits");
        app.release.wait().await;
        let (first, second) = (first.await.unwrap(), second.await.unwrap());
        assert_eq!(first.status, StatusCode::CREATED);
        assert!(second.replayed(), "{second:?}");
        assert_eq!(second.body, first.body);
        assert_eq!(app.runs(), 1);
    }

    pub(super) async fn a_failed_request_releases_its_key(store: Arc<dyn IdempotencyStore>) {
        let app = App::new();
        let addr = serve(layer(&store), &app).await;
        let failed = post_keyed(addr, "/flaky", "pay-1", "10 EUR").await;
        assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!failed.replayed());
        let retried = post_keyed(addr, "/flaky", "pay-1", "10 EUR").await;
        assert_eq!(retried.status, StatusCode::CREATED, "{retried:?}");
        assert!(!retried.replayed(), "the retry ran");
        assert_eq!(retried.json()["run"], 2);
        let again = post_keyed(addr, "/flaky", "pay-1", "10 EUR").await;
        assert!(again.replayed());
        assert_eq!(app.flaky.load(Ordering::SeqCst), 2);
    }

    pub(super) async fn a_cancelled_request_releases_its_key(store: Arc<dyn IdempotencyStore>) {
        let app = App::new();
        let layers = StandardLayers::new().timeout(Duration::from_millis(200));
        // A lock far longer than the test: only the release frees the key.
        let addr = serve_with(
            layers,
            layer(&store).lock_ttl(Duration::from_secs(60)),
            &app,
        )
        .await;
        let timed_out = post_keyed(addr, "/sleepy", "cancel-1", "x").await;
        assert_eq!(timed_out.status, StatusCode::GATEWAY_TIMEOUT);
        // The release runs in a task of its own once the handler's future is dropped.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let retried = post_keyed(addr, "/sleepy", "cancel-1", "x").await;
        assert_eq!(retried.status, StatusCode::CREATED, "{retried:?}");
        assert_eq!(retried.json()["run"], 2);
        assert!(
            post_keyed(addr, "/sleepy", "cancel-1", "x")
                .await
                .replayed()
        );
    }

    pub(super) async fn responses_expire_after_the_ttl(store: Arc<dyn IdempotencyStore>) {
        let app = App::new();
        let addr = serve(layer(&store).ttl(Duration::from_millis(300)), &app).await;
        assert_eq!(post_keyed(addr, "/orders", "t", "a").await.json()["run"], 1);
        assert!(post_keyed(addr, "/orders", "t", "a").await.replayed());
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = post_keyed(addr, "/orders", "t", "a").await;
        assert!(!after.replayed(), "the stored response expired");
        assert_eq!(after.json()["run"], 2);
    }

    pub(super) async fn size_limits(store: Arc<dyn IdempotencyStore>) {
        let app = App::new();
        let addr = serve(
            layer(&store).max_response_bytes(1024).max_request_bytes(16),
            &app,
        )
        .await;
        // A response over the limit reaches the client whole, and is not kept...
        let first = post_keyed(addr, "/big", "big-1", "").await;
        assert_eq!(first.status, StatusCode::OK);
        let expected: Vec<u8> = [b'a', b'b', b'c', b'd']
            .iter()
            .flat_map(|c| [*c; 1024])
            .collect();
        assert_eq!(first.body, expected);
        // ...but the request does not run twice: a replay has its status, no body.
        let again = post_keyed(addr, "/big", "big-1", "").await;
        assert_eq!(again.status, StatusCode::OK);
        assert!(again.replayed());
        assert_eq!(again.headers["idempotent-body-omitted"], "true");
        assert!(again.body.is_empty());
        assert_eq!(app.runs(), 1);

        // A request body over the limit cannot be fingerprinted: 413, the handler not run.
        let large = post_keyed(addr, "/orders", "big-2", &"x".repeat(17)).await;
        assert_eq!(large.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(large.code(), "payload_too_large");
        let within = post_keyed(addr, "/orders", "big-2", &"x".repeat(16)).await;
        assert_eq!(within.status, StatusCode::CREATED);
        assert_eq!(app.runs(), 2);
    }

    pub(super) async fn malformed_and_missing_keys(store: Arc<dyn IdempotencyStore>) {
        let app = App::new();
        let addr = serve(layer(&store).required(true), &app).await;
        let too_long = "k".repeat(256);
        for bad in ["", "\"\"", "\"open", "two words", too_long.as_str()] {
            let reply = post_keyed(addr, "/orders", bad, "a").await;
            assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad:?}");
            assert_eq!(reply.code(), "invalid_idempotency_key", "{bad:?}");
        }
        let twice = send(
            addr,
            Method::POST,
            "/orders",
            &[("idempotency-key", "a"), ("idempotency-key", "b")],
            "a",
        )
        .await;
        assert_eq!(twice.code(), "invalid_idempotency_key");
        let missing = send(addr, Method::POST, "/orders", &[], "a").await;
        assert_eq!(missing.status, StatusCode::BAD_REQUEST);
        assert_eq!(missing.code(), "idempotency_key_missing");
        assert_eq!(app.runs(), 0);
        let longest = "k".repeat(255);
        assert_eq!(
            post_keyed(addr, "/orders", &longest, "a").await.status,
            StatusCode::CREATED
        );
    }
}

type Fixture = stores::Fixture<dyn IdempotencyStore>;

async fn memory() -> Fixture {
    Fixture {
        store: Arc::new(MemoryStore::new()),
        prefix: None,
    }
}

/// A Redis store on the shared Redis, under a prefix no other test uses.
#[cfg(feature = "redis")]
async fn redis() -> Fixture {
    let prefix = unique_prefix("idem");
    Fixture {
        store: Arc::new(redis_store(REDIS, &prefix).await),
        prefix: Some(prefix),
    }
}

#[cfg(feature = "redis")]
async fn redis_store(url: &str, prefix: &str) -> chassis_http::idempotency::RedisStore {
    use chassis_http::idempotency::{RedisStore, RedisStoreConfig};
    RedisStore::connect(RedisStoreConfig::new(url).prefix(prefix))
        .await
        .expect("the Redis on 127.0.0.1:6379")
}

store_cases!(
    replays_the_first_response,
    a_reused_key_is_422,
    a_key_in_flight_is_409,
    a_key_in_flight_is_waited_for,
    a_failed_request_releases_its_key,
    a_cancelled_request_releases_its_key,
    responses_expire_after_the_ttl,
    size_limits,
    malformed_and_missing_keys,
);

/// Two replicas, each with its own connection to one Redis: a retry that reaches the other
/// replica replays the first one's response, and a request running on one is in flight for
/// the other.
#[cfg(feature = "redis")]
#[tokio::test]
async fn replicas_sharing_redis_replay_each_others_responses() {
    let prefix = unique_prefix("idem");
    let app = App::new(); // one handler state: it counts the runs of both replicas
    let replica = |store| IdempotencyLayer::new(store).scope(api_key);
    let a = serve(replica(redis_store(REDIS, &prefix).await), &app).await;
    let b = serve(replica(redis_store(REDIS, &prefix).await), &app).await;

    let first = post_keyed(a, "/orders", "shared-1", "book").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let on_b = post_keyed(b, "/orders", "shared-1", "book").await;
    assert!(on_b.replayed(), "{on_b:?}");
    assert_eq!(on_b.body, first.body);
    assert_eq!(on_b.headers["location"], "/orders/1");
    assert_eq!(
        post_keyed(b, "/orders", "shared-1", "lamp").await.code(),
        "idempotency_key_reused"
    );

    let running = tokio::spawn(post_keyed(a, "/slow", "shared-2", "x"));
    app.entered.wait().await;
    assert_eq!(
        post_keyed(b, "/slow", "shared-2", "x").await.code(),
        "idempotency_key_in_flight"
    );
    app.release.wait().await;
    let running = running.await.unwrap();
    let replay = post_keyed(b, "/slow", "shared-2", "x").await;
    assert!(replay.replayed());
    assert_eq!(replay.body, running.body);
    assert_eq!(app.runs(), 2);
    Fixture {
        store: Arc::new(MemoryStore::new()),
        prefix: Some(prefix),
    }
    .cleanup()
    .await;
}

/// Redis down: keyed requests get a prompt 503 with the JSON body and do not run; requests
/// without a key still do; once Redis is back, keyed requests work again.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_down_is_a_prompt_503() {
    let redis = chassis_testkit::RedisServer::start_new();
    let app = App::new();
    let store = redis_store(&redis.url(), &unique_prefix("idem")).await;
    let addr = serve(IdempotencyLayer::new(store), &app).await;
    assert_eq!(
        post_keyed(addr, "/orders", "d-1", "a").await.status,
        StatusCode::CREATED
    );

    redis.kill();
    let started = std::time::Instant::now();
    let down = post_keyed(addr, "/orders", "d-2", "a").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered within the store's timeout, not a hang: {:?}",
        started.elapsed()
    );
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE, "{down:?}");
    assert_eq!(down.code(), "idempotency_store_unavailable");
    assert!(down.headers.contains_key("retry-after"));
    assert_eq!(app.runs(), 1, "the request did not run without its key");
    let unkeyed = send(addr, Method::POST, "/orders", &[], "a").await;
    assert_eq!(unkeyed.status, StatusCode::CREATED);

    redis.start();
    // Working again means a key is taken, its response kept and replayed. While the store's
    // breaker is half-open it lets a few calls through, so a request may take its key and
    // still fail to keep its response (logged; that key then waits for its lock to expire):
    // each attempt uses a key of its own.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for attempt in 0.. {
        let key = format!("d-2-{attempt}");
        let reply = post_keyed(addr, "/orders", &key, "a").await;
        if reply.status == StatusCode::CREATED
            && post_keyed(addr, "/orders", &key, "a").await.replayed()
        {
            break;
        }
        assert!(
            [StatusCode::CREATED, StatusCode::SERVICE_UNAVAILABLE].contains(&reply.status),
            "{reply:?}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "keyed requests work again once Redis is back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
