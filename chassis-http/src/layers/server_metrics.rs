//! RED metrics of the server, named and labelled after the OpenTelemetry HTTP semantic
//! conventions, recorded through the [`metrics`] facade (chassis-observability installs the
//! Prometheus recorder; without a recorder this layer costs next to nothing).
//!
//! - [`HTTP_SERVER_REQUEST_DURATION`] (`http_server_request_duration_seconds`, semconv
//!   `http_server_request_duration_seconds`, a histogram in seconds) with labels `http.request.method`,
//!   `http.route` (when known; never the raw path, to bound cardinality) and
//!   `http.response.status_code`. Its count is the request rate, its `5xx` share the error rate.
//! - [`HTTP_SERVER_ACTIVE_REQUESTS`] (`http_server_active_requests`, semconv
//!   `http_server_active_requests`, a gauge) with label
//!   `http.request.method`: requests whose response head is not ready yet.
//!
//! Both names come from the catalogue, `chassis_core::metric_catalogue`.
//!
//! Duration is measured until the response head is ready (streamed bodies are not included).
//!
//! The metric handles are resolved once per (method, route, status) and recorder, then reused
//! by every clone of the service made from one [`ServerMetricsLayer`]: a request costs two atomic
//! updates and a read-locked map lookup. If the recorder in effect changes (a thread-local
//! recorder in a test), the cache starts over; recorders are told apart by address, so a
//! recorder dropped and replaced by another at the same address is not noticed (use a fresh
//! layer per recorder). Like any stored `metrics` handle, a cached one
//! keeps recording into a series that a recorder's idle timeout has removed; the chassis
//! recorder sets no idle timeout.
//!
//! # Example
//! ```
//! use chassis_http::layers::server_metrics::ServerMetricsLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new().layer(ServerMetricsLayer::new()).service(service_fn(
//!     |_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(())) },
//! ));
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use ::metrics::{Gauge, Histogram, Recorder, SharedString};
use http::{Method, Request};

use self::hook::Pending;
use super::{RouteTemplate, status_str};
use crate::future::{Finishing, Observe, OnStatus};

use chassis_core::metric_catalogue::labels::{
    HTTP_REQUEST_METHOD, HTTP_RESPONSE_STATUS_CODE, HTTP_ROUTE,
};
pub use chassis_core::metric_catalogue::{
    HTTP_SERVER_ACTIVE_REQUESTS, HTTP_SERVER_REQUEST_DURATION,
};

/// The `http.request.method` label values, indexed by [`method_index`].
const METHOD_LABELS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "CONNECT", "_OTHER",
];

/// Index of the `http.request.method` label value of `method` in [`METHOD_LABELS`].
fn method_index(method: &Method) -> usize {
    match *method {
        Method::GET => 0,
        Method::POST => 1,
        Method::PUT => 2,
        Method::DELETE => 3,
        Method::PATCH => 4,
        Method::HEAD => 5,
        Method::OPTIONS => 6,
        Method::TRACE => 7,
        Method::CONNECT => 8,
        // Unknown methods are one label value, as the conventions ask, so a client cannot
        // blow up the cardinality.
        _ => 9,
    }
}

/// Identity of the recorder the `metrics` macros use on this thread right now.
fn current_recorder() -> usize {
    ::metrics::with_recorder(|recorder| {
        std::ptr::from_ref::<dyn Recorder>(recorder).cast::<()>() as usize
    })
}

/// Duration histograms of one route (or of requests without a known route), by method index
/// and status code. A list: a route sees a handful of (method, status) pairs, and scanning
/// them is cheaper than hashing the key.
type Durations = Vec<((usize, u16), Histogram)>;

/// Handles resolved so far, valid for the recorder `recorder`.
#[derive(Default)]
struct Resolved {
    recorder: usize,
    active: [Option<Gauge>; METHOD_LABELS.len()],
    no_route: Durations,
    by_route: HashMap<Box<str>, Durations>,
}

