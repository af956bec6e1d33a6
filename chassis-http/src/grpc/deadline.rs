//! [`GrpcDeadlineLayer`]: the caller's `grpc-timeout` honoured.
//!
//! A gRPC client sends its deadline as the `grpc-timeout` header (an integer of at most 8
//! digits and a unit: `H`, `M`, `S`, `m`, `u`, `n`). The server should stop working on a call
//! whose caller has given up: this layer drops the handler's future once the deadline has
//! passed and answers `DEADLINE_EXCEEDED` with the trace id. A server-side
//! [`max`](GrpcDeadlineLayer::max) bounds every call, also those without a deadline and those
//! whose deadline is longer (defaults to 30 s, like the HTTP stack's timeout).
//!
//! The deadline covers the response head, as the HTTP timeout does: a server-streaming call
//! that has begun answering is not cut off (its client's own deadline still ends it).
//!
//! # Example
//! ```
//! use chassis_http::grpc::{GrpcDeadlineLayer, code::grpc_code};
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let svc = GrpcDeadlineLayer::new().max(Duration::from_secs(5)).layer(service_fn(|_req: http::Request<()>| async {
//!     tokio::time::sleep(Duration::from_secs(60)).await;
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! }));
//! let req = http::Request::builder().header("grpc-timeout", "20m").body(()).unwrap();
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(grpc_code(res.headers()), Some(tonic::Code::DeadlineExceeded));
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tonic::Code;

use super::code::status_response;
use crate::body::{Body, BoxError, boxed};
use crate::error::current_trace_id;

/// The header a gRPC client sends its deadline in.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The duration of a `grpc-timeout` value, or `None` if it is not one (more than 8 digits, no
/// or an unknown unit).
pub fn parse_grpc_timeout(value: &HeaderValue) -> Option<Duration> {
    let value = value.as_bytes();
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A `grpc-timeout` value for `timeout`: the finest unit whose count fits in 8 digits,
/// rounded up so the server never sees a shorter deadline than the caller's.
pub fn grpc_timeout_value(timeout: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    let units: [(u128, &str); 6] = [
        (1, "n"),
        (1_000, "u"),
        (1_000_000, "m"),
        (1_000_000_000, "S"),
        (60_000_000_000, "M"),
        (3_600_000_000_000, "H"),
    ];
    for (per, unit) in units {
        let count = nanos.div_ceil(per);
        if count <= MAX {
            return HeaderValue::try_from(format!("{count}{unit}")).expect("digits and a letter");
        }
    }
    HeaderValue::from_static("99999999H")
}

/// Honours `grpc-timeout`; see the [module docs](self).
#[derive(Debug, Clone, Copy)]
pub struct GrpcDeadlineLayer {
    max: Option<Duration>,
}

impl Default for GrpcDeadlineLayer {
    fn default() -> Self {
        Self {
            max: Some(Duration::from_secs(30)),
        }
    }
}

impl GrpcDeadlineLayer {
    /// The layer with the default bound of 30 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// The longest a call may take whatever its caller asked; `None` for no bound beyond the
    /// caller's. Defaults to 30 s.
    pub fn max(mut self, max: impl Into<Option<Duration>>) -> Self {
        self.max = max.into();
        self
    }
}

chassis_core::__impl_layer!(GrpcDeadlineLayer => GrpcDeadline { max });

/// The service of [`GrpcDeadlineLayer`].
#[derive(Debug, Clone)]
pub struct GrpcDeadline<S> {
    inner: S,
    max: Option<Duration>,
}

crate::middleware::impl_middleware! {
    boxed, GrpcDeadline => ResponseFuture;

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let asked = req.headers().get(GRPC_TIMEOUT).and_then(parse_grpc_timeout);
        let timeout = match (asked, self.max) {
            (Some(a), Some(m)) => Some(a.min(m)),
            (a, m) => a.or(m),
        };
        ResponseFuture {
            inner: self.inner.call(req),
            timeout,
            sleep: None,
        }
    }
}

pin_project! {
    /// The response future of [`GrpcDeadline`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        timeout: Option<Duration>,
        // Armed on the first poll that finds the response not ready, so calls answered at
        // once never touch the timer.
        #[pin]
        sleep: Option<Sleep>,
    }
}

chassis_core::__debug_fields!(<F> ResponseFuture { timeout });

impl<F, ResB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(result) = this.inner.poll(cx) {
            return Poll::Ready(result.map(|response| response.map(boxed)));
        }
        let Some(timeout) = *this.timeout else {
            return Poll::Pending;
        };
        if this.sleep.is_none() {
            this.sleep.set(Some(tokio::time::sleep(timeout)));
        }
        let sleep = this.sleep.as_pin_mut().expect("armed above");
        if sleep.poll(cx).is_pending() {
            return Poll::Pending;
        }
        tracing::debug!(?timeout, "gRPC deadline passed; cancelling the call");
        Poll::Ready(Ok(status_response(
            Code::DeadlineExceeded,
            &format!("deadline of {timeout:?} exceeded"),
            current_trace_id().as_deref(),
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_parse_and_round_trip() {
        let p = |v: &'static str| parse_grpc_timeout(&HeaderValue::from_static(v));
        assert_eq!(p("100m"), Some(Duration::from_millis(100)));
        assert_eq!(p("2S"), Some(Duration::from_secs(2)));
        assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(p("5n"), Some(Duration::from_nanos(5)));
        assert_eq!(p("123456789m"), None, "more than 8 digits");
        assert_eq!(p("10x"), None);
        assert_eq!(p("m"), None);
        assert_eq!(p(""), None);
        assert_eq!(p("-1S"), None);
        for d in [
            Duration::from_millis(250),
            Duration::from_secs(3),
            Duration::from_nanos(7),
        ] {
            assert_eq!(parse_grpc_timeout(&grpc_timeout_value(d)), Some(d));
        }
        let long = grpc_timeout_value(Duration::from_secs(365 * 24 * 3600));
        assert!(parse_grpc_timeout(&long).unwrap() >= Duration::from_secs(365 * 24 * 3600));
        assert_eq!(grpc_timeout_value(Duration::from_micros(1500)), "1500000n");
        assert_eq!(grpc_timeout_value(Duration::from_secs(1000)), "1000000m");
    }

    #[tokio::test(start_paused = true)]
    async fn the_shorter_of_caller_deadline_and_bound_wins() {
        use tower::{Layer, ServiceExt, service_fn};
        let slow = service_fn(|_req: Request<()>| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, std::convert::Infallible>(Response::new(crate::body::empty()))
        });
        let svc = GrpcDeadlineLayer::new()
            .max(Duration::from_secs(1))
            .layer(slow);
        let start = tokio::time::Instant::now();
        let req = Request::builder()
            .header(GRPC_TIMEOUT, "5S")
            .body(())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(
            super::super::code::grpc_code(res.headers()),
            Some(Code::DeadlineExceeded)
        );
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let unbounded = GrpcDeadlineLayer::new().max(None).layer(svc.into_inner());
        let res = unbounded.oneshot(Request::new(())).await.unwrap();
        assert_eq!(super::super::code::grpc_code(res.headers()), None);
        assert_eq!(start.elapsed(), Duration::from_secs(11));
    }
}
