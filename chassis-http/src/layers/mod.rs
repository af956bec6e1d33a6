//! The standard server layers, each a tower `Layer` + `Service` + response future that works
//! under hyper, axum or any tower stack, and [`StandardLayers`], which stacks them in the
//! chassis order with good defaults.
//!
//! Order, outermost first:
//!
//! 1. [`request_id`]: `x-request-id` propagated or generated, echoed on the response;
//! 2. [`server_span`]: trace context extraction and the server span;
//! 3. [`server_metrics`]: `http_server_request_duration_seconds` and `http_server_active_requests`;
//! 4. [`access_log`]: one structured line per request (by default; every error and slow
//!    request and 1 in N of the others when sampled);
//! 5. [`guard`]: a panicking handler becomes a 500, a response head not ready after the request
//!    timeout (default 30 s) a 504, a request above `max_in_flight` concurrent requests (default
//!    1024) a 503 + `Retry-After`, a body over the limit (default 2 MiB) a 413; errors of the
//!    inner service become error responses, and its error responses without a JSON body (axum's
//!    rejections, a router's 404/405) get the JSON body;
//!
//! then whatever the application adds (service-token auth, its handlers).
//!
//! Panics are caught *inside* the observability layers rather than outermost, so a panicked
//! request is traced, counted and logged as the 500 it became, with its trace id. Every
//! error response, whether a chassis layer or the application produced it, uses the
//! [`ApiError`](crate::error::ApiError) JSON body.
//!
//! The health endpoints ([`crate::health`]) sit *outside* this stack so probes are not
//! traced, logged, timed out or shed.
//!
//! # Example
//! ```
//! use chassis_http::layers::StandardLayers;
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layers = StandardLayers::new()
//!     .timeout(Duration::from_secs(10))
//!     .body_limit(1 << 20)
//!     .max_in_flight(512);
//! let app = service_fn(|_req: http::Request<_>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("hi")))
//! });
//! let svc = layers.layer(app);
//! let res = svc.oneshot(http::Request::new(http_body_util::Empty::<bytes::Bytes>::new())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! assert!(res.headers().contains_key("x-request-id"));
//! # }
//! ```
//!
//! Under axum, `router.layer(StandardLayers::new())` applies the stack after routing, so spans
//! and metrics get the route template (with the `axum` feature). Serving such a router with
//! [`crate::server::Server`] needs no conversion (it accepts any body); to nest the stacked
//! service inside another axum router, map the chassis body with
//! `response.map(axum::body::Body::new)`.

use std::sync::Arc;
use std::time::Duration;

use ::metrics::SharedString;
use http::{Extensions, HeaderName};
use serde::Deserialize;
use tower_layer::Layer;

pub mod access_log;
mod body_limit;
mod catch_panic;
pub(crate) mod error_response;
pub mod guard;
mod load_shed;
pub mod request_id;
pub mod server_metrics;
pub mod server_span;

use access_log::{AccessLogConfig, AccessLogLayer, AccessLogService};
use guard::{GuardLayer, GuardService};
use request_id::{RequestIdLayer, RequestIdService};
use server_metrics::{ServerMetricsLayer, ServerMetricsService};
use server_span::{ServerSpanLayer, ServerSpanService};

/// The route template that matched a request (`/orders/{id}`), as a request extension.
///
/// The trace and metrics layers label requests with it. A router that runs before the chassis
/// layers can insert it; with the `axum` feature, axum's `MatchedPath` is read as well.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route(Arc<str>);

impl Route {
    /// A route template.
    pub fn new(template: impl Into<Arc<str>>) -> Self {
        Self(template.into())
    }

