//! RED metrics of the server, named and labelled after the OpenTelemetry HTTP semantic
//! conventions, recorded through the [`metrics`] facade (chassis-observability installs the
//! Prometheus recorder; without a recorder this layer costs next to nothing).
//!
//! - [`HTTP_SERVER_REQUEST_DURATION`] (`http.server.request.duration`, a histogram in seconds,
//!   `http_server_request_duration_seconds` in Prometheus) with labels `http.request.method`,
//!   `http.route` (when known; never the raw path, to bound cardinality) and
//!   `http.response.status_code`. Its count is the request rate, its `5xx` share the error rate.
//! - [`HTTP_SERVER_ACTIVE_REQUESTS`] (`http.server.active_requests`, a gauge) with label
//!   `http.request.method`: requests whose response head is not ready yet.
//!
//! Duration is measured until the response head is ready (streamed bodies are not included).
//!
//! # Example
//! ```
//! use chassis_http::layers::metrics::MetricsLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new().layer(MetricsLayer::new()).service(service_fn(
//!     |_req: http::Request<()>| async { Ok::<_, std::convert::Infallible>(http::Response::new(())) },
//! ));
//! let res = svc.oneshot(http::Request::new(())).await.unwrap();
//! assert_eq!(res.status(), 200);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use ::metrics::{Gauge, SharedString};
use http::{Method, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use super::{http_route, status_str};

/// Histogram of server request durations, in seconds.
pub const HTTP_SERVER_REQUEST_DURATION: &str = "http.server.request.duration";
/// Gauge of requests in flight.
pub const HTTP_SERVER_ACTIVE_REQUESTS: &str = "http.server.active_requests";

/// The `http.request.method` label value, without allocating for the standard methods.
pub(crate) fn method_label(method: &Method) -> SharedString {
    let s: &'static str = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        // Unknown methods are one label value, as the conventions ask, so a client cannot
        // blow up the cardinality.
        _ => "_OTHER",
    };
    SharedString::const_str(s)
}

/// Layer adding [`MetricsService`].
#[derive(Debug, Clone, Default)]
pub struct MetricsLayer {
    _priv: (),
}

impl MetricsLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        MetricsService { inner }
    }
}

/// Records the RED metrics of each request; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct MetricsService<S> {
    inner: S,
}

impl<S> MetricsService<S> {
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for MetricsService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let method = method_label(req.method());
        let route = http_route(req.extensions()).map(|r| SharedString::from(r.to_owned()));
        let active =
            metrics::gauge!(HTTP_SERVER_ACTIVE_REQUESTS, "http.request.method" => method.clone());
        active.increment(1.0);
        ResponseFuture {
            inner: self.inner.call(req),
            state: Some(Pending {
                start: Instant::now(),
                method,
                route,
                active: ActiveGuard(active),
            }),
        }
    }
}

struct ActiveGuard(Gauge);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

struct Pending {
    start: Instant,
    method: SharedString,
    route: Option<SharedString>,
    // Decrements the gauge when the request completes or is dropped (client went away).
    #[allow(dead_code)]
    active: ActiveGuard,
}

pin_project! {
    /// Response future of [`MetricsService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        state: Option<Pending>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Some(pending) = this.state.take() {
            let status = match &result {
                Ok(res) => res.status().as_u16(),
                Err(_) => 500,
            };
            let elapsed = pending.start.elapsed().as_secs_f64();
            let status = status_str(status);
            let histogram = match pending.route {
                Some(route) => metrics::histogram!(
                    HTTP_SERVER_REQUEST_DURATION,
                    "http.request.method" => pending.method,
                    "http.route" => route,
                    "http.response.status_code" => status,
                ),
                None => metrics::histogram!(
                    HTTP_SERVER_REQUEST_DURATION,
                    "http.request.method" => pending.method,
                    "http.response.status_code" => status,
                ),
            };
            histogram.record(elapsed);
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        assert_eq!(&*method_label(&Method::GET), "GET");
        let odd = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(&*method_label(&odd), "_OTHER");
    }
}
