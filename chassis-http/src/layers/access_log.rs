//! Structured access-log lines: every error and slow request, and all (or 1 in N) of the rest.
//!
//! When a request's response head is ready, [`AccessLogService`] decides whether the request
//! gets a line and, if so, emits an INFO event with target [`ACCESS_LOG_TARGET`]
//! (`chassis_http::access`) and the fields `method`, `path`, `status`, `duration_ms`,
//! `request_id` (when the request id layer ran) and `trace_id` (when known, see
//! [`current_trace_id`](crate::error::current_trace_id)). Inside the chassis stack the event is
//! emitted within the server span, so a JSON formatter also attaches the span's fields. A
//! request whose future is dropped before it completes (the client went away) is logged with
//! `status = 499`.
//!
//! # Which requests are logged
//!
//! [`AccessLogConfig`] decides, in this order:
//!
//! 1. a 5xx (or an error of the inner service, logged as 500) is always logged;
//! 2. a 4xx (499 included) is logged when [`client_errors`](AccessLogConfig::client_errors) is
//!    on (the default);
//! 3. a request that took at least [`slow`](AccessLogConfig::slow) (default 1 s) is logged;
//! 4. of the other requests, 1 in [`sample`](AccessLogConfig::sample) is logged: `1` (the
//!    default) logs every one, `0` none.
//!
//! **The default is one line per request** (`sample = 1`): an access log that drops requests
//! surprises whoever searches it for one (a 200 with the wrong data is a request too). A busy
//! service whose successful requests are already counted by the RED metrics and kept in traces
//! can sample them (`ACCESS_LOG_SAMPLE=100`) and still get every error and every slow request.
//!
//! The same settings come from the environment with [`AccessLogConfig::from_env`] (or
//! [`StandardLayers::from_env`](super::StandardLayers::from_env)), so an operator tunes them per
//! deployment without a rebuild:
//!
//! | variable | meaning |
//! |---|---|
//! | `ACCESS_LOG_SAMPLE` | log 1 in N of the successful, fast requests (`1` all, `0` none) |
//! | `ACCESS_LOG_SLOW_MS` | requests taking at least this many milliseconds are always logged (`off`: none) |
//! | `ACCESS_LOG_CLIENT_ERRORS` | `true`/`false`: whether every 4xx is logged |
//!
//! A value that does not parse is an [`ErrorKind::InvalidConfig`](crate::error::ErrorKind)
//! naming the variable, the value and what is expected.
//!
//! Sampling counts per [`AccessLogLayer`] (shared by every service it makes) with one atomic
//! counter, so 1 in N holds across routes and worker threads.
//!
//! Nothing is captured when no subscriber is installed or INFO is off everywhere
//! (`RUST_LOG=warn`); with `RUST_LOG=info,chassis_http::access=off` the request is captured
//! (a small allocation) but no line is built.
//!
//! # Example
//! ```
//! use std::time::Duration;
//! use chassis_http::layers::access_log::AccessLogLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Every error, every request slower than 250 ms, 1 in 20 of the others.
//! let layer = AccessLogLayer::new().sample(20).slow(Some(Duration::from_millis(250)));
//! let svc = ServiceBuilder::new().layer(layer).service(service_fn(
//!     |_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(())) },
//! ));
//! // logs: INFO chassis_http::access: request completed method=GET path=/ status=200 ...
//! svc.oneshot(http::Request::new(())).await.unwrap();
//! # }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Method, Request, Uri};
use opentelemetry::trace::TraceId;
use serde::Deserialize;

use self::hook::Entry;
use super::request_id::RequestId;
use crate::error::{Error, ErrorKind, REQUEST_TRACE_ID};
use crate::future::{Finishing, Observe, OnStatus};

/// Target of the access-log events.
pub const ACCESS_LOG_TARGET: &str = "chassis_http::access";

