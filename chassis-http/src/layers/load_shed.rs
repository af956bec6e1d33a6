//! Load shedding: at most `max_in_flight` requests run at once; the ones above the limit are
//! answered at once with `503 overloaded` and a `Retry-After` header instead of queueing (a
//! queue would only add latency to requests whose clients are about to time out).
//!
//! The limit is shared by every clone of the service made from one [`LoadShedLayer`], so it
//! bounds the whole server (or route) the layer wraps. A permit is taken in `poll_ready` and
//! held until the response head is ready.
//!
//! # Example
//! ```
//! use chassis_http::layers::load_shed::LoadShedLayer;
//! use std::time::Duration;
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let layer = LoadShedLayer::new(64).retry_after(Duration::from_secs(2));
//! let svc = layer.layer(service_fn(|_req: http::Request<()>| async {
//!     Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
//! }));
//! assert_eq!(svc.oneshot(http::Request::new(())).await.unwrap().status(), 200);
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{Body, BoxError, boxed};
use crate::error::{ApiError, codes};

/// Requests in flight, shared by the services of one [`LoadShedLayer`].
///
/// A plain counter rather than a semaphore: nothing ever waits for a permit, and releasing a
/// tokio semaphore permit takes its waiter-list lock on every request.
#[derive(Debug, Default)]
pub(crate) struct InFlight(AtomicUsize);

impl InFlight {
    /// Permits taken right now.
    pub(crate) fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    /// Takes a permit if fewer than `max` are taken.
    pub(crate) fn try_acquire(self: &Arc<Self>, max: usize) -> Option<Permit> {
        self.0
            .fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Permit(self.clone()))
    }
}

/// The 503 a shed request gets (logged at debug: shedding is the limit working, not a fault).
pub(crate) fn shed_response(max_in_flight: usize, retry_after: Duration) -> Response<Body> {
    tracing::debug!(max_in_flight, "concurrency limit reached; shedding request");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        codes::OVERLOADED,
        format!("server is at its limit of {max_in_flight} concurrent requests"),
    )
    .with_retry_after(retry_after)
    .into_response()
}

/// One request's share of the limit, given back on drop.
#[derive(Debug)]
pub(crate) struct Permit(Arc<InFlight>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Release);
    }
}

/// Layer adding [`LoadShedService`].
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    in_flight: Arc<InFlight>,
    max_in_flight: usize,
    retry_after: Duration,
}

impl LoadShedLayer {
    /// At most `max_in_flight` concurrent requests (clamped to at least 1). `Retry-After`
    /// defaults to 1 s.
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            in_flight: Arc::default(),
            max_in_flight: max_in_flight.max(1),
            retry_after: Duration::from_secs(1),
        }
    }

    /// The `Retry-After` sent with rejections. Defaults to 1 s.
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Requests currently holding a permit.
    pub fn in_flight(&self) -> usize {
        self.in_flight.count()
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShedService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        LoadShedService {
            inner,
            in_flight: self.in_flight.clone(),
            max_in_flight: self.max_in_flight,
            retry_after: self.retry_after,
            permit: None,
        }
    }
}

/// Sheds requests above the concurrency limit; see the [module docs](self).
#[derive(Debug)]
pub struct LoadShedService<S> {
    inner: S,
    in_flight: Arc<InFlight>,
    max_in_flight: usize,
    retry_after: Duration,
    permit: Option<Permit>,
}

impl<S: Clone> Clone for LoadShedService<S> {
    fn clone(&self) -> Self {
        // A clone must win its own permit: permits are per request, not per service.
        Self {
            inner: self.inner.clone(),
            in_flight: self.in_flight.clone(),
            max_in_flight: self.max_in_flight,
            retry_after: self.retry_after,
            permit: None,
        }
    }
}

impl<S> LoadShedService<S> {
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

impl<S, ReqB, ResB> Service<Request<ReqB>> for LoadShedService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.permit.is_none() {
            // Never wait for a permit: without one, `call` answers 503 straight away.
            self.permit = self.in_flight.try_acquire(self.max_in_flight);
        }
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // NOTE: relies on `poll_ready` having tried to take a permit for this request.
        match self.permit.take() {
            Some(permit) => ResponseFuture {
                state: State::Running {
                    future: self.inner.call(req),
                    permit: Some(permit),
                },
            },
            None => {
                let response = shed_response(self.max_in_flight, self.retry_after);
                ResponseFuture {
                    state: State::Rejected {
                        response: Some(response),
                    },
                }
            }
        }
    }
}

pin_project! {
    /// Response future of [`LoadShedService`].
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] future: F, permit: Option<Permit> },
        Rejected { response: Option<Response<Body>> },
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
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Running { future, permit } => match future.poll(cx) {
                Poll::Ready(result) => {
                    permit.take();
                    Poll::Ready(result.map(|res| res.map(boxed)))
                }
                Poll::Pending => Poll::Pending,
            },
            StateProj::Rejected { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    #[tokio::test]
    async fn sheds_above_the_limit_and_recovers() {
        let layer = LoadShedLayer::new(1);
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let release_rx = Arc::new(tokio::sync::Mutex::new(Some(release_rx)));
        let svc = layer.layer(tower::service_fn(move |_req: Request<()>| {
            let release_rx = release_rx.clone();
            async move {
                if let Some(rx) = release_rx.lock().await.take() {
                    let _ = rx.await;
                }
                Ok::<_, Infallible>(Response::new(String::new()))
            }
        }));
        let first = tokio::spawn(svc.clone().oneshot(Request::new(())));
        while layer.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        let shed = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(shed.headers()["retry-after"], "1");
        release_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
        assert_eq!(layer.in_flight(), 0);
        let ok = svc.oneshot(Request::new(())).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
    }
}
