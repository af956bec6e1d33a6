//! [`GuardLayer`]: what stands between the observability layers and the application: a panic
//! becomes a 500, a slow request a 504, a request over the concurrency limit a 503, a body over
//! the size limit a 413, and every error, whether returned by the inner service or answered by
//! it without a JSON body, the chassis JSON error body. [`StandardLayers`](super::StandardLayers)
//! stacks it with the defaults; on its own, each part can be switched off.
//!
//! Per request, in this order:
//!
//! 1. **load shedding** ([`max_in_flight`](GuardLayer::max_in_flight), default 1024): at most
//!    that many requests run at once; a permit is taken in `poll_ready`, never waited for, and
//!    held until the response head is ready. A request without one is answered at once with
//!    `503 overloaded` and [`Retry-After`](GuardLayer::retry_after) (a queue would only add
//!    latency to requests whose clients are about to time out). The limit is shared by every
//!    service one layer (and its clones) makes, so it bounds the whole server or route;
//! 2. **body limit** ([`body_limit`](GuardLayer::body_limit), default 2 MiB): a declared
//!    `Content-Length` over the limit is a `413 payload_too_large` before the handler runs. A
//!    body without a length (chunked, or HTTP/2 without `content-length`) reaches the handler
//!    as a [`LimitedBody`] that fails with [`LengthLimitError`] once the limit is crossed, and
//!    whatever the handler then answers (axum's extractors answer a plain-text 413) becomes the
//!    JSON 413. Bodies with a declared length within the limit, and bodies whose size hint is
//!    within it (no body at all), are not watched;
//! 3. **error responses** (always on): an inner service that fails `poll_ready` or a call that
//!    ends in an error is answered with [`ApiError::from_box_error`]: a
//!    [`chassis_core::Error`] anywhere in the chain maps to 504/503/429/502 (with `Retry-After`
//!    where it applies), an [`ApiError`] is sent as is, anything else is a 500 whose message
//!    does not leak the cause (the cause is logged at ERROR). A response with status 400 or
//!    above whose `Content-Type` is not JSON (`application/json` or `application/*+json`) gets
//!    the chassis body with the same status and headers: axum's rejections (invalid JSON 400,
//!    missing content type 415, unparsable path parameter 400, undeserialisable body 422), its
//!    router's empty 404 and 405 (the `Allow` header stays), a handler's plain-text error. The
//!    code follows from the status ([`code_for_status`](crate::error::code_for_status)); the
//!    message is the response's `text/plain` body when it is a 4xx and the body is ready (axum's
//!    text, such as `Failed to parse the request body as JSON: ...`), else the status's reason
//!    phrase. The text of a 5xx is logged at ERROR rather than sent, as it may describe
//!    internals. A JSON error body the handler wrote itself is left alone, and a success
//!    response costs one comparison of its status;
//! 4. **catch panic** ([`catch_panic`](GuardLayer::catch_panic), default on): a panic in the
//!    handler's `call` or in its future is logged at ERROR (target `chassis_http::panic`, with
//!    the panic message) and answered `500 internal_error`; the message is never sent to the
//!    client, and the connection and every other request are unaffected;
//! 5. **timeout** ([`timeout`](GuardLayer::timeout), default 30 s): a response head not ready
//!    within the timeout, counted from `call`, drops the inner future (cancelling the handler)
//!    and answers `504 timeout`. The timer is armed only when the response is not ready on the
//!    first poll, so requests answered at once never touch the runtime's timer.
//!
//! A part switched off costs nothing per request: no permit without a concurrency limit, no
//! `Content-Length` parsing without a body limit, no clock read or timer without a timeout, no
//! unwinding guard without panic catching. The error responses stay, so the service never fails
//! (its error type is [`Infallible`]); [`GuardLayer::errors_only`] is that part alone.
//!
//! In the standard stack the guard sits inside the trace, metrics and access-log layers, so a
//! request it answers (a panicked, timed-out or shed one) is traced, counted and logged with the
//! status it got.
//!
//! # Example
//! ```
//! use chassis_http::layers::guard::GuardLayer;
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let guard = GuardLayer::new()
//!     .timeout(Duration::from_secs(10))
//!     .max_in_flight(512)
//!     .body_limit(None);
//! let svc = guard.layer(service_fn(|_req: http::Request<_>| async {
//!     Err::<http::Response<String>, _>(chassis_core::Error::circuit_open(
//!         "payments".into(),
//!         Duration::from_secs(5),
//!     ))
//! }));
//! let req = http::Request::new(http_body_util::Empty::<bytes::Bytes>::new());
//! let res = svc.oneshot(req).await.unwrap();
//! assert_eq!(res.status(), 503);
//! assert_eq!(res.headers()["retry-after"], "5");
//! # }
//! ```

