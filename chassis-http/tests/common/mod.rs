//! Helpers shared by several test binaries of this crate (included with `mod common;` or, from
//! `server/support.rs`, by path).
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

pub(crate) mod stores;

/// A `MakeWriter` (and `io::Write`) collecting log output in memory.
#[derive(Clone, Default)]
pub(crate) struct LogBuffer(pub(crate) Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// Everything written so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Everything written so far, one JSON value a line.
    pub(crate) fn lines(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// A service the chassis server can serve, answering with bodies of type `B` (which must be
/// `Body<Data = Bytes> + Send + 'static` with an error that converts into a `BoxError`).
pub(crate) trait Servable<B>:
    tower::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<B>,
        Future: Send + 'static,
        Error: Into<chassis_core::BoxError>,
    > + Clone
    + Send
    + 'static
{
}

impl<S, B> Servable<B> for S
where
    S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>,
    S: Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<chassis_core::BoxError>,
{
}

/// An issuer `subject` signing with a new Ed25519 key, and a verifier of tokens for
/// `audience` that trusts it and its keys.
pub(crate) fn issuer_and_verifier(
    subject: &str,
    audience: &str,
) -> (
    chassis_http::auth::TokenIssuer,
    chassis_http::auth::TokenVerifier,
) {
    let issuer = chassis_http::auth::TokenIssuer::builder(subject)
        .signing_key(chassis_http::auth::SigningKey::generate_ed25519().unwrap())
        .build()
        .unwrap();
    let verifier = chassis_http::auth::TokenVerifier::builder(audience)
        .trust_issuer(subject)
        .keys(issuer.key_set())
        .build()
        .unwrap();
    (issuer, verifier)
}

/// A health check named `name` that passes while `up` holds `true` and fails with "connection
/// refused" otherwise.
pub(crate) fn switched_check(
    name: &str,
    up: Arc<std::sync::atomic::AtomicBool>,
) -> impl chassis_core::health::HealthCheck {
    chassis_core::health::fn_check(name, move || {
        let up = up.load(std::sync::atomic::Ordering::SeqCst);
        async move {
            if up {
                Ok(())
            } else {
                Err("connection refused".into())
            }
        }
    })
}

/// A Prometheus recorder with the chassis's metric settings, for
/// `metrics::set_default_local_recorder`.
pub(crate) fn recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
    chassis_observability::metrics::build_recorder(
        &chassis_observability::config::MetricsConfig::default(),
    )
    .unwrap()
}

/// Writes this thread's INFO events and closed spans, without colours, to `logs` until the
/// guard drops.
pub(crate) fn log_spans_to(logs: &LogBuffer) -> tracing::subscriber::DefaultGuard {
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    // Callsites another test thread registered while this subscriber was being set can keep a
    // stale "disabled" interest (tracing caches it process-wide): recompute it now.
    tracing::callsite::rebuild_interest_cache();
    guard
}

/// Reads from `stream` until the server closes it and returns what it sent and how long after
/// `started` it closed; panics, naming `context`, once `limit` has passed since `started`.
pub(crate) async fn read_until_closed(
    stream: &mut tokio::net::TcpStream,
    started: std::time::Instant,
    limit: std::time::Duration,
    context: &str,
) -> (Vec<u8>, std::time::Duration) {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let read = tokio::time::timeout(
            limit.saturating_sub(started.elapsed()),
            stream.read(&mut buf),
        )
        .await
        .unwrap_or_else(|_| panic!("still open after {limit:?}: {context}"));
        match read {
            Ok(0) | Err(_) => return (seen, started.elapsed()),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
}

/// `method url` with an optional bearer token and body: status and JSON body.
pub(crate) async fn call_json(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: &str,
) -> (http::StatusCode, serde_json::Value) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let mut req = http::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let response = client
        .request(req.body(body.to_owned().into()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {bytes:?}"));
    (status, json)
}

/// The status of `response`, its `WWW-Authenticate` header and its whole body.
pub(crate) async fn status_challenge_body<B>(
    response: http::Response<B>,
) -> (http::StatusCode, Option<String>, bytes::Bytes)
where
    B: hyper::body::Body,
    B::Error: std::fmt::Debug,
{
    use http_body_util::BodyExt;
    let status = response.status();
    let challenge = response
        .headers()
        .get(http::header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, challenge, bytes)
}

/// Deletes every key under `prefix` from the Redis at `url` (a test's own keys on the shared
/// Redis).
#[cfg(feature = "redis")]
pub(crate) async fn delete_redis_keys(url: &str, prefix: &str) {
    let client = ::redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = ::redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
