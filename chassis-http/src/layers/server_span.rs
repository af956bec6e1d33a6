//! Trace context extraction and the server span, following the OpenTelemetry HTTP semantic
//! conventions.
//!
//! For every request [`ServerSpanService`] reads the W3C `traceparent`/`tracestate`/`baggage`
//! headers (with [`chassis_observability::propagation::extract_context`]), opens an INFO span
//! with target `chassis_http::server` whose OpenTelemetry parent is the remote context, and runs
//! the inner service inside it. Span fields:
//!
//! | field | value |
//! |---|---|
//! | `otel.name` | `"{method} {route}"`, or `"{method}"` when no route is known |
//! | `otel.kind` | `"server"` |
//! | `http.request.method` | `GET`, `POST`, ... |
//! | `url.path` | the request path (no query string) |
//! | `http.route` | the matched route template, when known (see [`Route`](super::Route)) |
//! | `server.address` | host from the URI authority or the `Host` header |
//! | `user_agent.original` | the `User-Agent` header |
//! | `request_id` | the [`RequestId`], when the request id layer ran |
//! | `http.response.status_code` | recorded when the response head is ready |
//! | `otel.status_code`, `error.type` | `"ERROR"` and the status code on 5xx (or an error) |
//!
//! With a `tracing-opentelemetry` layer installed (chassis-observability's subscriber) this span
//! becomes an OpenTelemetry server span in the caller's trace. Without one, the trace id of the
//! incoming `traceparent` is still made available to the code serving the request, so error
//! bodies ([`ApiError`](crate::error::ApiError)) and the access log carry it
//! (see [`current_trace_id`](crate::error::current_trace_id)).
//!
//! The route is only known when it is set before this layer runs: under axum, add the chassis
//! layers with `Router::layer` (which runs them after routing, so axum's `MatchedPath` is
//! present; needs the `axum` feature) or insert a [`Route`](super::Route) extension yourself.
//!
//! # Example
//! ```
//! use chassis_http::layers::server_span::ServerSpanLayer;
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = ServiceBuilder::new().layer(ServerSpanLayer::new()).service(service_fn(
//!     |_req: http::Request<()>| async {
//!         // Errors built here carry the caller's trace id.
//!         let trace_id = chassis_http::error::current_trace_id();
//!         Ok::<_, std::convert::Infallible>(http::Response::new(trace_id.unwrap_or_default()))
//!     },
//! ));
//! let req = http::Request::builder()
//!     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
//!     .body(())
//!     .unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.body(), "4bf92f3577b34da6a3ce929d0e0e4736");
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use chassis_observability::propagation::{HeaderExtractor, extract_context};
use http::{HeaderName, Request, Response, header};
use opentelemetry::trace::{TraceContextExt, TraceId};
use pin_project_lite::pin_project;
use tokio::task::futures::TaskLocalFuture;
use tracing::Span;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::request_id::RequestId;
use super::{http_route, status_str};
use crate::error::REQUEST_TRACE_ID;

/// Target of the server span.
pub const SPAN_TARGET: &str = "chassis_http::server";

/// Layer adding [`ServerSpanService`].
#[derive(Debug, Clone, Default)]
pub struct ServerSpanLayer {
    _priv: (),
}

impl ServerSpanLayer {
    /// The layer.
    pub fn new() -> Self {
        Self::default()
    }
}

chassis_core::__impl_layer!(ServerSpanLayer => ServerSpanService {  });

/// Extracts the trace context and runs the request in a server span; see the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct ServerSpanService<S> {
    inner: S,
}

fn server_address<B>(req: &Request<B>) -> Option<&str> {
    if let Some(host) = req.uri().host() {
        return Some(host);
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?;
    // Strip a port, keeping bracketed IPv6 literals whole.
    Some(match host.rfind(':') {
        Some(i) if !host[i..].contains(']') => &host[..i],
        _ => host,
    })
}

/// The W3C trace context header.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Builds the server span for `req` (disabled, and free, when no subscriber wants it).
pub(crate) fn server_span<B>(req: &Request<B>) -> Span {
    // Checked first because, with no tracing subscriber installed at all, `tracing`'s `log`
    // compatibility (a feature some dependencies turn on) evaluates and records every field
    // of a disabled span. Not with `tracing::enabled!`: that asks the subscriber a second
    // time per request (the span macro asks again), and under per-layer filters the answer to
    // such a hint can leave a layer's "disabled" mark behind for the span that follows (a span
    // whose callsite is always enabled is not asked again), so the OpenTelemetry layer of the
    // chassis subscriber missed every server span.
    if !tracing::dispatcher::has_been_set() {
        return Span::none();
    }
    let method = req.method().as_str();
    let route = http_route(req.extensions());
    // Without a route the name is the method itself, recorded as a `&str`: no text is built
    // for it (a `format!` and a `Display` pass per request).
    let named_with_route;
    let name = match route {
        Some(route) => {
            named_with_route = format!("{method} {route}");
            named_with_route.as_str()
        }
        None => method,
    };
    let span = tracing::info_span!(
        target: SPAN_TARGET,
        "HTTP request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = method,
        url.path = req.uri().path(),
        http.route = route,
        server.address = server_address(req),
        user_agent.original = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
        request_id = req.extensions().get::<RequestId>().map(RequestId::as_str),
        http.response.status_code = Empty,
        error.type = Empty,
    );
    span
}

crate::middleware::impl_middleware! {
    ServerSpanService => ResponseFuture;

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let span = server_span(&req);
        let mut trace_id = None;
        if req.headers().contains_key(TRACEPARENT) {
            let parent = extract_context(&HeaderExtractor(req.headers()));
            let remote = parent.span().span_context().clone();
            if remote.is_valid() {
                trace_id = Some(remote.trace_id());
                if !span.is_disabled() {
                    // Fails only when no OpenTelemetry layer is installed; the trace id still
                    // reaches errors and logs through the task-local.
                    let _ = span.set_parent(parent);
                }
            }
        }
        let inner = {
            let _guard = span.enter();
            self.inner.call(req)
        };
        // The task-local costs a swap on every poll: only set it when there is a trace id to
        // carry, or an outer request's id to hide.
        let inner = if trace_id.is_some() || REQUEST_TRACE_ID.try_with(|_| ()).is_ok() {
            Inner::Scoped {
                future: REQUEST_TRACE_ID.scope(trace_id, inner),
            }
        } else {
            Inner::Plain { future: inner }
        };
        ResponseFuture { inner, span }
    }
}

pin_project! {
    /// Response future of [`ServerSpanService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: Inner<F>,
        span: Span,
    }
}