use std::convert::Infallible;
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

use super::StandardLayersConfig;
use super::body_limit::content_length;
pub use super::body_limit::{LengthLimitError, LimitedBody};
use super::catch_panic::panic_response;
use super::error_response::{error_response, finish};
use super::load_shed::{InFlight, Permit, shed_response};
use crate::body::{Body, BoxError};
use crate::error::ApiError;

/// Layer adding [`GuardService`]; see the [module docs](self).
///
/// [`GuardLayer::new`] has every part on with the defaults of
/// [`StandardLayersConfig`]; the builder methods change or switch off each part. The
/// concurrency limit is shared by every service this layer and its clones produce.
#[derive(Debug, Clone)]
pub struct GuardLayer {
    timeout: Option<Duration>,
    max_in_flight: Option<usize>,
    in_flight: Arc<InFlight>,
    retry_after: Duration,
    body_limit: Option<usize>,
    catch_panic: bool,
}

impl Default for GuardLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl GuardLayer {
    /// Every part on, with the defaults of [`StandardLayersConfig`]: 30 s timeout, at most 1024
    /// requests in flight (`Retry-After: 1`), 2 MiB bodies, panics caught.
    pub fn new() -> Self {
        Self::from_config(&StandardLayersConfig::default())
    }

    /// Every part off but the error responses: errors of the inner service and its error
    /// responses without a JSON body become JSON error responses, and nothing else changes.
    pub fn errors_only() -> Self {
        Self {
            timeout: None,
            max_in_flight: None,
            in_flight: Arc::default(),
            retry_after: StandardLayersConfig::default().retry_after,
            body_limit: None,
            catch_panic: false,
        }
    }

    /// The parts configured by `config`, all on.
    pub(crate) fn from_config(config: &StandardLayersConfig) -> Self {
        Self::errors_only()
            .timeout(config.timeout)
            .max_in_flight(config.max_in_flight)
            .retry_after(config.retry_after)
            .body_limit(config.body_limit)
            .catch_panic(true)
    }

    /// Requests whose response head is not ready within `timeout` get a 504; `None` switches
    /// the timeout off. Defaults to 30 s.
    pub fn timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into();
        self
    }

    /// At most `max` requests run at once (at least 1); more get a 503. `None` switches load
    /// shedding off. Defaults to 1024.
    pub fn max_in_flight(mut self, max: impl Into<Option<usize>>) -> Self {
        self.max_in_flight = max.into().map(|max| max.max(1));
        self
    }

    /// The `Retry-After` of shed requests. Defaults to 1 s.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Request bodies may be at most `limit` bytes (413 otherwise); `None` switches the limit
    /// off. Defaults to 2 MiB.
    pub fn body_limit(mut self, limit: impl Into<Option<usize>>) -> Self {
        self.body_limit = limit.into();
        self
    }

    /// Whether a panicking handler becomes a 500 (`true`) or the panic unwinds through the
    /// service (`false`). Defaults to `true`.
    pub fn catch_panic(mut self, catch: bool) -> Self {
        self.catch_panic = catch;
        self
    }

    /// Requests currently holding a concurrency permit.
    pub fn in_flight(&self) -> usize {
        self.in_flight.count()
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

/// Guards the inner service; see the [module docs](self).
#[derive(Debug)]
pub struct GuardService<S> {
    inner: S,
    layer: GuardLayer,
    /// Taken in `poll_ready` for the next `call`, when load shedding is on.
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
    chassis_core::__define_inner_service_accessors!();
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
        if let Some(max) = self.layer.max_in_flight
            && self.permit.is_none()
        {
            // Never wait for a permit: without one, `call` answers 503 straight away.
            self.permit = self.layer.in_flight.try_acquire(max);
        }
        if let Err(err) = ready!(self.inner.poll_ready(cx)) {
            // The service cannot take the request; `call` answers for it.
            self.not_ready = Some(err.into());
        }
        Poll::Ready(Ok(()))
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let layer = &self.layer;
        // NOTE: relies on `poll_ready` having tried to take a permit for this request.
        let permit = self.permit.take();
        if let Some(max) = layer.max_in_flight
            && permit.is_none()
        {
            self.not_ready = None;
            return GuardFuture::answered(shed_response(max, layer.retry_after));
        }
        let mut tripped = None;
        let req = match layer.body_limit {
            None => req.map(LimitedBody::unlimited),
            Some(limit) => {
                let declared = content_length(req.headers());
                if declared.is_some_and(|len| len > limit as u64) {
                    self.not_ready = None;
                    return GuardFuture::answered(
                        ApiError::payload_too_large(limit).into_response(),
                    );
                }
                req.map(|body| {
                    // A body that declares its length, or says it fits (no body at all, most
                    // GETs), needs no watching: hyper enforces the declared length.
                    if declared.is_some()
                        || body.size_hint().upper().is_some_and(|n| n <= limit as u64)
                    {
                        LimitedBody::unlimited(body)
                    } else {
                        let flag = Arc::new(AtomicBool::new(false));
                        tripped = Some(flag.clone());
                        LimitedBody::limited(body, limit, flag)
                    }
                })
            }
        };
        if let Some(err) = self.not_ready.take() {
            return GuardFuture::answered(error_response(err));
        }
        let future = if layer.catch_panic {
            match catch_unwind(AssertUnwindSafe(|| self.inner.call(req))) {
                Ok(future) => future,
                Err(panic) => return GuardFuture::answered(panic_response(panic)),
            }
        } else {
            self.inner.call(req)
        };
        GuardFuture {
            state: State::Running {
                future,
                permit,
                tripped,
                // No clock read without a timeout; a deadline past the end of time is none.
                deadline: layer
                    .timeout
                    .and_then(|timeout| Instant::now().checked_add(timeout)),
                timer: None,
            },
            timeout: layer.timeout.unwrap_or_default(),
            limit: layer.body_limit.unwrap_or_default(),
            catch_panic: layer.catch_panic,
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
        catch_panic: bool,
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
            deadline: Option<Instant>,
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
            catch_panic: false,
        }
    }
}