/// Which requests get an access-log line (see the [module docs](self)); deserialisable from
/// config files (`slow` in humantime form: `"500ms"`, or `null` for none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessLogConfig {
    /// Log 1 in `sample` of the requests that are neither errors nor slow: `1` logs every
    /// request, `0` none of them. Defaults to 1.
    pub sample: u32,
    /// Requests that take at least this long (to the response head) are always logged; `None`
    /// turns the rule off. Defaults to 1 s.
    #[serde(with = "humantime_serde")]
    pub slow: Option<Duration>,
    /// Whether every 4xx response is logged (5xx always are). Defaults to `true`.
    pub client_errors: bool,
}

impl Default for AccessLogConfig {
    fn default() -> Self {
        Self {
            sample: 1,
            slow: Some(Duration::from_secs(1)),
            client_errors: true,
        }
    }
}

/// Environment variable: log 1 in N of the successful, fast requests.
pub const ACCESS_LOG_SAMPLE: &str = "ACCESS_LOG_SAMPLE";
/// Environment variable: slow-request threshold in milliseconds, or `off`.
pub const ACCESS_LOG_SLOW_MS: &str = "ACCESS_LOG_SLOW_MS";
/// Environment variable: whether every 4xx is logged.
pub const ACCESS_LOG_CLIENT_ERRORS: &str = "ACCESS_LOG_CLIENT_ERRORS";

impl AccessLogConfig {
    /// The defaults, with what `ACCESS_LOG_SAMPLE`, `ACCESS_LOG_SLOW_MS` and
    /// `ACCESS_LOG_CLIENT_ERRORS` set (see the [module docs](self)).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] naming the variable whose value does not parse.
    pub fn from_env() -> Result<Self, Error> {
        Self::default().with_env(|key| std::env::var(key).ok())
    }

    /// `self` with what the variables `var` returns set (unset or blank ones keep their value).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`] naming the variable whose value does not parse.
    pub fn with_env(mut self, var: impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let get = |key: &str| var(key).filter(|v| !v.trim().is_empty());
        let invalid = |key: &str, value: &str, expected: &str| {
            Error::new(ErrorKind::InvalidConfig {
                reason: format!("{key}={value:?}: expected {expected}"),
            })
        };
        if let Some(value) = get(ACCESS_LOG_SAMPLE) {
            self.sample = value.trim().parse().map_err(|_| {
                invalid(
                    ACCESS_LOG_SAMPLE,
                    &value,
                    "a whole number: 1 logs every request, N one in N, 0 none",
                )
            })?;
        }
        if let Some(value) = get(ACCESS_LOG_SLOW_MS) {
            let v = value.trim();
            self.slow = if v.eq_ignore_ascii_case("off") {
                None
            } else {
                let ms: u64 = v.parse().map_err(|_| {
                    invalid(
                        ACCESS_LOG_SLOW_MS,
                        &value,
                        "a whole number of milliseconds, or off",
                    )
                })?;
                Some(Duration::from_millis(ms))
            };
        }
        if let Some(value) = get(ACCESS_LOG_CLIENT_ERRORS) {
            self.client_errors = match value.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    return Err(invalid(ACCESS_LOG_CLIENT_ERRORS, &value, "true or false"));
                }
            };
        }
        Ok(self)
    }
}

/// The decision rule shared by the services of one layer: the settings and the sample counter.
#[derive(Debug, Default)]
struct Policy {
    config: AccessLogConfig,
    /// Requests seen by the 1-in-N rule so far.
    sampled: AtomicU64,
}

impl Policy {
    /// Whether a request that ended with `status` after `elapsed` gets a line.
    fn should_log(&self, status: u16, elapsed: Duration) -> bool {
        let c = &self.config;
        if status >= 500 || (status >= 400 && c.client_errors) {
            return true;
        }
        if c.slow.is_some_and(|slow| elapsed >= slow) {
            return true;
        }
        match c.sample {
            0 => false,
            1 => true,
            n => self
                .sampled
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(u64::from(n)),
        }
    }
}

/// Layer adding [`AccessLogService`]. The services it makes share one sample counter.
#[derive(Debug, Clone, Default)]
pub struct AccessLogLayer {
    policy: Arc<Policy>,
}

