//! [`GrpcLayers`]: the chassis server stack for tonic services, gRPC-aware where HTTP's
//! semantics differ.
//!
//! Order, outermost first:
//!
//! 1. [`ServerSpanLayer`]: the W3C `traceparent`/`tracestate` (and baggage) of the call's
//!    metadata extracted, the call run in a server span, its trace id available to errors;
//! 2. [`GrpcMetricsLayer`]: `rpc_server_call_duration_seconds` by service, method and
//!    `rpc.grpc.status_code`;
//! 3. [`StatusMappingLayer`]: every chassis error answer below (and the application's own
//!    layers, such as [`RequireServiceTokenLayer`](crate::auth::RequireServiceTokenLayer)'s
//!    401/403) becomes a gRPC status with the trace id in the `x-trace-id` metadata;
//! 4. [`GuardLayer`]: a panicking handler becomes `INTERNAL`, a call over
//!    [`max_in_flight`](GrpcLayers::max_in_flight) concurrent calls (default 1024) is shed at
//!    once with `RESOURCE_EXHAUSTED` and `retry-after`;
//! 5. [`GrpcDeadlineLayer`]: the caller's `grpc-timeout`, bounded by
//!    [`timeout`](GrpcLayers::timeout) (default 30 s), ends a call with `DEADLINE_EXCEEDED`;
//!
//! then whatever the application adds (service-token auth) and its tonic services (a generated
//! `FooServer`, a [`GrpcRouter`](super::GrpcRouter) of several, the
//! [health service](super::GrpcHealth)). There is no HTTP body limit: tonic bounds each
//! message (4 MiB decoded by default).
//!
//! # Example
//! ```
//! use chassis_http::grpc::{GrpcLayers, code::grpc_code};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = GrpcLayers::new().layer(service_fn(|_req: http::Request<_>| async {
//!     if true { panic!("bug") }
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! }));
//! let req = http::Request::builder().uri("/shop.v1.Shop/Buy").body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(grpc_code(res.headers()), Some(tonic::Code::Internal));
//! # }
//! ```

use std::time::Duration;

use tower_layer::Layer;

use super::deadline::{GrpcDeadline, GrpcDeadlineLayer};
use super::metrics::{GrpcMetrics, GrpcMetricsLayer};
use super::status_mapping::{StatusMapping, StatusMappingLayer};
use crate::layers::guard::{GuardLayer, GuardService};
use crate::layers::server_span::{ServerSpanLayer, ServerSpanService};

/// The chassis server stack for gRPC; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct GrpcLayers {
    guard: GuardLayer,
    deadline: GrpcDeadlineLayer,
}

impl Default for GrpcLayers {
    fn default() -> Self {
        Self {
            guard: GuardLayer::errors_only()
                .max_in_flight(1024)
                .catch_panic(true),
            deadline: GrpcDeadlineLayer::new(),
        }
    }
}

impl GrpcLayers {
    /// The stack with its defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The longest a call may take, whatever deadline its caller sent; `None` for no bound
    /// beyond the caller's. Defaults to 30 s.
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.deadline = self.deadline.max(timeout);
        self
    }

    /// Most calls running at once; more are answered `RESOURCE_EXHAUSTED` at once. `None`
    /// for no limit. Defaults to 1024. The limit is shared by every service this stack (and its
    /// clones) wraps.
    pub fn max_in_flight(mut self, max: impl Into<Option<usize>>) -> Self {
        self.guard = self.guard.max_in_flight(max);
        self
    }

    /// The `retry-after` a shed call is answered with. Defaults to 1 s.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.guard = self.guard.retry_after(retry_after);
        self
    }

    /// Whether a panicking handler becomes `INTERNAL` (logged at ERROR) rather than a reset
    /// stream. Defaults to `true`.
    pub fn catch_panic(mut self, catch: bool) -> Self {
        self.guard = self.guard.catch_panic(catch);
        self
    }

    /// Calls running now under this stack's concurrency limit.
    pub fn in_flight(&self) -> usize {
        self.guard.in_flight()
    }
}

/// The service [`GrpcLayers`] makes of `S`.
pub type GrpcStack<S> =
    ServerSpanService<GrpcMetrics<StatusMapping<GuardService<GrpcDeadline<S>>>>>;

impl<S> Layer<S> for GrpcLayers {
    type Service = GrpcStack<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let inner = self.deadline.layer(inner);
        let inner = self.guard.layer(inner);
        let inner = StatusMappingLayer::new().layer(inner);
        let inner = GrpcMetricsLayer::new().layer(inner);
        ServerSpanLayer::new().layer(inner)
    }
}
