//! The response cache on a real server on 127.0.0.1 with a real HTTP client, behind the
//! standard layers: hits and misses counted by the handler, expiry after the default time to
//! live and after the response's `max-age`, `no-store` responses not kept, a request's
//! `no-cache` bypassing the cache, variants by a `vary` header, the body size limit. Every case
//! runs against the in-memory store and against the Redis on 127.0.0.1:6379 (feature `redis`,
//! a key prefix of its own per test); with a Redis of the test's own that is killed, requests
//! are still served.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use chassis_http::layers::StandardLayers;
use chassis_http::response_cache::{CacheStore, MemoryCacheStore, ResponseCacheLayer};
use common::stores::{self, Reply, big_body, store_cases};
#[cfg(feature = "redis")]
use common::stores::{REDIS, unique_prefix};
use http::{HeaderMap, Method, StatusCode, header};
use tower::ServiceBuilder;

/// Counts the handler's runs.
#[derive(Clone, Default)]
struct App {
    runs: Arc<AtomicUsize>,
}

impl App {
    fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    fn router(&self) -> Router {
        fn run(app: &App) -> usize {
            app.runs.fetch_add(1, Ordering::SeqCst) + 1
        }
        async fn plain(State(app): State<App>) -> String {
            format!("run {}", run(&app))
        }
        async fn max_age(
            State(app): State<App>,
        ) -> ([(header::HeaderName, &'static str); 1], String) {
            (
                [(header::CACHE_CONTROL, "max-age=1")],
                format!("run {}", run(&app)),
            )
        }
        async fn no_store(
            State(app): State<App>,
        ) -> ([(header::HeaderName, &'static str); 1], String) {
            (
                [(header::CACHE_CONTROL, "no-store")],
                format!("run {}", run(&app)),
            )
        }
        async fn private(
            State(app): State<App>,
        ) -> ([(header::HeaderName, &'static str); 1], String) {
            (
                [(header::CACHE_CONTROL, "private, max-age=60")],
                format!("run {}", run(&app)),
            )
        }
        async fn created(State(app): State<App>) -> (StatusCode, String) {
            (StatusCode::CREATED, format!("run {}", run(&app)))
        }
        async fn language(State(app): State<App>, headers: HeaderMap) -> String {
            let lang = headers
                .get(header::ACCEPT_LANGUAGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned();
            format!("run {} in {lang}", run(&app))
        }
        async fn big(State(app): State<App>) -> axum::body::Body {
            run(&app);
            big_body()
        }
        Router::new()
            .route("/plain", get(plain))
            .route("/max-age", get(max_age))
            .route("/no-store", get(no_store))
            .route("/private", get(private))
            .route("/created", get(created))
            .route("/language", get(language))
            .route("/big", get(big))
            .with_state(self.clone())
    }
}

/// Serves `app` behind the standard layers and `layer` on a free loopback port.
async fn serve(layer: ResponseCacheLayer, app: &App) -> SocketAddr {
    stores::serve(
        ServiceBuilder::new()
            .layer(StandardLayers::new())
            .layer(layer)
            .service(app.router()),
    )
    .await
}

impl Reply {
    fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .map_or("", |v| v.to_str().unwrap())
    }

    fn hit(&self) -> bool {
        self.cache_status().starts_with("chassis; hit")
    }
}

/// One request on a fresh client, without a body.
async fn send(addr: SocketAddr, method: Method, path: &str, headers: &[(&str, &str)]) -> Reply {
    stores::send(addr, method, path, headers, "").await
}

async fn get_path(addr: SocketAddr, path: &str) -> Reply {
    send(addr, Method::GET, path, &[]).await
}

fn layer(store: &Arc<dyn CacheStore>) -> ResponseCacheLayer {
    ResponseCacheLayer::with_store(store.clone())
}

/// The cases every store runs.
mod cases {
    use super::*;

    pub(super) async fn hits_do_not_run_the_handler(store: Arc<dyn CacheStore>) {
        let app = App::default();
        let addr = serve(layer(&store), &app).await;
        let first = get_path(addr, "/plain?q=1").await;
        assert_eq!(first.status, StatusCode::OK);
        assert_eq!(first.cache_status(), "chassis; fwd=miss; stored");
        assert!(!first.headers.contains_key("age"));
        let second = get_path(addr, "/plain?q=1").await;
        assert!(second.hit(), "{second:?}");
        assert_eq!(second.body, first.body);
        assert_eq!(
            second.headers["content-type"],
            first.headers["content-type"]
        );
        assert_eq!(second.headers["age"], "0");
        assert_eq!(app.runs(), 1);
        // Another query, another method: other keys.
        assert!(!get_path(addr, "/plain?q=2").await.hit());
        let head = send(addr, Method::HEAD, "/plain?q=1", &[]).await;
        assert_eq!(head.cache_status(), "chassis; fwd=miss; stored");
        assert!(send(addr, Method::HEAD, "/plain?q=1", &[]).await.hit());
        assert_eq!(app.runs(), 3);
        // A status that is not cacheable by default runs every time.
        assert_eq!(
            get_path(addr, "/created").await.cache_status(),
            "chassis; fwd=miss"
        );
        assert_eq!(get_path(addr, "/created").await.text(), "run 5");
        // The age grows.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let later = get_path(addr, "/plain?q=1").await;
        assert!(later.hit());
        assert_eq!(later.headers["age"], "1");
        assert_eq!(app.runs(), 5);
    }

    pub(super) async fn expires_after_the_default_ttl(store: Arc<dyn CacheStore>) {
        let app = App::default();
        let addr = serve(layer(&store).default_ttl(Duration::from_millis(700)), &app).await;
        assert_eq!(get_path(addr, "/plain").await.text(), "run 1");
        assert_eq!(get_path(addr, "/plain").await.text(), "run 1");
        tokio::time::sleep(Duration::from_millis(900)).await;
        let expired = get_path(addr, "/plain").await;
        assert_eq!(expired.text(), "run 2");
        assert_eq!(expired.cache_status(), "chassis; fwd=miss; stored");
    }

    pub(super) async fn max_age_sets_the_ttl(store: Arc<dyn CacheStore>) {
        let app = App::default();
        // The response's max-age=1 beats the default of an hour.
        let addr = serve(layer(&store).default_ttl(Duration::from_secs(3600)), &app).await;
        assert_eq!(get_path(addr, "/max-age").await.text(), "run 1");
        let hit = get_path(addr, "/max-age").await;
        assert!(hit.hit());
        // Whole seconds left, rounded down.
        assert!(
            matches!(
                hit.cache_status(),
                "chassis; hit; ttl=1" | "chassis; hit; ttl=0"
            ),
            "{hit:?}"
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
        assert_eq!(get_path(addr, "/max-age").await.text(), "run 2");
    }

    pub(super) async fn no_store_and_private_are_not_kept(store: Arc<dyn CacheStore>) {
        let app = App::default();
        let addr = serve(layer(&store), &app).await;
        for _ in 0..2 {
            let reply = get_path(addr, "/no-store").await;
            assert_eq!(reply.cache_status(), "chassis; fwd=miss");
        }
        for _ in 0..2 {
            assert!(!get_path(addr, "/private").await.hit());
        }
        assert_eq!(app.runs(), 4);
        // A private cache keeps the private response.
        let addr = serve(layer(&store).private(true), &app).await;
        get_path(addr, "/private").await;
        assert!(get_path(addr, "/private").await.hit());
        assert_eq!(app.runs(), 5);
    }

    pub(super) async fn request_no_cache_bypasses(store: Arc<dyn CacheStore>) {
        let app = App::default();
        let addr = serve(layer(&store), &app).await;
        get_path(addr, "/plain").await;
        for directive in ["no-cache", "max-age=0", "no-store"] {
            let reply = send(addr, Method::GET, "/plain", &[("cache-control", directive)]).await;
            assert!(!reply.hit(), "{directive}");
            assert!(reply.cache_status().starts_with("chassis; fwd=request"));
        }
        assert_eq!(app.runs(), 4);
        // The no-cache request stored its fresh response (run 2); the no-store one stored
        // nothing.
        let hit = get_path(addr, "/plain").await;
        assert!(hit.hit());
        assert_eq!(hit.text(), "run 3");
        // A max-age the entry is older than is a miss.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let stale = send(
            addr,
            Method::GET,
            "/plain",
            &[("cache-control", "max-age=1")],
        )
        .await;
        assert_eq!(stale.text(), "run 5", "{stale:?}");
        assert_eq!(stale.cache_status(), "chassis; fwd=stale; stored");
    }

    pub(super) async fn vary_headers_keep_variants_apart(store: Arc<dyn CacheStore>) {
        let app = App::default();
        let addr = serve(layer(&store).vary([header::ACCEPT_LANGUAGE]), &app).await;
        async fn lang(addr: SocketAddr, l: &str) -> Reply {
            send(addr, Method::GET, "/language", &[("accept-language", l)]).await
        }
        assert_eq!(lang(addr, "en").await.text(), "run 1 in en");
        assert_eq!(lang(addr, "de").await.text(), "run 2 in de");
        let en = lang(addr, "en").await;
        assert!(en.hit());
        assert_eq!(en.text(), "run 1 in en");
        assert_eq!(lang(addr, "de").await.text(), "run 2 in de");
        assert_eq!(get_path(addr, "/language").await.text(), "run 3 in none");
        assert_eq!(app.runs(), 3);
    }

    pub(super) async fn bodies_over_the_limit_are_not_kept(store: Arc<dyn CacheStore>) {
        let app = App::default();
        let addr = serve(layer(&store).max_body_bytes(2048), &app).await;
        for _ in 0..2 {
            let big = get_path(addr, "/big").await;
            assert_eq!(big.body.len(), 4096, "sent in full");
            assert_eq!(big.cache_status(), "chassis; fwd=miss");
        }
        assert_eq!(app.runs(), 2);
        let addr = serve(layer(&store).max_body_bytes(4096), &app).await;
        get_path(addr, "/big").await;
        let hit = get_path(addr, "/big").await;
        assert!(hit.hit());
        assert_eq!(hit.body.len(), 4096);
        assert_eq!(app.runs(), 3);
    }
}

type Fixture = stores::Fixture<dyn CacheStore>;

async fn memory() -> Fixture {
    Fixture {
        store: Arc::new(MemoryCacheStore::new()),
        prefix: None,
    }
}

/// A Redis store on the shared Redis, under a prefix no other test uses.
#[cfg(feature = "redis")]
async fn redis() -> Fixture {
    let prefix = unique_prefix("cache");
    Fixture {
        store: Arc::new(redis_store(REDIS, &prefix).await),
        prefix: Some(prefix),
    }
}

#[cfg(feature = "redis")]
async fn redis_store(url: &str, prefix: &str) -> chassis_http::response_cache::RedisCacheStore {
    use chassis_http::response_cache::{RedisCacheStore, RedisStoreConfig};
    RedisCacheStore::connect(RedisStoreConfig::new(url).prefix(prefix))
        .await
        .expect("the Redis on 127.0.0.1:6379")
}

store_cases!(
    hits_do_not_run_the_handler,
    expires_after_the_default_ttl,
    max_age_sets_the_ttl,
    no_store_and_private_are_not_kept,
    request_no_cache_bypasses,
    vary_headers_keep_variants_apart,
    bodies_over_the_limit_are_not_kept,
);

/// Two replicas with their own connections to one Redis: a response one cached is a hit on
/// the other.
#[cfg(feature = "redis")]
#[tokio::test]
async fn replicas_sharing_redis_share_hits() {
    let fixture = redis().await;
    let prefix = fixture.prefix.clone().unwrap();
    let app = App::default();
    let a = serve(
        ResponseCacheLayer::new(redis_store(REDIS, &prefix).await),
        &app,
    )
    .await;
    let b = serve(
        ResponseCacheLayer::new(redis_store(REDIS, &prefix).await),
        &app,
    )
    .await;
    let first = get_path(a, "/plain").await;
    let on_b = get_path(b, "/plain").await;
    assert!(on_b.hit(), "{on_b:?}");
    assert_eq!(on_b.body, first.body);
    assert_eq!(app.runs(), 1);
    fixture.cleanup().await;
}

/// Redis down: every request is still served by the handler, promptly, and says so in
/// `Cache-Status`; once Redis is back, responses are cached again.
#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_down_requests_are_still_served() {
    let redis = chassis_testkit::RedisServer::start_new();
    let app = App::default();
    let store = redis_store(&redis.url(), "test:cache:down:").await;
    let addr = serve(ResponseCacheLayer::new(store), &app).await;
    get_path(addr, "/plain").await;
    assert!(get_path(addr, "/plain").await.hit());

    redis.kill();
    for n in 2..=6 {
        let started = std::time::Instant::now();
        let reply = get_path(addr, "/plain").await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "within the store's timeout: {:?}",
            started.elapsed()
        );
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), format!("run {n}"));
        assert_eq!(
            reply.cache_status(),
            "chassis; fwd=miss; detail=store-unavailable"
        );
    }

    redis.start();
    // Stored again, then served from the cache. Both are awaited: on a loaded machine the
    // first calls to the restarted Redis may still exceed the store's 200 ms timeout (a miss
    // that is served, as above).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut stored = false;
    loop {
        let reply = get_path(addr, "/plain").await;
        assert_eq!(reply.status, StatusCode::OK);
        stored |= reply.cache_status() == "chassis; fwd=miss; stored";
        if stored && reply.hit() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "responses are cached again once Redis is back (stored: {stored})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
