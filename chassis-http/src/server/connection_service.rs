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

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower_service::Service;

use crate::body::BoxError;

/// The service of one connection; see the [module docs](self).
#[derive(Debug)]
pub(crate) struct ConnectionService<S> {
    service: RefCell<S>,
}

impl<S> ConnectionService<S> {
    pub(crate) fn new(service: S) -> Self {
        Self {
            service: RefCell::new(service),
        }
    }
}

impl<S, Req> hyper::service::Service<Req> for ConnectionService<S>
where
    S: Service<Req> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ConnectionFuture<S, Req>;

    fn call(&self, req: Req) -> Self::Future {
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
    }
}

impl<S, Req> Future for ConnectionFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ConnectionFutureProj::Called { future } => future.poll(cx).map_err(Into::into),
            ConnectionFutureProj::Waiting { oneshot } => oneshot.poll(cx).map_err(Into::into),
            ConnectionFutureProj::Failed { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hyper::service::Service as _;

    use super::*;

    /// Counts clones and calls; ready only when `ready` says so.
    #[derive(Debug)]
    struct Probe {
        clones: Arc<AtomicUsize>,
        calls: Arc<AtomicUsize>,
        ready: Arc<std::sync::atomic::AtomicBool>,
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

    impl Service<u32> for Probe {
        type Response = u32;
        type Error = &'static str;
        type Future = std::future::Ready<Result<u32, &'static str>>;

        fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            if self.ready.load(Ordering::SeqCst) {
                Poll::Ready(Ok(()))
            } else {
                *self.waker.lock().unwrap() = Some(cx.waker().clone());
                Poll::Pending
            }
        }

        fn call(&mut self, req: u32) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(req + 1))
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

    #[tokio::test]
    async fn a_ready_service_is_called_in_place_without_a_clone() {
        let p = probe(true);
        let (clones, calls) = (p.clones.clone(), p.calls.clone());
        let svc = ConnectionService::new(p);
        for i in 0..3 {
            assert_eq!(svc.call(i).await.unwrap(), i + 1);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(clones.load(Ordering::SeqCst), 0);
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
        let svc = ConnectionService::new(p);
        let call = tokio::spawn(svc.call(7));
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
        assert_eq!(call.await.unwrap().unwrap(), 8);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