pin_project! {
    #[project = InnerProj]
    enum Inner<F> {
        Scoped { #[pin] future: TaskLocalFuture<Option<TraceId>, F> },
        Plain { #[pin] future: F },
    }
}

chassis_core::__debug_fields!(<F> ResponseFuture { span });

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
{
    type Output = Result<Response<ResB>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _guard = this.span.enter();
        let result = ready!(match this.inner.project() {
            InnerProj::Scoped { future } => future.poll(cx),
            InnerProj::Plain { future } => future.poll(cx),
        });
        if !this.span.is_disabled() {
            let status = match &result {
                Ok(res) => res.status().as_u16(),
                Err(_) => 500,
            };
            // As an `i64`: the conventions make it an int attribute, and tracing-opentelemetry
            // turns an unsigned field into a string through `Debug` (a `format!` per request).
            this.span
                .record("http.response.status_code", i64::from(status));
            if status >= 500 {
                this.span.record("otel.status_code", "ERROR");
                this.span.record("error.type", status_str(status).as_ref());
            }
        }
        Poll::Ready(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_address_from_host_header() {
        let req = Request::builder()
            .header("host", "orders.local:8080")
            .body(())
            .unwrap();
        assert_eq!(server_address(&req), Some("orders.local"));
        let req = Request::builder().header("host", "[::1]").body(()).unwrap();
        assert_eq!(server_address(&req), Some("[::1]"));
        let req = Request::builder()
            .uri("http://api.example.com/x")
            .body(())
            .unwrap();
        assert_eq!(server_address(&req), Some("api.example.com"));
    }
}