    /// The template.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The route template of a request, if a router recorded one.
pub(crate) fn http_route(extensions: &Extensions) -> Option<&str> {
    if let Some(route) = extensions.get::<Route>() {
        return Some(route.as_str());
    }
    #[cfg(feature = "axum")]
    if let Some(path) = extensions.get::<axum::extract::MatchedPath>() {
        return Some(path.as_str());
    }
    None
}

/// An owned handle on the route template of a request, cheap to take (no copy of the text).
#[derive(Debug, Clone)]
pub(crate) enum RouteTemplate {
    Route(Route),
    #[cfg(feature = "axum")]
    Matched(axum::extract::MatchedPath),
}

impl RouteTemplate {
    /// The route template of a request, if a router recorded one (see [`http_route`]).
    pub(crate) fn of(extensions: &Extensions) -> Option<Self> {
        if let Some(route) = extensions.get::<Route>() {
            return Some(Self::Route(route.clone()));
        }
        #[cfg(feature = "axum")]
        if let Some(path) = extensions.get::<axum::extract::MatchedPath>() {
            return Some(Self::Matched(path.clone()));
        }
        None
    }

    pub(crate) fn as_str(&self) -> &str {
        match self {
            Self::Route(route) => route.as_str(),
            #[cfg(feature = "axum")]
            Self::Matched(path) => path.as_str(),
        }
    }
}

/// A status code as a label value, without allocating for the common ones.
pub(crate) fn status_str(status: u16) -> SharedString {
    let s: &'static str = match status {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        301 => "301",
        302 => "302",
        304 => "304",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return SharedString::from(other.to_string()),
    };
    SharedString::const_str(s)
}

/// Operator-tunable settings of the [`StandardLayers`], deserialisable from config files
/// (durations in humantime form: `"30s"`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StandardLayersConfig {
    /// Request timeout (response head ready). Defaults to 30 s.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Maximum request body size in bytes. Defaults to 2 MiB.
    pub body_limit: usize,
    /// Maximum concurrent requests before shedding. Defaults to 1024.
    pub max_in_flight: usize,
    /// `Retry-After` of shed requests. Defaults to 1 s.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Which requests get an access-log line. Defaults to every one
    /// ([`AccessLogConfig::default`]).
    pub access_log: AccessLogConfig,
}

impl StandardLayersConfig {
    /// `self` with what the environment variables `var` returns set: the access log's
    /// `ACCESS_LOG_SAMPLE`, `ACCESS_LOG_SLOW_MS` and `ACCESS_LOG_CLIENT_ERRORS`
    /// ([`AccessLogConfig::with_env`]).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`](crate::error::ErrorKind::InvalidConfig) naming the variable
    /// whose value does not parse.
    pub fn with_env(
        mut self,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, crate::error::Error> {
        self.access_log = self.access_log.with_env(var)?;
        Ok(self)
    }
}

impl Default for StandardLayersConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            body_limit: 2 * 1024 * 1024,
            max_in_flight: 1024,
            retry_after: Duration::from_secs(1),
            access_log: AccessLogConfig::default(),
        }
    }
}

/// The whole chassis server stack as one layer; see the [module docs](self).
///
/// The concurrency limit is shared by every service this layer produces (including each route
/// when used with axum's `Router::layer`), so it bounds the application as a whole.
#[derive(Debug, Clone)]
pub struct StandardLayers {
    request_id: RequestIdLayer,
    access_log: AccessLogLayer,
    /// Holds the concurrency counter every produced service shares.
    guard: GuardLayer,
    config: StandardLayersConfig,
}

impl Default for StandardLayers {
    fn default() -> Self {
        Self::new()
    }
}

