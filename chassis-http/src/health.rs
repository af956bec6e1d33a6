//! Health and metrics endpoints: Kubernetes liveness, readiness and startup probes served from
//! a [`HealthRegistry`], and Prometheus metrics from a [`PrometheusHandle`].
//!
//! [`HealthLayer`] wraps any service (an application with the
//! [standard layers](crate::layers::StandardLayers), an axum `Router`): `GET`/`HEAD` requests
//! for the probe paths are answered by the layer, everything else goes to the inner service.
//! Put it *outside* the standard layers so probes are not traced, logged, timed out, shed or
//! authenticated.
//!
//! | path (default) | answer |
//! |---|---|
//! | `/health/live` | always `200` `{"status":"UP","checks":[]}`: the process answers; no dependency is checked |
//! | `/health/ready` | [`HealthRegistry::readiness`]: `200` when `UP`/`DEGRADED`, `503` when `DOWN` (a required check failed, startup not finished, or shutdown began); the body lists each check with its status, latency and error |
//! | `/health/startup` | `200` once [`HealthRegistry::mark_started`] was called, `503` before |
//! | `/metrics` | the Prometheus text exposition, `text/plain; version=0.0.4` (only with [`HealthLayer::prometheus`]) |
//!
//! Paths are configurable with [`HealthPaths`] (deserialisable). Probe answers carry
//! `cache-control: no-store`; other methods on a probe path get `405`.
//!
//! To keep them off the application's port, give the layer to the server instead
//! ([`Server::probes`](crate::server::Server::probes),
//! [`HttpServer::probes`](crate::server::HttpServer::probes)) with
//! [`ServerConfig::admin`](crate::server::ServerConfig::admin) set: the server then serves them
//! on its admin listener, alone, as [`health_service`] does.
//!
//! # Example
//! ```
//! use chassis_core::health::HealthRegistry;
//! use chassis_http::health::HealthLayer;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let registry = HealthRegistry::new();
//! let app = service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::from("app")))
//! });
//! let svc = HealthLayer::new(registry.clone()).layer(app);
//!
//! let ready = |svc: chassis_http::health::HealthService<_>| async move {
//!     let req = http::Request::get("/health/ready").body(()).unwrap();
//!     svc.oneshot(req).await.unwrap().status()
//! };
//! assert_eq!(ready(svc.clone()).await, 503); // starting
//! registry.mark_started();
//! assert_eq!(ready(svc.clone()).await, 200);
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use chassis_core::health::{HealthRegistry, HealthReport, Status};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{Body, full, typed_response};
use crate::error::ApiError;
use crate::future::{Answering, PassOn};

/// Content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// The paths the probes answer on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthPaths {
    /// Liveness. Defaults to `/health/live`.
    pub live: String,
    /// Readiness. Defaults to `/health/ready`.
    pub ready: String,
    /// Startup. Defaults to `/health/startup`.
    pub startup: String,
    /// Prometheus metrics. Defaults to `/metrics`.
    pub metrics: String,
}

impl Default for HealthPaths {
    fn default() -> Self {
        Self {
            live: "/health/live".into(),
            ready: "/health/ready".into(),
            startup: "/health/startup".into(),
            metrics: "/metrics".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Live,
    Ready,
    Startup,
    Metrics,
}

#[derive(Clone)]
struct Shared {
    registry: HealthRegistry,
    paths: HealthPaths,
    prometheus: Option<PrometheusHandle>,
    /// `false`: answers nothing, every request goes to the inner service (the main port of a
    /// server whose probes are on its admin listener).
    active: bool,
}

impl Shared {
    fn endpoint(&self, path: &str) -> Option<Endpoint> {
        if !self.active {
            None
        } else if path == self.paths.live {
            Some(Endpoint::Live)
        } else if path == self.paths.ready {
            Some(Endpoint::Ready)
        } else if path == self.paths.startup {
            Some(Endpoint::Startup)
        } else if path == self.paths.metrics && self.prometheus.is_some() {
            Some(Endpoint::Metrics)
        } else {
            None
        }
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthEndpoints")
            .field("registry", &self.registry)
            .field("paths", &self.paths)
            .field("prometheus", &self.prometheus.is_some())
            .field("active", &self.active)
            .finish()
    }
}

/// Layer adding [`HealthService`]; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct HealthLayer {
    shared: Arc<Shared>,
}

impl HealthLayer {
    /// Probes served from `registry`, at the default paths, without `/metrics`.
    pub fn new(registry: HealthRegistry) -> Self {
        Self {
            shared: Arc::new(Shared {
                registry,
                paths: HealthPaths::default(),
                prometheus: None,
                active: true,
            }),
        }
    }

