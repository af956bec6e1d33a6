//! [`ConnectionService`]: the tower service of one connection, as hyper calls it.
//!
//! hyper calls its services through `&self`, so hyper-util's `TowerToHyperService` clones the
//! whole tower stack for every request and drives the clone through a `Oneshot` (`poll_ready`,
//! then `call`). With the chassis stack that clone and its drop touch every layer's shared
//! state (a dozen reference counts) on every request. This adapter keeps the connection's own
//! service in a `RefCell` instead: a request first asks that service whether it is ready
//! *now*, and if so calls it in place (no clone, no `Oneshot`); only a service that is not
//! ready at once (a limit reached, a buffer full) is cloned and driven as before, so readiness
//! still works exactly as tower defines it. A `RefCell`, not a lock: one connection's service
//! is only ever used from that connection's task, and the borrow never outlives `call`.
//! HTTP/2 streams of one connection take the same fast path one after the other.
//!
//! It is also where the server holds its two per-request promises, whatever stack it serves:
//!
//! - **Header size.** A request whose header fields exceed
//!   [`ServerConfig::max_header_bytes`](super::ServerConfig::max_header_bytes) is answered
//!   431 with the chassis JSON body here, without calling the stack (the trace id is the
//!   `traceparent`'s, if the request has one). hyper's and h2's own limits are set above this
//!   one, so the chassis, not the protocol library, answers the sizes in between.
//! - **Error bodies.** A response of 400 or above without a JSON body (an axum fallback or
//!   405 that bypassed [`StandardLayers`](crate::layers::StandardLayers), a router nested
//!   outside them, a plain `service_fn`) gets the chassis JSON error body, exactly as
//!   the [guard](crate::layers::guard) would give it. Outside the stack there
//!   is no request span, so its `traceId` is `null`; behind `StandardLayers` the error layer
//!   has already answered with the trace id, and this check costs one comparison.
//!
//! It gives every request of the connection what the server learnt about the connection:
//! with TLS, the client's verified [`PeerIdentity`](crate::tls::peer::PeerIdentity), as a
//! request extension. It also records that the connection served a request, which ends the
//! connection's first-request deadline (see [`super::connections`]).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower_service::Service;

use crate::body::{Body, BoxError};
use crate::error::ApiError;
use crate::layers::error_response::{is_json, json_error_response};

/// The service of one connection; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct ConnectionService<S> {
    service: RefCell<S>,
    max_header_bytes: usize,
    /// Set at the first request: the connection is past its first-request deadline.
    served: Arc<AtomicBool>,
    /// The verified identity of the TLS client, given to every request.
    #[cfg(feature = "tls")]
    peer: Option<crate::tls::peer::PeerIdentity>,
}

impl<S> ConnectionService<S> {
    pub(crate) fn new(service: S, max_header_bytes: usize, served: Arc<AtomicBool>) -> Self {
        Self {
            service: RefCell::new(service),
            max_header_bytes,
            served,
            #[cfg(feature = "tls")]
            peer: None,
        }
    }

    /// Gives every request of the connection `peer` as a request extension.
    #[cfg(feature = "tls")]
    pub(crate) fn with_peer(mut self, peer: Option<crate::tls::peer::PeerIdentity>) -> Self {
        self.peer = peer;
        self
    }
}

/// Whether the header fields take more than `limit` bytes, counted as HTTP/1.1 writes them:
/// name, value and 4 bytes (`": "` and CRLF) per field. HTTP/2 fields are counted the same
/// way (uncompressed), so the limit means the same on both protocols. Stops counting as soon
/// as the limit is passed.
#[inline]
pub(crate) fn headers_exceed(headers: &HeaderMap, limit: usize) -> bool {
    let mut total = 0usize;
    for (name, value) in headers {
        total += name.as_str().len() + value.len() + 4;
        if total > limit {
            return true;
        }
    }
    false
}

/// The trace id of a valid `traceparent` header (version 00 layout), for answers given before
/// any layer extracted the trace context.
fn traceparent_trace_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (_version, trace_id) = (parts.next()?, parts.next()?);
    let valid = trace_id.len() == 32
        && trace_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && trace_id.bytes().any(|b| b != b'0');
    valid.then(|| trace_id.to_owned())
}

#[cold]
#[inline(never)]
fn header_fields_too_large(headers: &HeaderMap, limit: usize) -> Response<Body> {
    tracing::debug!(
        target: "chassis_http::server",
        max_header_bytes = limit,
        "request header fields over the limit: 431"
    );
    let mut error = ApiError::from_status(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        format!("the request's header fields exceed {limit} bytes"),
    );
    if let Some(trace_id) = traceparent_trace_id(headers) {
        error = error.with_trace_id(trace_id);
    }
    error.into_response()
}