impl Resolved {
    fn durations(&self, route: Option<&str>) -> Option<&Durations> {
        match route {
            None => Some(&self.no_route),
            Some(route) => self.by_route.get(route),
        }
    }
}

/// The handle cache shared by the services of one [`ServerMetricsLayer`]; see the
/// [module docs](self).
#[derive(Default)]
struct Handles {
    resolved: RwLock<Resolved>,
}

impl Handles {
    /// Runs `lookup` on the cache if it is valid for `recorder`, else returns `None`.
    fn read<T>(&self, recorder: usize, lookup: impl FnOnce(&Resolved) -> Option<T>) -> Option<T> {
        let resolved = self.resolved.read().unwrap_or_else(PoisonError::into_inner);
        if resolved.recorder != recorder {
            return None;
        }
        lookup(&resolved)
    }

    /// Runs `insert` on the cache, emptied first if it was made for another recorder.
    fn write<T>(&self, recorder: usize, insert: impl FnOnce(&mut Resolved) -> T) -> T {
        let mut resolved = self
            .resolved
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if resolved.recorder != recorder {
            *resolved = Resolved {
                recorder,
                ..Resolved::default()
            };
        }
        insert(&mut resolved)
    }

    fn active_requests(&self, method: usize) -> Gauge {
        let recorder = current_recorder();
        if let Some(gauge) = self.read(recorder, |r| r.active[method].clone()) {
            return gauge;
        }
        self.write(recorder, |r| {
            r.active[method]
                .get_or_insert_with(|| {
                    ::metrics::gauge!(
                        HTTP_SERVER_ACTIVE_REQUESTS,
                        HTTP_REQUEST_METHOD => SharedString::const_str(METHOD_LABELS[method]),
                    )
                })
                .clone()
        })
    }

    fn request_duration(&self, method: usize, route: Option<&str>, status: u16) -> Histogram {
        let recorder = current_recorder();
        let key = (method, status);
        if let Some(histogram) = self.read(recorder, |r| {
            let durations = r.durations(route)?;
            durations
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, h)| h.clone())
        }) {
            return histogram;
        }
        self.write(recorder, |r| {
            let durations = match route {
                None => &mut r.no_route,
                Some(route) => r.by_route.entry(route.into()).or_default(),
            };
            if let Some((_, histogram)) = durations.iter().find(|(k, _)| *k == key) {
                return histogram.clone();
            }
            let histogram = {
                let method = SharedString::const_str(METHOD_LABELS[method]);
                let status = status_str(status);
                match route {
                    Some(route) => ::metrics::histogram!(
                        HTTP_SERVER_REQUEST_DURATION,
                        HTTP_REQUEST_METHOD => method,
                        HTTP_ROUTE => SharedString::from(route.to_owned()),
                        HTTP_RESPONSE_STATUS_CODE => status,
                    ),
                    None => ::metrics::histogram!(
                        HTTP_SERVER_REQUEST_DURATION,
                        HTTP_REQUEST_METHOD => method,
                        HTTP_RESPONSE_STATUS_CODE => status,
                    ),
                }
            };
            durations.push((key, histogram.clone()));
            histogram
        })
    }
}

/// Layer adding [`ServerMetricsService`]. The services it makes share one cache of metric handles.
#[derive(Clone)]
pub struct ServerMetricsLayer {
    handles: Arc<Handles>,
}

impl fmt::Debug for ServerMetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerMetricsLayer").finish_non_exhaustive()
    }
}

impl ServerMetricsLayer {
    /// The layer. It registers [`HTTP_SERVER_ACTIVE_REQUESTS`] at 0 for every method label
    /// with the recorder in effect, so the gauge is there from the first scrape; the duration
    /// histogram, labelled by route and status code, appears with the first request.
    pub fn new() -> Self {
        chassis_core::metric_catalogue::preregister(HTTP_SERVER_ACTIVE_REQUESTS, &[]);
        Self {
            handles: Arc::default(),
        }
    }
}

