//! What the tests of the layers that keep responses (idempotency, response cache) share: a
//! server on a free loopback port, one request on a fresh client and its reply, a handler body
//! of unknown length, a store of the test's own with its Redis keys, and one test per case and
//! store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chassis_http::server::{Server, ServerConfig};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// The shared Redis the Redis cases use.
pub(crate) const REDIS: &str = "redis://127.0.0.1:6379";

/// Serves `service` on a free loopback port.
pub(crate) async fn serve<S, B>(service: S) -> SocketAddr
where
    S: super::Servable<B>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<chassis_core::BoxError>,
{
    let config = ServerConfig::default().bind("127.0.0.1:0".parse().unwrap());
    let server = Server::bind(config).await.unwrap().handle_signals(false);
    let addr = server.local_addr();
    tokio::spawn(server.serve(service));
    addr
}

/// 4 KiB in four chunks of unknown total length: a layer that keeps bodies up to a limit
/// reads past it.
pub(crate) fn big_body() -> axum::body::Body {
    let chunks = [b'a', b'b', b'c', b'd']
        .map(|c| Ok::<_, std::convert::Infallible>(Bytes::from(vec![c; 1024])));
    axum::body::Body::from_stream(futures_util::stream::iter(chunks))
}

/// A response as the tests read it.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Reply {
    /// The body as text.
    pub(crate) fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    /// The body as JSON.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }

    /// The code of the chassis JSON error in the body (empty if there is none).
    pub(crate) fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

/// One request on a fresh client: `method path` with the headers and the body.
pub(crate) async fn send(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let (parts, body) = res.into_parts();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// A key prefix on the shared Redis no other test uses: `test:<what>:<uuid>:`.
pub(crate) fn unique_prefix(what: &str) -> String {
    format!("test:{what}:{}:", uuid::Uuid::new_v4().simple())
}

/// A store for one test, and the Redis key prefix to clean up after it.
pub(crate) struct Fixture<T: ?Sized> {
    pub(crate) store: Arc<T>,
    pub(crate) prefix: Option<String>,
}

impl<T: ?Sized> Fixture<T> {
    /// Deletes the test's keys from the shared Redis (kept responses outlive the test
    /// otherwise).
    pub(crate) async fn cleanup(self) {
        #[cfg(feature = "redis")]
        if let Some(prefix) = self.prefix {
            super::delete_redis_keys(REDIS, &prefix).await;
        }
    }
}

/// One test per case and store: `store_cases!(a, b)` makes the tests `memory::a`,
/// `memory::b` and, with the `redis` feature, `redis::a` and `redis::b`, each running
/// `cases::a` (or `b`) on the store of the fixture the test file's `memory()` or `redis()`
/// makes, then cleaning up.
#[allow(unused_macros)]
macro_rules! store_cases {
    ($($case:ident),+ $(,)?) => {
        $crate::common::stores::store_cases!(@store memory: $($case),+);
        #[cfg(feature = "redis")]
        $crate::common::stores::store_cases!(@store redis: $($case),+);
    };
    (@store $store:ident: $($case:ident),+) => {
        mod $store {
            $(
                #[tokio::test]
                async fn $case() {
                    let fixture = super::$store().await;
                    super::cases::$case(fixture.store.clone()).await;
                    fixture.cleanup().await;
                }
            )+
        }
    };
}

// Unused by the test binaries that share `common` and have no store (so is the macro).
#[allow(unused_imports)]
pub(crate) use store_cases;