impl AccessLogLayer {
    /// The layer with the defaults of [`AccessLogConfig`]: one line per request.
    pub fn new() -> Self {
        Self::default()
    }

    /// The layer configured by `config`.
    pub fn from_config(config: AccessLogConfig) -> Self {
        Self {
            policy: Arc::new(Policy {
                config,
                sampled: AtomicU64::new(0),
            }),
        }
    }

    /// Logs 1 in `n` of the requests that are neither errors nor slow (`1` all, `0` none).
    /// Defaults to 1.
    pub fn sample(self, n: u32) -> Self {
        self.with(|c| c.sample = n)
    }

    /// Requests taking at least `threshold` are always logged (`None`: no such rule). Defaults
    /// to 1 s.
    pub fn slow(self, threshold: Option<Duration>) -> Self {
        self.with(|c| c.slow = threshold)
    }

    /// Whether every 4xx is logged. Defaults to `true`.
    pub fn client_errors(self, log: bool) -> Self {
        self.with(|c| c.client_errors = log)
    }

    /// The settings in effect.
    pub fn config(&self) -> &AccessLogConfig {
        &self.policy.config
    }

    fn with(self, change: impl FnOnce(&mut AccessLogConfig)) -> Self {
        let mut config = self.policy.config;
        change(&mut config);
        Self::from_config(config)
    }
}

chassis_core::__impl_layer!(AccessLogLayer => AccessLogService { policy });

/// Logs the requests its [`AccessLogConfig`] selects; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct AccessLogService<S> {
    inner: S,
    policy: Arc<Policy>,
}

crate::middleware::impl_middleware! {
    AccessLogService => ResponseFuture;

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // Boxed: only allocated when a line may be written, and it keeps the response future
        // (moved through every outer layer) one pointer wide when it will not. The test here
        // is the cheap one (a subscriber exists and INFO is on for some target); the event
        // itself asks the subscriber. Not `tracing::enabled!`: that asks the subscriber once
        // more per request, and under per-layer filters its answer can leave a layer's
        // "disabled" mark behind for the next span the handler opens.
        let may_log =
            tracing::level_enabled!(tracing::Level::INFO) && tracing::dispatcher::has_been_set();
        let entry = may_log.then(|| {
            Box::new(Entry {
                start: Instant::now(),
                method: req.method().clone(),
                uri: req.uri().clone(),
                request_id: req.extensions().get::<RequestId>().cloned(),
                policy: self.policy.clone(),
            })
        });
        Finishing::new(self.inner.call(req), Observe::new(entry))
    }
}

mod hook {
    use super::*;

    /// A request that may get a line: written when its response head is ready, or with 499
    /// when its future is dropped first.
    #[derive(Debug)]
    pub struct Entry {
        pub(super) start: Instant,
        pub(super) method: Method,
        pub(super) uri: Uri,
        pub(super) request_id: Option<RequestId>,
        pub(super) policy: Arc<Policy>,
    }
}

impl OnStatus for Box<Entry> {
    fn on_status(self, status: u16) {
        let elapsed = self.start.elapsed();
        if !self.policy.should_log(status, elapsed) {
            return;
        }
        let duration_ms = elapsed.as_secs_f64() * 1000.0;
        let mut hex = [0; 32];
        let trace_id = current_trace_id().map(|id| trace_id_hex(id, &mut hex));
        tracing::info!(
            target: ACCESS_LOG_TARGET,
            method = self.method.as_str(),
            path = self.uri.path(),
            status,
            duration_ms,
            request_id = self.request_id.as_ref().map(RequestId::as_str),
            trace_id,
            "request completed"
        );
    }

    fn on_drop(self) {
        self.on_status(499);
    }
}