    /// A layer answering nothing: the server's main port when the probes are served on the
    /// admin listener, or when it was given none.
    pub(crate) fn inactive() -> Self {
        Self::new(HealthRegistry::new()).update(|s| s.active = false)
    }

    fn update(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        let shared = Arc::make_mut(&mut self.shared);
        f(shared);
        self
    }

    /// Serves the probes at `paths`. Defaults to [`HealthPaths::default`].
    pub fn paths(self, paths: HealthPaths) -> Self {
        self.update(|s| s.paths = paths)
    }

    /// Serves `/metrics` from `handle` (e.g. `Telemetry::prometheus_handle()`, an
    /// `Option`: `None` when metrics are off). Without it the metrics path goes to the inner
    /// service. Given to a [`Server`](crate::server::Server), `/metrics` is served on its admin
    /// listener; without one the server refuses to start unless
    /// [`ServerConfig::public_metrics`](crate::server::ServerConfig::public_metrics) is set.
    pub fn prometheus(self, handle: impl Into<Option<PrometheusHandle>>) -> Self {
        let handle = handle.into();
        self.update(|s| s.prometheus = handle)
    }

    /// Whether this layer answers `/metrics`.
    pub(crate) fn serves_metrics(&self) -> bool {
        self.shared.active && self.shared.prometheus.is_some()
    }
}

chassis_core::__impl_layer!(HealthLayer => HealthService { shared });

/// Answers the probe paths and passes everything else on; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct HealthService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> HealthService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

fn report_response(report: &HealthReport, ok: bool) -> Response<Body> {
    let json = serde_json::to_vec(report).unwrap_or_default();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    typed_response(status, "application/json", Some("no-store"), full(json))
}

async fn answer(shared: Arc<Shared>, endpoint: Endpoint, method: Method) -> Response<Body> {
    if method != Method::GET && method != Method::HEAD {
        let mut response = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "probe endpoints answer GET and HEAD",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match endpoint {
        Endpoint::Live => report_response(&shared.registry.liveness(), true),
        Endpoint::Startup => {
            let report = shared.registry.startup();
            report_response(&report, report.status != Status::Down)
        }
        Endpoint::Ready => {
            let report = shared.registry.readiness().await;
            report_response(&report, report.is_ready())
        }
        Endpoint::Metrics => {
            let text = shared
                .prometheus
                .as_ref()
                .map(PrometheusHandle::render)
                .unwrap_or_default();
            typed_response(StatusCode::OK, PROMETHEUS_CONTENT_TYPE, None, full(text))
        }
    }
}

crate::middleware::impl_middleware! {
    boxed, own_accessors, HealthService => ResponseFuture;

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        match self.shared.endpoint(req.uri().path()) {
            Some(endpoint) => Answering::answer(Box::pin(answer(
                self.shared.clone(),
                endpoint,
                req.method().clone(),
            ))),
            None => Answering::inner(self.inner.call(req), PassOn),
        }
    }
}

/// Response future of [`HealthService`].
pub type ResponseFuture<F> = Answering<F, PassOn>;

/// A standalone service answering only the probes (404 for anything else), for serving them
/// on a separate port. The server does this itself on its admin listener (see
/// [`ServerConfig::admin`](crate::server::ServerConfig::admin)).
pub fn health_service(layer: HealthLayer) -> HealthService<NotFound> {
    layer.layer(NotFound { _priv: () })
}

/// A service answering every request with `404 not_found` in the chassis error body.
#[derive(Debug, Clone, Copy)]
pub struct NotFound {
    _priv: (),
}

impl<B> Service<Request<B>> for NotFound {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<Body>, Infallible>>;

    #[inline]
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Request<B>) -> Self::Future {
        std::future::ready(Ok(ApiError::not_found(format!(
            "no route for {}",
            req.uri().path()
        ))
        .into_response()))
    }
}