chassis_core::__debug_fields!(<F> GuardFuture { timeout });

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
                mut future,
                tripped,
                deadline,
                timer,
                ..
            } => {
                let polled = if *this.catch_panic {
                    catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx)))
                } else {
                    Ok(future.as_mut().poll(cx))
                };
                match polled {
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
                        let Some(deadline) = *deadline else {
                            return Poll::Pending;
                        };
                        let timer = timer
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                        ready!(timer.as_mut().poll(cx));
                        ApiError::timeout(*this.timeout).into_response()
                    }
                }
            }
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

    use http::{StatusCode, header};
    use http_body::Frame;
    use http_body_util::{BodyExt, Full, StreamBody};
    use tower::ServiceExt;

    use super::*;

    type Chunks = StreamBody<
        futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>,
    >;

    fn chunked(chunks: &[&[u8]]) -> Request<Chunks> {
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        Request::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    /// A body of `len` bytes that declares its length.
    fn declared(len: usize) -> Request<Chunks> {
        let mut req = chunked(&[&vec![b'x'; len]]);
        req.headers_mut().insert(header::CONTENT_LENGTH, len.into());
        req
    }

    /// Reads the whole body, answering as a framework does when reading fails: a plain 400.
    async fn read_all<B>(req: Request<LimitedBody<B>>) -> Result<Response<Full<Bytes>>, Infallible>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        Ok(match req.into_body().collect().await {
            Ok(b) => Response::new(Full::new(Bytes::from(b.to_bytes().len().to_string()))),
            Err(_) => Response::builder()
                .status(400)
                .body(Full::new(Bytes::from_static(b"bad")))
                .unwrap(),
        })
    }

    async fn ok<B>(_req: Request<B>) -> Result<Response<Full<Bytes>>, Infallible> {
        Ok(Response::new(Full::new(Bytes::from_static(b"hi"))))
    }

    async fn body_of(res: Response<Body>) -> String {
        String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn defaults_are_the_standard_layers_defaults() {
        let guard = GuardLayer::new();
        let config = StandardLayersConfig::default();
        assert_eq!(guard.timeout, Some(config.timeout));
        assert_eq!(guard.max_in_flight, Some(config.max_in_flight));
        assert_eq!(guard.retry_after, config.retry_after);
        assert_eq!(guard.body_limit, Some(config.body_limit));
        assert!(guard.catch_panic);

        let off = GuardLayer::errors_only();
        assert_eq!(
            (
                off.timeout,
                off.max_in_flight,
                off.body_limit,
                off.catch_panic
            ),
            (None, None, None, false)
        );
        assert_eq!(GuardLayer::new().max_in_flight(0).max_in_flight, Some(1));
    }

    #[tokio::test]
    async fn success_passes_through_with_every_part_on() {
        let svc = GuardLayer::new().layer(tower::service_fn(ok));
        let res = svc
            .oneshot(Request::new(Full::<Bytes>::default()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body_of(res).await, "hi");
    }

    #[tokio::test]
    async fn body_limit_answers_413_for_declared_and_streamed_bodies() {
        let svc = GuardLayer::errors_only()
            .body_limit(5)
            .layer(tower::service_fn(read_all));

        // Declared over the limit: 413 before the handler runs.
        let res = svc.clone().oneshot(declared(6)).await.unwrap();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        let res = svc.clone().oneshot(declared(5)).await.unwrap();
        assert_eq!(body_of(res).await, "5");

        // Undeclared, crossing the limit while the handler reads it: the handler's plain 400
        // becomes the JSON 413.
        let res = svc
            .clone()
            .oneshot(chunked(&[b"123", b"456"]))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body_of(res).await).unwrap()["error"]["code"],
            "payload_too_large"
        );
        let res = svc.oneshot(chunked(&[b"12", b"345"])).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body_of(res).await, "5");
    }

    #[tokio::test]
    async fn without_a_body_limit_any_body_passes() {
        let svc = GuardLayer::new()
            .body_limit(None)
            .layer(tower::service_fn(read_all));
        let res = svc.clone().oneshot(declared(3 << 20)).await.unwrap();
        assert_eq!(body_of(res).await, (3 << 20).to_string());
        let res = svc
            .oneshot(chunked(&[&[b'x'; 4096][..]; 1024]))
            .await
            .unwrap();
        assert_eq!(body_of(res).await, (4 << 20).to_string());
    }

    #[tokio::test]
    async fn load_shedding_answers_503_with_retry_after_and_releases_the_permit() {
        let layer = GuardLayer::errors_only()
            .max_in_flight(1)
            .retry_after(Duration::from_secs(2));
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
        while layer.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        let shed = svc
            .clone()
            .oneshot(Request::new(Full::default()))
            .await
            .unwrap();
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.headers()["retry-after"], "2");
        assert!(body_of(shed).await.contains("\"overloaded\""));
        release_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
        assert_eq!(layer.in_flight(), 0);
        let ok = svc.oneshot(Request::new(Full::default())).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn without_load_shedding_no_permit_is_taken() {
        let layer = GuardLayer::new().max_in_flight(None);
        let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let gate = Arc::new(tokio::sync::Notify::new());
        let svc = layer.layer(tower::service_fn({
            let gate = gate.clone();
            move |_req: Request<LimitedBody<Full<Bytes>>>| {
                let (gate, started_tx) = (gate.clone(), started_tx.clone());
                async move {
                    started_tx.send(()).unwrap();
                    gate.notified().await;
                    Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
                }
            }
        }));
        let running: Vec<_> = (0..3)
            .map(|_| tokio::spawn(svc.clone().oneshot(Request::new(Full::default()))))
            .collect();
        for _ in 0..3 {
            started_rx.recv().await.unwrap();
        }
        assert_eq!(layer.in_flight(), 0);
        gate.notify_waiters();
        for request in running {
            assert_eq!(request.await.unwrap().unwrap().status(), StatusCode::OK);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn timeout_answers_504_after_the_deadline() {
        let svc = GuardLayer::errors_only()
            .timeout(Duration::from_secs(1))
            .layer(tower::service_fn(|_req: Request<_>| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
            }));
        let start = Instant::now();
        let res = svc
            .oneshot(Request::new(Full::<Bytes>::default()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert!(body_of(res).await.contains("\"timeout\""));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_timeout_no_timer_is_armed() {
        let mut svc =
            GuardLayer::new()
                .timeout(None)
                .layer(tower::service_fn(|_req: Request<_>| async {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
                }));
        let mut future = Box::pin(
            svc.ready()
                .await
                .unwrap()
                .call(Request::new(Full::<Bytes>::default())),
        );
        assert!(futures_util::poll!(future.as_mut()).is_pending());
        match &future.state {
            State::Running {
                deadline, timer, ..
            } => assert!(deadline.is_none() && timer.is_none()),
            _ => panic!("the request should still run"),
        }
        assert_eq!(future.await.unwrap().status(), StatusCode::OK);
    }

    /// A handler whose future panics with `message` when polled.
    fn panics_in_future(
        message: &'static str,
    ) -> impl Service<
        Request<LimitedBody<Full<Bytes>>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future: Send + 'static,
    > + Send
    + 'static {
        tower::service_fn(move |_req: Request<LimitedBody<Full<Bytes>>>| async move {
            if true {
                panic!("{message}");
            }
            Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
        })
    }

    #[tokio::test]
    async fn a_panic_in_call_or_in_the_future_becomes_a_500() {
        let in_call = GuardLayer::errors_only().catch_panic(true).layer(tower::service_fn(
            |_req: Request<LimitedBody<Full<Bytes>>>| -> std::future::Ready<
                Result<Response<Full<Bytes>>, Infallible>,
            > { panic!("bug in call") },
        ));
        let res = in_call
            .oneshot(Request::new(Full::default()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_of(res).await;
        assert!(
            body.contains("\"internal_error\"") && !body.contains("bug"),
            "{body}"
        );

        let in_future = GuardLayer::errors_only()
            .catch_panic(true)
            .layer(panics_in_future("bug in the future"));
        let res = in_future
            .oneshot(Request::new(Full::default()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[tokio::test]
    async fn without_catch_panic_the_panic_unwinds() {
        let svc = GuardLayer::new()
            .catch_panic(false)
            .layer(panics_in_future("not caught"));
        let task = tokio::spawn(svc.oneshot(Request::new(Full::default())));
        assert!(task.await.unwrap_err().is_panic());
    }

    #[tokio::test]
    async fn errors_become_json_error_responses() {
        // An error of the call: its mapped response, here 503 with `Retry-After`.
        let failing =
            GuardLayer::errors_only().layer(tower::service_fn(|_req: Request<_>| async {
                Err::<Response<Full<Bytes>>, _>(chassis_core::Error::circuit_open(
                    "payments".into(),
                    Duration::from_secs(5),
                ))
            }));
        let res = failing
            .oneshot(Request::new(Full::<Bytes>::default()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(res.headers()["retry-after"], "5");

        // An unknown error: 500 without its text.
        let failing =
            GuardLayer::errors_only().layer(tower::service_fn(|_req: Request<_>| async {
                Err::<Response<Full<Bytes>>, _>(std::io::Error::other("disk on fire"))
            }));
        let res = failing
            .oneshot(Request::new(Full::<Bytes>::default()))
            .await
            .unwrap();
        assert_eq!(res.status(), 500);
        let body = body_of(res).await;
        assert!(
            body.contains("\"success\":false") && !body.contains("fire"),
            "{body}"
        );

        // A `poll_ready` error: answered by the call, without calling the service.
        let not_ready = GuardLayer::errors_only().layer(NotReady);
        let res = not_ready
            .oneshot(Request::new(Full::<Bytes>::default()))
            .await
            .unwrap();
        assert_eq!(res.status(), 500);

        // A plain-text error response: the same status with the JSON body.
        let plain = GuardLayer::errors_only().layer(tower::service_fn(|_req: Request<_>| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(405)
                    .header(header::ALLOW, "GET")
                    .body(Full::<Bytes>::default())
                    .unwrap(),
            )
        }));
        let res = plain
            .oneshot(Request::new(Full::<Bytes>::default()))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(res.headers()[header::ALLOW], "GET");
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    }

    /// A service whose `poll_ready` fails.
    #[derive(Clone)]
    struct NotReady;

    impl<B> Service<Request<B>> for NotReady {
        type Response = Response<Full<Bytes>>;
        type Error = std::io::Error;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Err(std::io::Error::other("not ready")))
        }

        fn call(&mut self, _req: Request<B>) -> Self::Future {
            panic!("called although not ready")
        }
    }

    #[cfg(feature = "axum")]
    #[tokio::test]
    async fn axum_rejections_get_the_json_body() {
        use axum::routing::post;

        #[derive(serde::Deserialize)]
        struct Order {
            #[allow(dead_code)]
            id: u32,
        }
        let router = axum::Router::new().route(
            "/orders",
            post(|axum::Json(_order): axum::Json<Order>| async { "created" }),
        );
        let svc = GuardLayer::new().layer(router);
        let req = Request::post("/orders")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(b"{not json")))
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        let body: serde_json::Value = serde_json::from_str(&body_of(res).await).unwrap();
        assert_eq!(body["error"]["code"], "bad_request");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("Failed to parse the request body as JSON"),
            "{body}"
        );

        let req = Request::get("/orders")
            .body(Full::<Bytes>::default())
            .unwrap();
        let res = svc.oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body_of(res).await).unwrap()["error"]["code"],
            "method_not_allowed"
        );
    }
}