impl<S, ReqB, B> hyper::service::Service<Request<ReqB>> for ConnectionService<S>
where
    S: Service<Request<ReqB>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Response = Response<ServerBody<B>>;
    type Error = BoxError;
    type Future = ConnectionFuture<S, Request<ReqB>>;

    #[cfg_attr(not(feature = "tls"), allow(unused_mut))]
    fn call(&self, mut req: Request<ReqB>) -> Self::Future {
        #[cfg(feature = "tls")]
        if let Some(peer) = &self.peer {
            req.extensions_mut().insert(peer.clone());
        }
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
        }
        if headers_exceed(req.headers(), self.max_header_bytes) {
            return ConnectionFuture::Answered {
                response: Some(header_fields_too_large(
                    req.headers(),
                    self.max_header_bytes,
                )),
            };
        }
        if let Ok(mut service) = self.service.try_borrow_mut() {
            // A service that is ready at once is called in place. The no-op waker is never
            // woken for a `Ready` answer; after `Pending` the service is not called here, and
            // the clone below registers a real waker.
            let mut cx = Context::from_waker(Waker::noop());
            match service.poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => {
                    return ConnectionFuture::Called {
                        future: service.call(req),
                    };
                }
                Poll::Ready(Err(error)) => {
                    return ConnectionFuture::Failed {
                        error: Some(error.into()),
                    };
                }
                Poll::Pending => {}
            }
        }
        let service = self.service.borrow().clone();
        ConnectionFuture::Waiting {
            oneshot: Oneshot::new(service, req),
        }
    }
}