/// The trace id of the request being served: the current span's OpenTelemetry context if valid,
/// else the one the trace layer extracted (what [`crate::error::current_trace_id`] returns,
/// without making a `String` of it).
fn current_trace_id() -> Option<TraceId> {
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;

    fn valid_trace_id(cx: &opentelemetry::Context) -> Option<TraceId> {
        let span = cx.span();
        let span_context = span.span_context();
        span_context.is_valid().then(|| span_context.trace_id())
    }

    // First the context tracing-opentelemetry attached when the server span was entered (its
    // default): a thread-local read, where `Span::current().context()` costs a span lookup,
    // a clone and a close through every layer of the subscriber.
    if let Some(id) = opentelemetry::Context::map_current(valid_trace_id) {
        return Some(id);
    }
    if let Some(id) = valid_trace_id(&tracing::Span::current().context()) {
        return Some(id);
    }
    REQUEST_TRACE_ID.try_with(|id| *id).ok().flatten()
}

/// `id` as 32 lowercase hex digits in `buf`, as W3C trace context and OpenTelemetry write it.
fn trace_id_hex(id: TraceId, buf: &mut [u8; 32]) -> &str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in id.to_bytes().into_iter().enumerate() {
        buf[2 * i] = DIGITS[usize::from(byte >> 4)];
        buf[2 * i + 1] = DIGITS[usize::from(byte & 0xf)];
    }
    std::str::from_utf8(buf).expect("hex digits are ASCII")
}

/// Response future of [`AccessLogService`].
pub type ResponseFuture<F> = Finishing<F, Observe<Box<Entry>>>;

#[cfg(test)]
mod tests {
    use super::*;
    use chassis_observability::logging::CaptureWriter;
    use http::Response;
    use std::convert::Infallible;
    use tower::{Layer, ServiceExt, service_fn};

    /// Answers with the status in the path (`/404`), 200 for anything else.
    async fn status_from_path(req: Request<()>) -> Result<Response<()>, Infallible> {
        let status = req.uri().path()[1..].parse().unwrap_or(200);
        let mut res = Response::new(());
        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok(res)
    }

