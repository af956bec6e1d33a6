//! [`GuardLayer`]: the five inner standard layers ([`catch_panic`](super::catch_panic),
//! [`timeout`](super::timeout), [`load_shed`](super::load_shed),
//! [`body_limit`](super::body_limit), [`error_response`](super::error_response)) fused into one
//! service, which is what [`StandardLayers`](super::StandardLayers) stacks.
//!
//! It behaves exactly as those five layers stacked in that order (outermost first) and reuses
//! their pieces (the permit counter, the limited body, the panic, shed, 413, 504 and error
//! responses); each of them stays available on its own for à-la-carte stacks. Fused, a request
//! costs one `call` and one response future instead of five: every layer of a tower stack moves
//! the request (264 bytes with hyper's body) and its growing response future by value, and polls
//! and drops its own future, which on a small handler costs more than the five layers' actual
//! work (`benches/README.md`, "HTTP server").
//!
//! Per request, in the order of the stacked layers:
//!
//! 1. without a concurrency permit (taken in `poll_ready`, never waited for): 503 with
//!    `Retry-After`;
//! 2. a declared `Content-Length` over the limit: 413 at once; an undeclared length is watched
//!    while the handler reads the body, and a body that crosses the limit makes the response a
//!    413;
//! 3. an inner service that failed `poll_ready`, or a call that ends in an error: the error's
//!    JSON response; an error response (status 400 or above) without a JSON body, such as an
//!    axum rejection or a router's 404/405: the same status with the JSON error body;
//! 4. a panic in the handler's `call` or in its future: 500, and the server keeps serving;
//! 5. a response head not ready within the timeout (counted from `call`): 504.
//!
//! # Example
//! ```
//! use chassis_http::layers::guard::GuardLayer;
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let guard = GuardLayer::new(Duration::from_secs(10), 512, Duration::from_secs(1), 1 << 20);
//! let svc = guard.layer(service_fn(|_req: http::Request<_>| async {
//!     Err::<http::Response<String>, _>(std::io::Error::other("boom"))
//! }));
//! let req = http::Request::new(http_body_util::Empty::<bytes::Bytes>::new());
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 500);
//! # }
//! ```

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use super::body_limit::{LimitedBody, content_length};
use super::catch_panic::panic_response;
use super::error_response::{error_response, finish};
use super::load_shed::{InFlight, Permit, shed_response};
use crate::body::{Body, BoxError};
use crate::error::ApiError;

/// Layer adding [`GuardService`]; see the [module docs](self).
///
/// The concurrency limit is shared by every service this layer produces.
#[derive(Debug, Clone)]
pub struct GuardLayer {
    timeout: Duration,
    in_flight: Arc<InFlight>,
    max_in_flight: usize,
    retry_after: Duration,
    body_limit: usize,
}

impl GuardLayer {
    /// Requests time out after `timeout` (504), at most `max_in_flight` run at once (more get
    /// 503 with `retry_after`), bodies may be at most `body_limit` bytes (413).
    pub fn new(
        timeout: Duration,
        max_in_flight: usize,
        retry_after: Duration,
        body_limit: usize,
    ) -> Self {
        Self {
            timeout,
            in_flight: Arc::default(),
            // As `LoadShedLayer`: at least one request may run.
            max_in_flight: max_in_flight.max(1),
            retry_after,
            body_limit,
        }
    }

    pub(crate) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    pub(crate) fn set_body_limit(&mut self, limit: usize) {
        self.body_limit = limit;
    }

    pub(crate) fn set_retry_after(&mut self, retry_after: Duration) {
        self.retry_after = retry_after;
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = GuardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GuardService {
            inner,
            layer: self.clone(),
            permit: None,
            not_ready: None,
        }
    }
}

/// The five inner standard layers as one service; see the [module docs](self).
#[derive(Debug)]
pub struct GuardService<S> {
    inner: S,
    layer: GuardLayer,
    /// Taken in `poll_ready` for the next `call`.
    permit: Option<Permit>,
    /// The inner service's `poll_ready` error, answered by the next `call`.
    not_ready: Option<BoxError>,
}