pin_project! {
    /// The response future of a [`ConnectionService`].
    #[project = ConnectionFutureProj]
    pub(crate) enum ConnectionFuture<S, Req>
    where
        S: Service<Req>,
    {
        // Called in place: the service was ready.
        Called { #[pin] future: S::Future },
        // Not ready at once: a clone waits for readiness, then is called.
        Waiting { #[pin] oneshot: Oneshot<S, Req> },
        // `poll_ready` failed (boxed at once, so the future is `Send` whatever the error).
        Failed { error: Option<BoxError> },
        // Answered by the server itself (header fields over the limit).
        Answered { response: Option<Response<Body>> },
    }
}

impl<S, Req, B> Future for ConnectionFuture<S, Req>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes>,
{
    type Output = Result<Response<ServerBody<B>>, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let response = match self.project() {
            ConnectionFutureProj::Called { future } => std::task::ready!(future.poll(cx)),
            ConnectionFutureProj::Waiting { oneshot } => std::task::ready!(oneshot.poll(cx)),
            ConnectionFutureProj::Failed { error } => {
                return Poll::Ready(Err(error.take().expect("polled after completion")));
            }
            ConnectionFutureProj::Answered { response } => {
                let response = response.take().expect("polled after completion");
                return Poll::Ready(Ok(response.map(ServerBody::chassis)));
            }
        };
        Poll::Ready(response.map(answer).map_err(Into::into))
    }
}

/// The response as the server sends it: as is, unless it is an error without a JSON body.
#[inline]
fn answer<B: http_body::Body<Data = Bytes>>(response: Response<B>) -> Response<ServerBody<B>> {
    // The hot path: a success (or an error the stack already answered in JSON).
    if response.status().as_u16() < 400 || is_json(response.headers()) {
        return response.map(ServerBody::service);
    }
    json_error_response(response).map(ServerBody::chassis)
}

pin_project! {
    /// The body of a response of a [`ConnectionService`]: the service's own, or one the server
    /// wrote (an error body). An enum rather than a boxed body, so the service's body is passed
    /// on without an allocation.
    #[project = ServerBodyProj]
    pub(crate) enum ServerBody<B> {
        Service { #[pin] body: B },
        Chassis { #[pin] body: Body },
    }
}

impl<B> ServerBody<B> {
    fn service(body: B) -> Self {
        Self::Service { body }
    }

    fn chassis(body: Body) -> Self {
        Self::Chassis { body }
    }
}

impl<B> http_body::Body for ServerBody<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        match self.project() {
            ServerBodyProj::Service { body } => body.poll_frame(cx).map_err(Into::into),
            ServerBodyProj::Chassis { body } => body.poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match self {
            Self::Service { body } => body.is_end_stream(),
            Self::Chassis { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Service { body } => body.size_hint(),
            Self::Chassis { body } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use http_body_util::BodyExt;
    use hyper::service::Service as _;

    use super::*;

    /// Counts clones and calls; ready only when `ready` says so. Answers `n + 1` for a request
    /// `n`, with the status the request's `status` header asks for.
    #[derive(Debug)]
    struct Probe {
        clones: Arc<AtomicUsize>,
        calls: Arc<AtomicUsize>,
        ready: Arc<AtomicBool>,
        waker: Arc<std::sync::Mutex<Option<Waker>>>,
    }

    impl Clone for Probe {
        fn clone(&self) -> Self {
            self.clones.fetch_add(1, Ordering::SeqCst);
            Self {
                clones: self.clones.clone(),
                calls: self.calls.clone(),
                ready: self.ready.clone(),
                waker: self.waker.clone(),
            }
        }
    }

    impl Service<Request<u32>> for Probe {
        type Response = Response<String>;
        type Error = &'static str;
        type Future = std::future::Ready<Result<Response<String>, &'static str>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.ready.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                *self.waker.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            }
        }

        fn call(&mut self, req: Request<u32>) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let status = req
                .headers()
                .get("status")
                .map_or(200, |s| s.to_str().unwrap().parse().unwrap());
            let mut res = Response::new((req.body() + 1).to_string());
            *res.status_mut() = StatusCode::from_u16(status).unwrap();
            std::future::ready(Ok(res))
        }
    }

    fn probe(ready: bool) -> Probe {
        Probe {
            clones: Arc::default(),
            calls: Arc::default(),
            ready: Arc::new(ready.into()),
            waker: Arc::default(),
        }
    }

    fn service(p: Probe) -> ConnectionService<Probe> {
        ConnectionService::new(p, 16 * 1024, Arc::default())
    }

    async fn text(res: Response<ServerBody<String>>) -> String {
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[tokio::test]
    async fn a_ready_service_is_called_in_place_without_a_clone() {
        let p = probe(true);
        let (clones, calls) = (p.clones.clone(), p.calls.clone());
        let served = Arc::new(AtomicBool::new(false));
        let svc = ConnectionService::new(p, 16 * 1024, served.clone());
        for i in 0..3 {
            let res = svc.call(Request::new(i)).await.unwrap();
            assert_eq!(text(res).await, (i + 1).to_string());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(clones.load(Ordering::SeqCst), 0);
        assert!(
            served.load(Ordering::SeqCst),
            "the first request was recorded"
        );
    }

    #[tokio::test]
    async fn a_service_not_ready_is_cloned_and_called_once_it_is() {
        let p = probe(false);
        let (clones, calls, ready, waker) = (
            p.clones.clone(),
            p.calls.clone(),
            p.ready.clone(),
            p.waker.clone(),
        );
        let svc = service(p);
        let call = tokio::spawn(svc.call(Request::new(7)));
        tokio::task::yield_now().await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "not called before it is ready"
        );
        assert_eq!(clones.load(Ordering::SeqCst), 1);
        ready.store(true, Ordering::SeqCst);
        // The waker registered by the clone's poll_ready (a real one, not the no-op).
        let registered = waker
            .lock()
            .unwrap()
            .take()
            .expect("a real waker was registered");
        registered.wake();
        assert_eq!(text(call.await.unwrap().unwrap()).await, "8");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_error_response_without_json_gets_the_json_body() {
        let svc = service(probe(true));
        let mut req = Request::new(1);
        req.headers_mut()
            .insert("status", http::HeaderValue::from_static("404"));
        let res = svc.call(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
        assert_eq!(res.headers()["content-type"], "application/json");
        let body: serde_json::Value = serde_json::from_str(&text(res).await).unwrap();
        assert_eq!(body["error"]["code"], "not_found");
        assert_eq!(body["error"]["message"], "2", "a 4xx's text is the message");
    }

    #[tokio::test]
    async fn header_fields_over_the_limit_are_answered_431_without_calling_the_service() {
        let p = probe(true);
        let calls = p.calls.clone();
        let svc = ConnectionService::new(p, 100, Arc::default());
        let mut req = Request::new(1);
        // 4 + 90 + 4 = 98 bytes: within the limit.
        req.headers_mut().insert(
            "x-aa",
            http::HeaderValue::from_str(&"v".repeat(90)).unwrap(),
        );
        assert_eq!(svc.call(req.clone()).await.unwrap().status(), 200);
        req.headers_mut().insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let res = svc.call(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let body: serde_json::Value = serde_json::from_str(&text(res).await).unwrap();
        assert_eq!(body["error"]["code"], "request_header_fields_too_large");
        assert_eq!(body["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the 431 did not reach it");
    }

    #[test]
    fn header_bytes_count_name_value_and_separators() {
        let mut headers = HeaderMap::new();
        headers.insert("ab", http::HeaderValue::from_static("cd"));
        assert!(!headers_exceed(&headers, 8));
        assert!(headers_exceed(&headers, 7));
        assert_eq!(traceparent_trace_id(&headers), None);
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ),
        );
        assert_eq!(traceparent_trace_id(&headers), None, "all zeros is invalid");
    }
}