impl Default for ServerMetricsLayer {
    /// [`new`](Self::new).
    fn default() -> Self {
        Self::new()
    }
}

chassis_core::__impl_layer!(ServerMetricsLayer => ServerMetricsService { handles });

/// Records the RED metrics of each request; see the [module docs](self).
#[derive(Clone)]
pub struct ServerMetricsService<S> {
    inner: S,
    handles: Arc<Handles>,
}

impl<S: fmt::Debug> fmt::Debug for ServerMetricsService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerMetricsService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

crate::middleware::impl_middleware! {
    ServerMetricsService => ResponseFuture;

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let method = method_index(req.method());
        let route = RouteTemplate::of(req.extensions());
        let active = self.handles.active_requests(method);
        active.increment(1.0);
        let pending = Pending {
            start: Instant::now(),
            method,
            route,
            handles: self.handles.clone(),
            active: ActiveGuard(active),
        };
        Finishing::new(self.inner.call(req), Observe::new(Some(pending)))
    }
}

struct ActiveGuard(Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

mod hook {
    use super::*;

    /// A request being counted: its duration recorded when the response head is ready; the
    /// active-requests gauge decremented then or when its future is dropped first.
    pub struct Pending {
        pub(super) start: Instant,
        pub(super) method: usize,
        pub(super) route: Option<RouteTemplate>,
        pub(super) handles: Arc<Handles>,
        // Decrements the gauge when the request completes or is dropped (client went away).
        #[allow(dead_code)]
        pub(super) active: ActiveGuard,
    }

    chassis_core::__debug_fields!(Pending {
        start,
        method,
        route
    });
}

impl OnStatus for Pending {
    fn on_status(self, status: u16) {
        let elapsed = self.start.elapsed().as_secs_f64();
        self.handles
            .request_duration(
                self.method,
                self.route.as_ref().map(RouteTemplate::as_str),
                status,
            )
            .record(elapsed);
    }
}

/// Response future of [`ServerMetricsService`].
pub type ResponseFuture<F> = Finishing<F, Observe<Pending>>;

#[cfg(test)]
mod tests {
    use super::*;
    use http::Response;
    use std::convert::Infallible;
    use tower::{Layer, ServiceExt, service_fn};

    #[tokio::test]
    async fn cached_handles_follow_the_recorder_in_effect() {
        let svc = ServerMetricsLayer::new().layer(service_fn(|req: Request<()>| async move {
            let status = if req.uri().path() == "/missing" {
                404
            } else {
                200
            };
            let mut res = Response::new(());
            *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(res)
        }));
        // Both alive at once, so they cannot share an address.
        let recorders: Vec<_> = (0..2)
            .map(|_| metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder())
            .collect();
        for recorder in &recorders {
            let _local = ::metrics::set_default_local_recorder(recorder);
            for path in ["/", "/", "/missing"] {
                let req = Request::get(path).body(()).unwrap();
                svc.clone().oneshot(req).await.unwrap();
            }
            let text = recorder.handle().render();
            for (status, count) in [(200, 2), (404, 1)] {
                let line = format!(
                    "http_server_request_duration_seconds_count{{http_request_method=\"GET\",http_response_status_code=\"{status}\"}} {count}"
                );
                assert!(text.contains(&line), "missing {line} in:\n{text}");
            }
            assert!(
                text.contains(r#"http_server_active_requests{http_request_method="GET"} 0"#),
                "{text}"
            );
        }
    }

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(METHOD_LABELS[method_index(&Method::GET)], "GET");
        assert_eq!(METHOD_LABELS[method_index(&Method::CONNECT)], "CONNECT");
        let odd = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(METHOD_LABELS[method_index(&odd)], "_OTHER");
    }
}