impl<S: Clone> Clone for GuardService<S> {
    fn clone(&self) -> Self {
        // Permits and readiness are per request, not per service.
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
            permit: None,
            not_ready: None,
        }
    }
}

impl<S> GuardService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for GuardService<S>
where
    S: Service<Request<LimitedBody<ReqB>>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
    ReqB: http_body::Body,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = GuardFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.permit.is_none() {
            // Never wait for a permit: without one, `call` answers 503 straight away.
            self.permit = self.layer.in_flight.try_acquire(self.layer.max_in_flight);
        }
        if let Err(err) = ready!(self.inner.poll_ready(cx)) {
            // The service cannot take the request; `call` answers for it.
            self.not_ready = Some(err.into());
        }
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let limit = self.layer.body_limit;
        // NOTE: relies on `poll_ready` having tried to take a permit for this request.
        let Some(permit) = self.permit.take() else {
            self.not_ready = None;
            return GuardFuture::answered(shed_response(
                self.layer.max_in_flight,
                self.layer.retry_after,
            ));
        };
        let declared = content_length(req.headers());
        if declared.is_some_and(|len| len > limit as u64) {
            self.not_ready = None;
            return GuardFuture::answered(ApiError::payload_too_large(limit).into_response());
        }
        if let Some(err) = self.not_ready.take() {
            return GuardFuture::answered(error_response(err));
        }
        let mut tripped = None;
        let req = req.map(|body| {
            // A body that declares its length, or says it fits (no body at all, most GETs),
            // needs no watching.
            if declared.is_some() || body.size_hint().upper().is_some_and(|n| n <= limit as u64) {
                LimitedBody::unlimited(body)
            } else {
                let flag = Arc::new(AtomicBool::new(false));
                tripped = Some(flag.clone());
                LimitedBody::limited(body, limit, flag)
            }
        });
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
            Ok(future) => GuardFuture {
                state: State::Running {
                    future,
                    permit: Some(permit),
                    tripped,
                    start: Instant::now(),
                    timer: None,
                },
                timeout: self.layer.timeout,
                limit,
            },
            Err(panic) => GuardFuture::answered(panic_response(panic)),
        }
    }
}

pin_project! {
    /// Response future of [`GuardService`].
    pub struct GuardFuture<F> {
        #[pin]
        state: State<F>,
        timeout: Duration,
        limit: usize,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running {
            #[pin]
            future: F,
            // Released when the call ends (answered, failed, panicked or timed out).
            permit: Option<Permit>,
            // Set when an undeclared body crossed the limit.
            tripped: Option<Arc<AtomicBool>>,
            start: Instant,
            // Armed on the first `Pending` (boxed to keep this future small for the common
            // case).
            timer: Option<Pin<Box<Sleep>>>,
        },
        Answered { response: Option<Response<Body>> },
        Done,
    }
}

impl<F> GuardFuture<F> {
    fn answered(response: Response<Body>) -> Self {
        Self {
            state: State::Answered {
                response: Some(response),
            },
            timeout: Duration::ZERO,
            limit: 0,
        }
    }
}