    /// Sends one request per path through `layer` and returns the statuses of the lines logged.
    async fn logged_statuses(layer: AccessLogLayer, paths: &[&str]) -> Vec<u64> {
        let capture = CaptureWriter::new();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(capture.clone())
            .with_max_level(tracing::Level::INFO)
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        // Another test thread may have registered the callsite while no subscriber wanted it.
        tracing::callsite::rebuild_interest_cache();
        let svc = layer.layer(service_fn(status_from_path));
        for path in paths {
            let req = Request::get(*path).body(()).unwrap();
            svc.clone().oneshot(req).await.unwrap();
        }
        capture
            .lines()
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|l| l["target"] == ACCESS_LOG_TARGET)
            .map(|l| l["fields"]["status"].as_u64().unwrap())
            .collect()
    }

    #[tokio::test]
    async fn every_request_by_default() {
        let statuses = logged_statuses(AccessLogLayer::new(), &["/", "/", "/404", "/"]).await;
        assert_eq!(statuses, [200, 200, 404, 200]);
    }

    #[tokio::test]
    async fn errors_are_logged_whatever_the_sample() {
        let paths = ["/", "/500", "/", "/503", "/404", "/", "/401"];
        let none = AccessLogLayer::new().sample(0);
        assert_eq!(
            logged_statuses(none.clone(), &paths).await,
            [500, 503, 404, 401]
        );
        // 4xx are the caller's errors: logging them is a choice, 5xx always are.
        let server_only = none.client_errors(false);
        assert_eq!(logged_statuses(server_only, &paths).await, [500, 503]);
    }

    #[tokio::test]
    async fn one_in_n_of_the_successes() {
        let paths: Vec<&str> = std::iter::repeat_n("/", 12)
            .chain(["/500"])
            .chain(std::iter::repeat_n("/", 8))
            .collect();
        // 20 successes, 1 in 5 logged (the 1st, 6th, ...): 4, plus the error, which does not
        // count towards the sample.
        let statuses = logged_statuses(AccessLogLayer::new().sample(5), &paths).await;
        assert_eq!(statuses, [200, 200, 200, 500, 200]);
    }

    #[tokio::test]
    async fn slow_requests_are_logged_whatever_the_sample() {
        // Every request takes at least zero: all are slow.
        let all_slow = AccessLogLayer::new().sample(0).slow(Some(Duration::ZERO));
        assert_eq!(logged_statuses(all_slow, &["/", "/"]).await, [200, 200]);
        let none_slow = AccessLogLayer::new()
            .sample(0)
            .slow(Some(Duration::from_secs(3600)));
        assert!(logged_statuses(none_slow, &["/", "/"]).await.is_empty());
    }

    #[test]
    fn trace_ids_are_written_as_w3c_hex() {
        let id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let mut buf = [0; 32];
        assert_eq!(
            trace_id_hex(id, &mut buf),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(trace_id_hex(id, &mut buf), id.to_string());
    }

    #[test]
    fn the_rules_in_order() {
        let policy = Policy {
            config: AccessLogConfig {
                sample: 0,
                slow: Some(Duration::from_millis(250)),
                client_errors: false,
            },
            sampled: AtomicU64::new(0),
        };
        let fast = Duration::from_millis(249);
        let slow = Duration::from_millis(250);
        assert!(policy.should_log(500, fast));
        assert!(policy.should_log(599, fast));
        assert!(!policy.should_log(404, fast));
        assert!(!policy.should_log(200, fast));
        assert!(policy.should_log(200, slow));
        assert!(policy.should_log(404, slow));
    }

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn settings_from_the_environment() {
        let config = AccessLogConfig::default()
            .with_env(env(&[
                (ACCESS_LOG_SAMPLE, " 100 "),
                (ACCESS_LOG_SLOW_MS, "250"),
                (ACCESS_LOG_CLIENT_ERRORS, "false"),
            ]))
            .unwrap();
        assert_eq!(
            config,
            AccessLogConfig {
                sample: 100,
                slow: Some(Duration::from_millis(250)),
                client_errors: false,
            }
        );
        let off = AccessLogConfig::default()
            .with_env(env(&[(ACCESS_LOG_SLOW_MS, "OFF"), (ACCESS_LOG_SAMPLE, "")]))
            .unwrap();
        assert_eq!(off.slow, None);
        assert_eq!(off.sample, 1, "a blank variable keeps the default");
        assert_eq!(
            AccessLogConfig::default().with_env(env(&[])).unwrap(),
            AccessLogConfig::default()
        );
    }

    #[test]
    fn bad_environment_values_are_typed_errors_naming_the_variable() {
        for (pairs, variable, value) in [
            (&[(ACCESS_LOG_SAMPLE, "-1")][..], ACCESS_LOG_SAMPLE, "-1"),
            (&[(ACCESS_LOG_SAMPLE, "10%")][..], ACCESS_LOG_SAMPLE, "10%"),
            (&[(ACCESS_LOG_SLOW_MS, "1s")][..], ACCESS_LOG_SLOW_MS, "1s"),
            (
                &[(ACCESS_LOG_CLIENT_ERRORS, "maybe")][..],
                ACCESS_LOG_CLIENT_ERRORS,
                "maybe",
            ),
        ] {
            let pairs: &'static [(&str, &str)] = pairs;
            let err = AccessLogConfig::default().with_env(env(pairs)).unwrap_err();
            let ErrorKind::InvalidConfig { reason } = err.kind() else {
                panic!("{err:?}");
            };
            assert!(
                reason.starts_with(&format!("{variable}=\"{value}\"")),
                "{reason}"
            );
            assert!(reason.contains("expected"), "{reason}");
        }
    }

    #[test]
    fn config_from_a_file() {
        let config: AccessLogConfig =
            serde_json::from_str(r#"{"sample":10,"slow":"300ms"}"#).unwrap();
        assert_eq!(config.sample, 10);
        assert_eq!(config.slow, Some(Duration::from_millis(300)));
        assert!(config.client_errors);
        let config: AccessLogConfig = serde_json::from_str(r#"{"slow":null}"#).unwrap();
        assert_eq!(config.slow, None);
        assert_eq!(AccessLogLayer::from_config(config).config(), &config);
    }
}
