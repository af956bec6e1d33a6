//! [`GrpcMetricsLayer`]: `rpc_server_call_duration_seconds` by service, method and status.
//!
//! One histogram sample per call, following the OpenTelemetry RPC conventions
//! (`rpc.server.call.duration`, seconds): labels `rpc.system` (`grpc`), `rpc.service`
//! (`inventory.v1.Inventory`), `rpc.method` (`Reserve`) and `rpc.grpc.status_code` (the
//! number, `0` for OK). A gRPC call's status usually comes in the trailers after the last
//! message, so the sample is taken when the response body ends (a streaming call is timed to
//! its end), or at once for a trailers-only answer (an error before any message). A body that
//! is dropped before its status was sent (the client went away) counts as `CANCELLED` (1); one
//! that ends without a status, as `UNKNOWN` (2).
//!
//! A path that is not `/<service>/<method>` is labelled `_OTHER` for both.
//!
//! # Example
//! ```
//! use chassis_http::grpc::GrpcMetricsLayer;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = GrpcMetricsLayer::new().layer(service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(chassis_http::grpc::code::status_response(tonic::Code::NotFound, "no such item", None))
//! }));
//! let req = http::Request::builder().uri("/inventory.v1.Inventory/Get").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap(); // recorded: rpc.grpc.status_code="5"
//! assert_eq!(res.headers()["grpc-status"], "5");
//! # }
//! ```

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::Bytes;
use chassis_core::metric_catalogue::{self as names, labels};
use http::{Request, Response};
use http_body::Frame;
use pin_project_lite::pin_project;
use tonic::Code;

use super::code::{code_label, grpc_code};
use crate::body::{Body, BoxError, boxed};
use crate::future::{Finish, Finishing};

/// Records `rpc_server_call_duration_seconds`; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer {
    _priv: (),
}

impl GrpcMetricsLayer {
    /// The layer; it has nothing to configure.
    pub fn new() -> Self {
        Self::default()
    }
}

chassis_core::__impl_layer!(GrpcMetricsLayer => GrpcMetrics {  });

/// The service of [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
}

/// `(service, method)` of a gRPC path `/<service>/<method>`.
pub(crate) fn rpc_names(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

crate::middleware::impl_middleware! {
    boxed, GrpcMetrics => ResponseFuture;

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let (service, method) = rpc_names(req.uri().path()).unwrap_or(("_OTHER", "_OTHER"));
        let call = Call::new(names::RPC_SERVER_CALL_DURATION, service, method, None);
        Finishing::new(self.inner.call(req), hook::Recording(Some(call)))
    }
}

/// One call's labels and start, recorded once: when its status is known, or on drop. The
/// client's attempts ([`GrpcClient`](super::GrpcClient)) are recorded the same way, into their
/// own histogram and their client span.
#[derive(Debug)]
pub(crate) struct Call {
    metric: &'static str,
    service: String,
    method: String,
    start: Instant,
    code: Option<Code>,
    recorded: bool,
    span: Option<tracing::Span>,
}

impl Call {
    /// A call starting now, to be recorded into the histogram `metric` and, with `span`, as
    /// the span's `rpc.grpc.status_code` (and `otel.status_code` `ERROR` for a code other than
    /// `OK`).
    pub(crate) fn new(
        metric: &'static str,
        service: &str,
        method: &str,
        span: Option<tracing::Span>,
    ) -> Self {
        Self {
            metric,
            service: service.to_owned(),
            method: method.to_owned(),
            start: Instant::now(),
            code: None,
            recorded: false,
            span,
        }
    }

    /// Sets the code recorded if the call ends without a status of its own (a transport error).
    pub(crate) fn failed(&mut self, code: Code) {
        self.code = Some(code);
    }

    fn record(&mut self, code: Code) {
        if std::mem::replace(&mut self.recorded, true) {
            return;
        }
        if let Some(span) = &self.span {
            span.record("rpc.grpc.status_code", code as i32);
            if code != Code::Ok {
                span.record("otel.status_code", "ERROR");
            }
        }
        ::metrics::histogram!(
            self.metric,
            labels::RPC_SYSTEM => "grpc",
            labels::RPC_SERVICE => std::mem::take(&mut self.service),
            labels::RPC_METHOD => std::mem::take(&mut self.method),
            labels::RPC_GRPC_STATUS_CODE => code_label(code),
        )
        .record(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(Code::Cancelled);
        self.record(code);
    }
}

/// The response future of [`GrpcMetrics`].
pub type ResponseFuture<F> = Finishing<F, hook::Recording>;

mod hook {
    /// The call to record, once the response's status is known.
    #[derive(Debug)]
    pub struct Recording(pub(super) Option<super::Call>);
}

impl<ResB, E> Finish<Result<Response<ResB>, E>> for hook::Recording
where
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    fn finish(&mut self, result: Result<Response<ResB>, E>) -> Self::Output {
        let mut call = self.0.take().expect("polled after completion");
        match result {
            Ok(response) => Ok(observed(response, call)),
            Err(err) => {
                call.code = Some(Code::Internal);
                Err(err)
            }
        }
    }
}

/// `response` with `call` recorded: at once for a trailers-only answer (the status in the
/// head), else when the body's trailers or its end pass.
pub(crate) fn observed<B>(response: Response<B>, mut call: Call) -> Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    if let Some(code) = grpc_code(response.headers()) {
        call.code = Some(code);
        call.record(code);
        return response.map(boxed);
    }
    response.map(|body| boxed(StatusBody { body, call }))
}

pin_project! {
    /// A response body that records its call when the trailers (with `grpc-status`) or the end
    /// of the body pass.
    struct StatusBody<B> {
        #[pin]
        body: B,
        call: Call,
    }
}

impl<B> http_body::Body for StatusBody<B>
where
    B: http_body::Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.body.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(code) = frame.trailers_ref().and_then(grpc_code) {
                    this.call.code = Some(code);
                    this.call.record(code);
                }
            }
            Some(Err(_)) => this.call.code = Some(Code::Internal),
            None => {
                let code = this.call.code.unwrap_or(Code::Unknown);
                this.call.code = Some(code);
                this.call.record(code);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_paths_name_service_and_method() {
        assert_eq!(
            rpc_names("/inventory.v1.Inventory/Reserve"),
            Some(("inventory.v1.Inventory", "Reserve"))
        );
        assert_eq!(rpc_names("/health/ready"), Some(("health", "ready")));
        assert_eq!(rpc_names("/a/b/c"), None);
        assert_eq!(rpc_names("/only"), None);
        assert_eq!(rpc_names("//x"), None);
    }
}