impl<F> fmt::Debug for GuardFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuardFuture")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<F, ResB, E> Future for GuardFuture<F>
where
    F: Future<Output = Result<Response<ResB>, E>>,
    E: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, Infallible>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut state = this.state;
        let response = match state.as_mut().project() {
            StateProj::Running {
                future,
                tripped,
                start,
                timer,
                ..
            } => match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                Ok(Poll::Ready(result)) => {
                    let response = match result {
                        Ok(response) => finish(response),
                        Err(err) => error_response(err.into()),
                    };
                    if tripped.as_ref().is_some_and(|t| t.load(Ordering::Acquire)) {
                        ApiError::payload_too_large(*this.limit).into_response()
                    } else {
                        response
                    }
                }
                // The panicked future must not be polled again: it is dropped below.
                Err(panic) => panic_response(panic),
                Ok(Poll::Pending) => {
                    let deadline = *start + *this.timeout;
                    let timer =
                        timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    ready!(timer.as_mut().poll(cx));
                    ApiError::timeout(*this.timeout).into_response()
                }
            },
            StateProj::Answered { response } => response.take().expect("polled after completion"),
            StateProj::Done => panic!("GuardFuture polled after completion"),
        };
        // Drops the inner future, the permit and the timer.
        state.set(State::Done);
        Poll::Ready(Ok(response))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::StatusCode;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tower::ServiceExt;

    use super::*;

    fn guard() -> GuardLayer {
        GuardLayer::new(Duration::from_secs(1), 1, Duration::from_secs(2), 8)
    }

    async fn body_of(res: Response<Body>) -> String {
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn each_inner_layer_answers_as_stacked() {
        // Ok passes through, with the body boxed.
        let ok = guard().layer(tower::service_fn(|_req: Request<_>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"hi"))))
        }));
        let res = ok
            .clone()
            .oneshot(Request::new(Full::default()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body_of(res).await, "hi");

        // A declared body over the limit: 413 without calling.
        let req = Request::builder()
            .header("content-length", "9")
            .body(Full::new(Bytes::from_static(b"123456789")))
            .unwrap();
        assert_eq!(ok.clone().oneshot(req).await.unwrap().status(), 413);

        // An undeclared body that crosses the limit while the handler reads it: 413.
        let reader = guard().layer(tower::service_fn(
            |req: Request<LimitedBody<StreamBody<_>>>| async move {
                let read = req.into_body().collect().await;
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                    "{}",
                    read.is_ok()
                )))))
            },
        ));
        let chunks = futures_util::stream::iter(
            [b"12345".as_slice(), b"67890".as_slice()]
                .map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(c)))),
        );
        let res = reader
            .oneshot(Request::new(StreamBody::new(chunks)))
            .await
            .unwrap();
        assert_eq!(res.status(), 413);

        // An error becomes its JSON response; a panic becomes 500.
        let failing = guard().layer(tower::service_fn(|_req: Request<_>| async {
            Err::<Response<Full<Bytes>>, _>(std::io::Error::other("boom"))
        }));
        let res = failing
            .oneshot(Request::new(Full::<Bytes>::default()))
            .await
            .unwrap();
        assert_eq!(res.status(), 500);
        assert!(body_of(res).await.contains("\"success\":false"));
        let panicking = guard().layer(tower::service_fn(
            |_req: Request<LimitedBody<Full<Bytes>>>| async {
                if true {
                    panic!("handler bug");
                }
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
            },
        ));
        let res = panicking
            .oneshot(Request::new(Full::default()))
            .await
            .unwrap();
        assert_eq!(res.status(), 500);

        // Too slow: 504 after the timeout.
        let slow = guard().layer(tower::service_fn(|_req: Request<_>| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        }));
        let start = Instant::now();
        let res = slow
            .oneshot(Request::new(Full::<Bytes>::default()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn sheds_above_the_limit_and_releases_the_permit_when_the_call_ends() {
        let layer = guard();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let release_rx = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
        let svc = layer.layer(tower::service_fn(
            move |_req: Request<LimitedBody<Full<Bytes>>>| {
                let release_rx = release_rx.clone();
                async move {
                    if let Some(rx) = release_rx.lock().await.take() {
                        let _ = rx.await;
                    }
                    Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
                }
            },
        ));
        let first = tokio::spawn(svc.clone().oneshot(Request::new(Full::default())));
        while layer.in_flight.count() == 0 {
            tokio::task::yield_now().await;
        }
        let shed = svc
            .clone()
            .oneshot(Request::new(Full::default()))
            .await
            .unwrap();
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.headers()["retry-after"], "2");
        release_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
        assert_eq!(layer.in_flight.count(), 0);
        let ok = svc.oneshot(Request::new(Full::default())).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }
}