/// Setters of [`StandardLayers`] that record their value in its config and hand it to its
/// guard, whose setter of the same name applies it.
macro_rules! guard_setters {
    ($($(#[$m:meta])* $name:ident($arg:ident): $ty:ty),* $(,)?) => {
        $(
            $(#[$m])*
            pub fn $name(mut self, $arg: $ty) -> Self {
                self.config.$name = $arg;
                self.guard = self.guard.$name($arg);
                self
            }
        )*
    };
}

impl StandardLayers {
    /// The stack with the defaults of [`StandardLayersConfig`].
    pub fn new() -> Self {
        Self::from_config(StandardLayersConfig::default())
    }

    /// The stack with the defaults and what the environment sets (today the access log's
    /// variables: `ACCESS_LOG_SAMPLE`, `ACCESS_LOG_SLOW_MS`, `ACCESS_LOG_CLIENT_ERRORS`; see
    /// [`access_log`]), so an operator tunes them per deployment without a rebuild.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidConfig`](crate::error::ErrorKind::InvalidConfig) naming the variable
    /// whose value does not parse.
    pub fn from_env() -> Result<Self, crate::error::Error> {
        let config = StandardLayersConfig::default().with_env(|key| std::env::var(key).ok())?;
        Ok(Self::from_config(config))
    }

    /// The stack configured by `config`.
    pub fn from_config(config: StandardLayersConfig) -> Self {
        Self {
            request_id: RequestIdLayer::new(),
            access_log: AccessLogLayer::from_config(config.access_log),
            guard: GuardLayer::from_config(&config),
            config,
        }
    }

    guard_setters! {
        /// Request timeout. Defaults to 30 s.
        timeout(timeout): Duration,
        /// Maximum request body size in bytes. Defaults to 2 MiB.
        body_limit(limit): usize,
        /// Maximum concurrent requests; more are shed with 503. Defaults to 1024.
        max_in_flight(max): usize,
        /// `Retry-After` of shed requests. Defaults to 1 s.
        retry_after(retry_after): Duration,
    }

    /// Which requests get an access-log line. Defaults to every one
    /// ([`AccessLogConfig::default`]).
    pub fn access_log(mut self, config: AccessLogConfig) -> Self {
        self.config.access_log = config;
        self.access_log = AccessLogLayer::from_config(config);
        self
    }

    /// Logs 1 in `n` of the requests that are neither errors nor slow (`1` all, `0` none);
    /// errors and slow requests are always logged (see [`access_log`]). Defaults to 1.
    pub fn access_log_sample(self, n: u32) -> Self {
        let config = AccessLogConfig {
            sample: n,
            ..self.config.access_log
        };
        self.access_log(config)
    }

    /// Header carrying the request id. Defaults to `x-request-id`.
    pub fn request_id_header(mut self, header: HeaderName) -> Self {
        self.request_id = self.request_id.header(header);
        self
    }

    /// The settings in effect.
    pub fn config(&self) -> &StandardLayersConfig {
        &self.config
    }
}

/// The service [`StandardLayers`] wraps an application in.
pub type StandardService<S> =
    RequestIdService<ServerSpanService<ServerMetricsService<AccessLogService<GuardService<S>>>>>;

impl<S> Layer<S> for StandardLayers {
    type Service = StandardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let inner = self.guard.layer(inner);
        let inner = self.access_log.layer(inner);
        let inner = ServerMetricsLayer::new().layer(inner);
        let inner = ServerSpanLayer::new().layer(inner);
        self.request_id.layer(inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_toml_like_json() {
        let config: StandardLayersConfig =
            serde_json::from_str(r#"{"timeout":"5s","max_in_flight":8}"#).unwrap();
        assert_eq!(config.timeout, Duration::from_secs(5));
        assert_eq!(config.max_in_flight, 8);
        assert_eq!(config.body_limit, 2 * 1024 * 1024);
        let layers = StandardLayers::from_config(config.clone());
        assert_eq!(layers.config(), &config);

        let config: StandardLayersConfig =
            serde_json::from_str(r#"{"access_log":{"sample":50,"slow":"200ms"}}"#).unwrap();
        assert_eq!(config.access_log.sample, 50);
        assert_eq!(config.access_log.slow, Some(Duration::from_millis(200)));
    }

    #[test]
    fn access_log_settings_from_builder_and_environment() {
        let layers = StandardLayers::new().access_log_sample(10);
        assert_eq!(layers.config().access_log.sample, 10);
        assert_eq!(layers.access_log.config().sample, 10);

        let env = |key: &str| (key == "ACCESS_LOG_SAMPLE").then(|| "25".to_owned());
        let config = StandardLayersConfig::default().with_env(env).unwrap();
        assert_eq!(config.access_log.sample, 25);
        let bad = |key: &str| (key == "ACCESS_LOG_SLOW_MS").then(|| "soon".to_owned());
        let err = StandardLayersConfig::default().with_env(bad).unwrap_err();
        assert!(err.to_string().contains("ACCESS_LOG_SLOW_MS"), "{err}");
    }

    #[test]
    fn status_labels() {
        assert_eq!(&*status_str(200), "200");
        assert_eq!(&*status_str(418), "418");
    }
}
